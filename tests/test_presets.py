"""``--preset trvae|mmd-cvae|cvae|scgen`` and scGen's latent arithmetic."""

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import anndata as ad
import numpy as np
import pytest
from cli_helpers import assert_ok, invoke, dense

from trvae_cli.arithmetic import balanced_condition_means, latent_delta
from trvae_cli.config import PRESETS, TrainSettings, preset_settings

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "perturbation.h5ad"


# --------------------------------------------------------------------------- arithmetic on a toy latent space


def test_balanced_means_weigh_every_cell_type_equally():
    # condition a: 90 cells of type T at (0, 0) and 10 of type B at (10, 0); condition b: same types shifted by (0, 3)
    z = np.vstack([np.zeros((90, 2)), np.tile([10.0, 0.0], (10, 1)),
                   np.tile([0.0, 3.0], (30, 1)), np.tile([10.0, 3.0], (70, 1))])
    cond = ["a"] * 100 + ["b"] * 100
    types = ["T"] * 90 + ["B"] * 10 + ["T"] * 30 + ["B"] * 70
    means = balanced_condition_means(z, cond, types)
    np.testing.assert_allclose(means["a"], [5.0, 0.0])          # not the cell-weighted (1, 0)
    np.testing.assert_allclose(means["b"], [5.0, 3.0])          # not (7, 3)
    np.testing.assert_allclose(latent_delta(means, "a", "b"), [0.0, 3.0])   # the true shift, unbiased by composition
    plain = balanced_condition_means(z, cond)
    np.testing.assert_allclose(latent_delta(plain, "a", "b"), [6.0, 3.0])   # unbalanced: confounded by composition


def test_held_out_type_missing_from_target_still_gives_the_shared_shift():
    """As in scGen's out-of-sample set-up: NK only in the source condition."""
    rng = np.random.default_rng(0)
    shift = np.array([1.0, -2.0, 0.5])
    centres = {"T": np.array([0.0, 0.0, 0.0]), "B": np.array([5.0, 1.0, 0.0]), "NK": np.array([-3.0, 4.0, 2.0])}
    z, cond, types = [], [], []
    for ct, c in centres.items():
        for condition in ("ctrl", "stim"):
            if ct == "NK" and condition == "stim":
                continue
            n = 200
            z.append(c + (shift if condition == "stim" else 0) + rng.normal(0, 0.01, (n, 3)))
            cond += [condition] * n
            types += [ct] * n
    means = balanced_condition_means(np.vstack(z), cond, types)
    delta = latent_delta(means, "ctrl", "stim")
    # the NK control cells pull the ctrl mean towards NK: scGen's delta carries that bias, by design
    expected = (centres["T"] + centres["B"]) / 2 + shift - (centres["T"] + centres["B"] + centres["NK"]) / 3
    np.testing.assert_allclose(delta, expected, atol=0.01)


# --------------------------------------------------------------------------- presets


def test_presets_differ_from_trvae_only_where_documented():
    base = TrainSettings()
    assert preset_settings("trvae") == base
    assert preset_settings("cvae").mmd_on == "none" and preset_settings("mmd-cvae").mmd_on == "latent"
    for name in ("cvae", "mmd-cvae"):
        diff = {k for k, v in vars(preset_settings(name)).items() if getattr(base, k) != v}
        assert diff == {"mmd_on"}
    scgen = preset_settings("scgen", latent_dim=7)
    assert not scgen.conditional and scgen.hidden == (800,) and scgen.mmd_dim == 800 and scgen.latent_dim == 7


@pytest.fixture(scope="module")
def preset_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("presets")
    out = {}
    for name in PRESETS:
        model = d / name
        assert_ok(invoke("train", SAMPLE, "--condition", "condition", "--cell-type-key", "cell_type",
                         "--exclude", "NK:stimulated", "--preset", name, "--epochs", "2", "--out", model, "-q",
                         "--no-jit"))   # XLA compile time would dominate 2 epochs; the presets do not depend on it
        pred = d / f"{name}.h5ad"
        assert_ok(invoke("transform", "--model", model, "--from", "control", "--to", "stimulated",
                         "--cell-type", "NK", "--out", pred, "-q"))
        out[name] = (model, pred)
    return out


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_trains_and_transforms(preset_models, name):
    model, pred = preset_models[name]
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["preset"] == name
    expected = preset_settings(name, epochs=2)
    for key in ("mmd_on", "conditional", "latent_dim", "dropout", "alpha", "eta", "reconstruction"):
        assert cfg["model"][key] == getattr(expected, key), key
    assert cfg["training"]["batch_size"] == expected.batch_size
    assert ("latent_arithmetic" in cfg) == (name == "scgen")
    # the recorded command reproduces the preset's effective settings
    assert f"--preset {name}" in cfg["command"] and f"--latent-dim {expected.latent_dim}" in cfg["command"]
    a = ad.read_h5ad(pred)
    assert a.n_obs == 72 and np.isfinite(dense(a.X)).all()


def test_explicit_options_win_over_the_preset(tmp_path):
    assert_ok(invoke("train", SAMPLE, "--condition", "condition", "--preset", "scgen", "--latent-dim", "6",
                     "--hidden", "32", "--mmd-dim", "16", "--batch-size", "128", "--epochs", "1", "--out",
                     tmp_path / "m", "-q", "--no-jit"))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model"]["latent_dim"] == 6 and cfg["model"]["hidden"] == [32] and not cfg["model"]["conditional"]
    assert cfg["training"]["batch_size"] == 128 and cfg["model"]["dropout"] == 0.2


def test_scgen_transform_is_latent_arithmetic(preset_models):
    """pred's z = z(control NK cells) + (balanced mean z(stimulated) - balanced mean z(control))."""
    from trvae_cli.model_dir import load_model

    model_dir, pred_path = preset_models["scgen"]
    cfg, model = load_model(model_dir)
    data = ad.read_h5ad(SAMPLE)
    rows = ((data.obs["cell_type"] == "NK") & (data.obs["condition"] == "control")).values
    z, _ = model.encode(data.X[rows].toarray(), 0)
    delta = latent_delta(cfg["latent_arithmetic"]["means"], "control", "stimulated")
    pred = ad.read_h5ad(pred_path)
    np.testing.assert_allclose(pred.obsm["X_trvae"], z + delta, atol=1e-5)
    # and the stored means are the balanced means of the training cells
    train = ~((data.obs["cell_type"] == "NK") & (data.obs["condition"] == "stimulated")).values
    conds = cfg["data"]["conditions"]
    codes = np.array([conds.index(c) for c in data.obs["condition"].astype(str)[train]])
    z_train, _ = model.encode(data.X[train].toarray(), codes)
    means = balanced_condition_means(z_train, data.obs["condition"].astype(str)[train],
                                     data.obs["cell_type"].astype(str)[train])
    for c in conds:
        np.testing.assert_allclose(cfg["latent_arithmetic"]["means"][c], means[c], atol=1e-5)


def test_each_input_kind_has_its_own_mmd_width_and_kl_weight_and_an_explicit_one_wins():
    """Cells default to a 128-wide MMD layer and KL weight 0.03 (measured on Kang), images keep 32
    and 1e-4 (the image benchmarks')."""
    from trvae_cli.config import resolve_settings
    from trvae_cli.sources.cells import CellSource
    from trvae_cli.sources.images import ImageSource

    assert resolve_settings(input_defaults=CellSource.input_defaults).mmd_dim == 128
    assert resolve_settings(input_defaults=ImageSource.input_defaults).mmd_dim == 32
    assert resolve_settings(input_defaults=ImageSource.input_defaults, given={"mmd_dim": 64}).mmd_dim == 64
    assert resolve_settings(input_defaults=CellSource.input_defaults).alpha == 0.03
    assert resolve_settings(input_defaults=ImageSource.input_defaults).alpha == 1e-4
    assert resolve_settings(input_defaults=ImageSource.input_defaults, given={"alpha": 0.5}).alpha == 0.5


def test_a_width_given_alone_sets_the_encoder_too():
    """``hidden`` set by a preset or the user without ``encoder_hidden`` widens the whole network;
    ``encoder_hidden`` given with it (or later) keeps its own sizes."""
    from trvae_cli.config import resolve_settings

    assert resolve_settings(given={"hidden": [64]}).encoder_sizes == (64,)
    assert resolve_settings(given={"encoder_hidden": [16]}).encoder_sizes == (16,)
    assert resolve_settings(given={"hidden": [64], "encoder_hidden": [16]}).encoder_sizes == (16,)
    assert resolve_settings(preset="scgen").encoder_sizes == (800,)
    assert resolve_settings(preset="scgen", given={"encoder_hidden": [32]}).encoder_sizes == (32,)
