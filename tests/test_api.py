"""The library API on in-memory data, and the bugs the orchestration redesign fixed (one test each)."""

from __future__ import annotations

import json
import sys

import anndata as ad
import numpy as np
import pytest

from cli_helpers import assert_ok, assert_user_error, bar_images, invoke, dense
from trvae_cli import api
from trvae_cli.config import ConfigError, RunOptions, TrainSettings
from trvae_cli.errors import TrvaeError

SMALL = {"epochs": 2, "hidden": (16,), "mmd_dim": 8, "latent_dim": 4, "batch_size": 64, "jit": False, "seed": 2}
QUIET = RunOptions(progress="none")
IMAGE_SMALL = {"epochs": 1, "filters": (8, 16), "mmd_dim": 16, "latent_dim": 4, "batch_size": 16, "jit": False}


def _digest(model_dir):
    return json.loads((model_dir / "config.json").read_text())["result"]["weights_sha256"]


def test_anndata_in_memory_gives_the_path_result(tiny_h5ad, tmp_path):
    kwargs = dict(cell_type_key="cell_type", exclude=["NK:stimulated"], settings=SMALL, options=QUIET)
    by_path = api.train(tiny_h5ad, "condition", tmp_path / "p", **kwargs)
    adata = ad.read_h5ad(tiny_h5ad)
    by_object = api.train(adata, "condition", tmp_path / "a", **kwargs)
    assert _digest(by_path) == _digest(by_object)
    cfg = json.loads((by_object / "config.json").read_text())
    assert cfg["data"]["path"] is None and cfg["data"]["kind"] == "cells"
    assert "<AnnData>" in cfg["command"]

    p1 = api.transform(by_path, tiny_h5ad, source="control", target="stimulated", cell_type="NK", write=False)
    p2 = api.transform(by_object, adata, source="control", target="stimulated", cell_type="NK", write=False)
    assert p1.path is None and p2.path is None                 # write=False writes nothing
    np.testing.assert_array_equal(dense(p1.adata.X), dense(p2.adata.X))
    np.testing.assert_array_equal(p1.adata.obsm["X_trvae"], p2.adata.obsm["X_trvae"])
    source_names = list(adata.obs_names[(adata.obs["cell_type"] == "NK") & (adata.obs["condition"] == "control")])
    assert list(p2.adata.obs["trvae_source_cell"]) == source_names
    assert list(p2.adata.obs_names) == [f"{n}-pred-stimulated" for n in source_names]
    assert set(p2.adata.obs["condition"]) == {"stimulated"}
    # a model trained on an AnnData has no file to fall back on
    with pytest.raises(TrvaeError, match="in-memory"):
        api.transform(by_object, source="control", target="stimulated", write=False)
    emb = api.embed(by_object, adata)
    assert emb.obsm["X_trvae"].shape == (adata.n_obs, 4)


def test_library_user_errors_raise_the_tools_error(tiny_h5ad, tmp_path):
    for bad in ({"arch": "bogus"}, {"reconstruction": "l1"}, {"learning_rate": float("inf")}, {"beta": float("nan")},
                {"seed": -1}, {"no_such_setting": 1}):
        with pytest.raises(TrvaeError):
            api.train(tiny_h5ad, "condition", tmp_path / "m", settings=bad, options=QUIET)
    with pytest.raises(TrvaeError, match="--reconstruction"):
        api.train(tiny_h5ad, "condition", tmp_path / "m", settings=TrainSettings(reconstruction="l1"), options=QUIET)
    with pytest.raises(TrvaeError, match="--arch conv"):     # a cell model cannot be a conv network
        api.train(tiny_h5ad, "condition", tmp_path / "m", settings={"arch": "conv"}, options=QUIET)
    with pytest.raises(TrvaeError, match="--log-format"):
        api.train(tiny_h5ad, "condition", tmp_path / "m", options=RunOptions(progress="loud"))
    assert not (tmp_path / "m").exists()
    from trvae_cli.backend import keras_module

    keras_module()
    from trvae_cli.model import TRVAE

    with pytest.raises(ValueError):                           # direct model users get a ValueError too
        TRVAE(10, 2, mmd_on="everywhere")
    assert issubclass(ConfigError, TrvaeError) and issubclass(ConfigError, ValueError)


def test_backed_records_the_batches_it_draws(tiny_h5ad, tmp_path):
    warnings = []
    out = api.train(tiny_h5ad, "condition", tmp_path / "b", backed=True, settings=SMALL,
                    options=RunOptions(progress="none", warn=warnings.append))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["balanced_batches"] is False and cfg["data"]["backed"] is True
    assert any("in proportion" in w for w in warnings)
    from trvae_cli.sources.cells import CellSource

    source = CellSource.open(tiny_h5ad, backed=True)
    try:                                                        # asked for what it gets: nothing to say
        warnings.clear()
        s = source.check_settings(TrainSettings(balanced_batches=False), warnings.append)
        assert not warnings and s.balanced_batches is False
    finally:
        source.close()


@pytest.fixture(scope="module")
def array_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("arrays")
    images, conditions, domains = bar_images(8)
    models = {}
    for name, extra in (("conditional", {}), ("unconditional", {"conditional": False, "mmd_on": "none"})):
        models[name] = api.train((images, conditions, domains), out=root / name, exclude=["b:bold"],
                                 settings={**IMAGE_SMALL, **extra}, options=QUIET)
    return (images, conditions, domains), models


def test_image_arrays_train_and_transform(array_models):
    data, models = array_models
    cfg = json.loads((models["conditional"] / "config.json").read_text())
    assert cfg["data"]["kind"] == "images" and cfg["model"]["arch"] == "conv"
    assert cfg["data"]["n_images_excluded"] == 8
    pred = api.transform(models["conditional"], data, source="plain", target="bold", domain="b", write=False)
    assert pred.images.shape == (8, 16, 16, 1) and 0 <= pred.images.min() and pred.images.max() <= 1
    assert list(pred.adata.obs["output"])[0].startswith("bold/b/")


def test_unconditional_image_model_transforms_by_latent_arithmetic(array_models):
    data, models = array_models
    model_dir = models["unconditional"]
    cfg = json.loads((model_dir / "config.json").read_text())
    means = cfg["latent_arithmetic"]["means"]
    assert cfg["latent_arithmetic"]["group_key"] == "domain" and set(means) == {"bold", "plain"}
    pred = api.transform(model_dir, data, source="plain", target="bold", domain="b", write=False)
    from trvae_cli.model_dir import load_model

    _, model = load_model(model_dir)
    images, conditions, domains = data
    picked = images[(conditions == "plain") & (domains == "b")][..., None]
    z_mean, _ = model.encode(picked, 0)
    delta = np.asarray(means["bold"]) - np.asarray(means["plain"])
    assert np.abs(delta).max() > 0
    # float32 z plus a float64 delta, rounded to float32 once: a few ulps of |z|
    np.testing.assert_allclose(pred.adata.obsm["X_trvae"], z_mean + delta, rtol=0,
                               atol=4 * np.finfo(np.float32).eps * (np.abs(z_mean).max() + np.abs(delta).max()))
    unmoved = np.clip(model.decode(z_mean, 1)[0], 0, 1)
    assert np.abs(pred.images - unmoved).max() > 1e-3          # it moved: the old path returned exactly this


def test_image_sample_draws_do_not_depend_on_the_batching(array_models):
    data, models = array_models
    kw = dict(source="plain", target="bold", decode="sample", write=False)
    small = api.transform(models["conditional"], data, seed=0, batch_size=4, **kw).adata.obsm["X_trvae"]
    whole = api.transform(models["conditional"], data, seed=0, **kw).adata.obsm["X_trvae"]
    np.testing.assert_array_equal(small, whole)
    shifted = api.transform(models["conditional"], data, seed=4, batch_size=4, **kw).adata.obsm["X_trvae"]
    # the old per-batch seeding (seed + start) made seed 0's second batch seed 4's first
    assert not np.array_equal(small[4:8], shifted[:4])


def test_image_labels_cannot_lead_outside_the_output(tmp_path):
    images, conditions, domains = bar_images(4)
    domains = np.where(domains == "b", "../../evil", domains)
    model_dir = api.train((images, conditions, domains), out=tmp_path / "m", exclude=["../../evil:bold"],
                          settings=IMAGE_SMALL, options=QUIET)
    pred = api.transform(model_dir, (images, conditions, domains), source="plain", target="bold",
                         domain="../../evil")
    assert pred.path.resolve().is_relative_to(model_dir.resolve())
    written = [p for p in tmp_path.rglob("*.png")]
    assert written and all(p.resolve().is_relative_to(pred.path.resolve()) for p in written)
    assert not (tmp_path.parent / "evil").exists()


def test_image_transform_refuses_cell_options(array_models, tmp_path):
    data, models = array_models
    for kwargs, fragment in (({"residual_scale": "counts"}, "--residual-scale"),
                             ({"condition_key": "condition"}, "--condition"),
                             ({"cell_type_key": "cell_type"}, "--cell-type-key"),
                             ({"draws": 2, "decode": "sample"}, "--draws")):
        with pytest.raises(TrvaeError, match=fragment):
            api.transform(models["conditional"], data, source="plain", target="bold", write=False, **kwargs)
    with pytest.raises(TrvaeError, match="--backed"):
        api.transform(models["conditional"], tmp_path, source="plain", target="bold", backed=True)


def test_cli_says_using_default_only_for_defaults(trained_model, tmp_path):
    given = invoke("transform", "--model", trained_model, "--from", "control", "--to", "stimulated",
                   "--cell-type", "NK", "--out", tmp_path / "a.h5ad")
    assert_ok(given)
    assert "using default --model" not in given.stderr and "using default --out" not in given.stderr
    assert "using default --data" in given.stderr               # --data was left to the model's record


def test_cli_refuses_image_options_on_cells(tiny_h5ad, tmp_path):
    assert_user_error(invoke("train", tiny_h5ad, "--condition", "condition", "--image-size", "16",
                             "--out", tmp_path / "m", "-q"), "--image-size")
    assert_user_error(invoke("train", tiny_h5ad, "--out", tmp_path / "m", "-q"), "--condition")


def test_auto_progress_is_a_bar_in_a_notebook(monkeypatch):
    from trvae_cli.engine.progress import resolve_progress

    class Kernel:
        config = {"IPKernelApp": {}}

    class FakeIPython:
        @staticmethod
        def get_ipython():
            return Kernel()

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert resolve_progress("auto") == "json"
    monkeypatch.setitem(sys.modules, "IPython", FakeIPython)
    assert resolve_progress("auto") == "rich"


def test_evaluate_writes_csv_to_stdout(trained_model, tiny_h5ad, tmp_path):
    import csv
    import io

    pred = tmp_path / "p.h5ad"
    assert_ok(invoke("transform", "--model", trained_model, "--from", "control", "--to", "stimulated",
                     "--cell-type", "NK", "--out", pred, "-q"))
    result = invoke("evaluate", "--pred", pred, "--n-subsamples", "2", "--n-degs", "10", "--csv", "-", "-q")
    assert_ok(result)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and {"label", "metric", "value"} <= set(rows[0])
    assert {r["metric"] for r in rows} >= {"r2_mean_degs", "r2_var_all"}
    assert_user_error(invoke("evaluate", "--pred", pred, "--csv", "-", "--json", "-"), "stdout")


def test_embed_command_writes_the_latent_space(trained_model, tiny_h5ad, tmp_path):
    out = tmp_path / "latent.h5ad"
    result = invoke("embed", "--model", trained_model, "--out", out, "--max-cells", "100")
    assert_ok(result)
    assert result.stdout == f"{out}\n"
    emb = ad.read_h5ad(out)
    assert emb.n_obs == 100 and emb.obsm["X_trvae"].shape == (100, 4) and emb.obsm["X_trvae_mmd"].shape == (100, 8)
    assert set(emb.obs_names) <= set(ad.read_h5ad(tiny_h5ad).obs_names)
    assert emb.uns["trvae"]["command"].startswith("trvae embed") and "versions" in emb.uns["trvae"]
    assert_user_error(invoke("embed", "--model", trained_model, "--out", out), "output exists")
    assert_ok(invoke("embed", "--model", trained_model, "--out", out, "--force", "-q"))
    assert_user_error(invoke("embed", "--model", trained_model, "--out", tiny_h5ad, "--force"), "is the input")


def test_prediction_keeps_the_gene_annotations_and_training_says_what_it_did(tiny_h5ad, tmp_path, capsys):
    adata = ad.read_h5ad(tiny_h5ad)
    adata.var["symbol"] = [f"S{i}" for i in range(adata.n_vars)]
    model = api.train(adata, "condition", tmp_path / "m", settings={**SMALL, "epochs": 6, "early_stopping_patience": 1},
                      options=RunOptions(progress="text"))
    said = capsys.readouterr().err
    history = (tmp_path / "m" / "history.csv").read_text().splitlines()
    epochs_run = len(history) - 1
    phases = ["reading the AnnData", "building the model", "training", "saving the model to"]
    assert all(p in said for p in phases) and [said.index(p) for p in phases] == sorted(said.index(p) for p in phases)
    if epochs_run < 6:                                    # patience 1: it may stop, and must then say so
        assert f"stopped early at epoch {epochs_run} of 6 (no val_loss improvement in 1 epochs)" in said
        assert "restored the best epoch" in said
    else:
        assert "trained 6 of 6 epochs" in said
    assert "left)" in said                                 # the time left, from the second epoch on
    pred = api.transform(model, adata[:, ::-1].copy(), source="control", target="stimulated", write=False)
    assert list(pred.adata.var_names) == list(adata.var_names)          # the model's order
    assert list(pred.adata.var["symbol"]) == list(adata.var["symbol"])


def test_kl_warmup_stops_on_the_full_weight_objective(tiny_h5ad, tmp_path):
    """During a KL warm-up the loss carries a rising weight; early stopping and the LR schedule
    watch eta*rec + alpha*kl + beta*mmd at the full weight instead (a NumPy reference of the logs)."""
    import pandas as pd

    settings = {**SMALL, "epochs": 12, "kl_warmup": 8, "alpha": 1.0, "early_stopping_patience": 3}
    out = api.train(tiny_h5ad, "condition", tmp_path / "w", settings=settings, options=QUIET)
    h = pd.read_csv(out / "history.csv")
    result = json.loads((out / "config.json").read_text())["result"]
    model = json.loads((out / "config.json").read_text())["model"]
    eta, alpha, beta = (float(model[k]) for k in ("eta", "alpha", "beta"))
    assert alpha == 1.0
    for prefix in ("", "val_"):
        ref = (eta * h[prefix + "reconstruction"].to_numpy(np.float64) + alpha * h[prefix + "kl"].to_numpy(np.float64)
               + beta * h[prefix + "mmd"].to_numpy(np.float64))
        np.testing.assert_allclose(h[prefix + "objective"].to_numpy(np.float64), ref, rtol=1e-6)
    # the reported best is the minimum of the objective over the epochs run, not of the ramping loss
    assert result["best_epoch"] == int(np.argmin(h["val_objective"].to_numpy())) + 1
    assert result["best_val_objective"] == pytest.approx(float(h["val_objective"].min()), rel=1e-12)
    plain = api.train(tiny_h5ad, "condition", tmp_path / "p", settings=SMALL, options=QUIET)
    assert "best_val_loss" in json.loads((plain / "config.json").read_text())["result"]
    assert "val_objective" not in pd.read_csv(plain / "history.csv").columns
