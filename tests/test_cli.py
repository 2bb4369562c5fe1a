"""The ``trvae`` command line end to end, through click's CliRunner (tiny data, tiny models)."""

import csv
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import trvae_cli
from cli_helpers import assert_ok, assert_user_error, invoke, dense

CONDITIONS = ["control", "stimulated", "inhibited"]


def listing(path):
    return sorted(p.name for p in path.iterdir())


def load_keras_model(path):
    from trvae_cli.backend import keras_module

    keras = keras_module()
    import trvae_cli.model  # noqa: F401  (registers the custom classes)

    return keras.saving.load_model(path, safe_mode=True, compile=False)


# --------------------------------------------------------------------------- data variants

@pytest.fixture(scope="module")
def tiny(tiny_h5ad):
    return ad.read_h5ad(tiny_h5ad)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("variants")


def _write(adata, path):
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def shuffled_h5ad(tiny, data_dir):
    """The tiny data with its genes in another order and one extra gene."""
    rng = np.random.default_rng(7)
    order = rng.permutation(tiny.n_vars)
    x = tiny.X.toarray()[:, order]
    extra = rng.random((tiny.n_obs, 1)).astype(np.float32)
    genes = [*tiny.var_names[order], "extra_gene"]
    adata = ad.AnnData(X=sp.csr_matrix(np.hstack([x, extra])), obs=tiny.obs.copy())
    adata.var_names = genes
    assert list(adata.var_names) != list(tiny.var_names)
    return _write(adata, data_dir / "shuffled.h5ad")


@pytest.fixture(scope="module")
def missing_genes_h5ad(tiny, data_dir):
    return _write(tiny[:, 5:].copy(), data_dir / "missing_genes.h5ad")


@pytest.fixture(scope="module")
def two_condition_h5ad(tiny, data_dir):
    keep = tiny.obs["condition"].isin(["control", "stimulated"]).values
    adata = tiny[keep].copy()
    adata.obs["condition"] = adata.obs["condition"].cat.remove_unused_categories()
    return _write(adata, data_dir / "two_conditions.h5ad")


@pytest.fixture(scope="module", params=["nan", "inf"])
def nonfinite_h5ad(request, tiny, data_dir):
    adata = tiny.copy()
    adata.X = adata.X.copy()
    adata.X.data[17] = np.nan if request.param == "nan" else np.inf
    return _write(adata, data_dir / f"{request.param}.h5ad")


@pytest.fixture
def work(tmp_path):
    """An empty folder for outputs: after a failed command it must still be empty."""
    d = tmp_path / "work"
    d.mkdir()
    return d


# --------------------------------------------------------------------------- help, version, imports

def test_help_lists_commands():
    result = invoke("--help")
    assert_ok(result)
    for word in ("train", "transform", "--version", "--help"):
        assert word in result.stdout


def test_train_help_lists_options():
    result = invoke("train", "--help")
    assert_ok(result)
    for option in ("--condition", "--out", "--cell-type-key", "--exclude", "--layer", "--epochs",
                   "--batch-size", "--hidden", "--latent-dim", "--mmd-dim", "--seed", "--force", "--quiet"):
        assert option in result.stdout, option


def test_transform_help_lists_options():
    result = invoke("transform", "-h")
    assert_ok(result)
    for option in ("--model", "--data", "--from", "--to", "--out", "--cell-type", "--decode", "--seed", "--force"):
        assert option in result.stdout, option


def test_version():
    result = invoke("--version")
    assert_ok(result)
    assert trvae_cli.__version__ in result.stdout
    assert result.stdout.strip() == f"trvae, version {trvae_cli.__version__}"


def _backend_modules_after(args, exit_code):
    """The TensorFlow and Keras modules a fresh Python has imported once ``trvae ARGS`` has run (in-process)
    and exited with ``exit_code``."""
    code = (
        "import sys\n"
        "import trvae_cli.cli\n"
        "from click.testing import CliRunner\n"
        f"r = CliRunner().invoke(trvae_cli.cli.main, {[str(a) for a in args]!r})\n"
        f"assert r.exit_code == {exit_code}, r.output\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_cli_import_and_help_do_not_import_tensorflow_or_keras():
    heavy = _backend_modules_after(["train", "--help"], 0)
    assert heavy == "", f"imported: {heavy[:300]}"


def test_a_data_error_in_train_is_said_before_the_backend_loads(tiny_h5ad, tmp_path):
    # the data are read and checked first: a wrong obs key costs the reading, not TensorFlow's import (~4 s)
    heavy = _backend_modules_after(["train", tiny_h5ad, "--condition", "no_such_key", "--out", tmp_path / "m"], 2)
    assert heavy == "", f"imported: {heavy[:300]}"
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- train + transform end to end

def test_train_then_transform_out_of_sample(trained_model, tiny):
    result = invoke("transform", "--model", trained_model, "--from", "control", "--to", "stimulated",
                    "--cell-type", "NK")
    assert_ok(result)
    path = trained_model / "control_to_stimulated_NK.h5ad"
    assert path.is_file()
    assert result.stdout == f"{path}\n"

    nk_control = ((tiny.obs["cell_type"] == "NK") & (tiny.obs["condition"] == "control")).values
    pred = ad.read_h5ad(path)
    assert pred.X.shape == (int(nk_control.sum()), 40)
    assert np.isfinite(dense(pred.X)).all()
    assert list(pred.var_names) == list(tiny.var_names)
    assert list(pred.obs["trvae_source_cell"]) == list(tiny.obs_names[nk_control])
    assert list(pred.obs_names) == [f"{n}-pred-stimulated" for n in tiny.obs_names[nk_control]]
    assert (pred.obs["condition"].astype(str) == "stimulated").all()
    assert (pred.obs["trvae_source_condition"].astype(str) == "control").all()
    assert (pred.obs["cell_type"].astype(str) == "NK").all()
    assert pred.obsm["X_trvae"].shape == (pred.n_obs, 4)
    info = pred.uns["trvae"]
    for key in ("from", "to", "model", "versions"):
        assert key in info, key
    assert info["from"] == "control" and info["to"] == "stimulated"
    assert info["versions"]["trvae"] == trvae_cli.__version__


def test_model_directory_contents(trained_model, tiny):
    assert (trained_model / "model.keras").is_file()
    cfg = json.loads((trained_model / "config.json").read_text())
    assert cfg["data"]["condition_key"] == "condition"
    assert cfg["data"]["conditions"] == CONDITIONS          # categorical order, not alphabetical
    assert cfg["data"]["cell_type_key"] == "cell_type"
    assert cfg["data"]["exclude"] == ["NK:stimulated"]
    assert cfg["data"]["n_cells_excluded"] == int(
        ((tiny.obs["cell_type"] == "NK") & (tiny.obs["condition"] == "stimulated")).sum())
    assert cfg["var_names"] == list(tiny.var_names)
    assert cfg["versions"]["trvae"] == trvae_cli.__version__
    assert "keras" in cfg["versions"]
    command = cfg["command"]
    assert command.startswith("trvae train ") and "--condition condition" in command
    assert "--exclude NK:stimulated" in command and "--epochs 2" in command and "--seed 0" in command
    assert cfg["training"]["epochs"] == 2 and cfg["training"]["hidden"] == [16]

    with open(trained_model / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for column in ("loss", "reconstruction", "kl", "mmd", "val_loss", "val_reconstruction", "val_kl", "val_mmd"):
        assert column in rows[0], column
        assert all(np.isfinite(float(r[column])) for r in rows)


def test_bare_form(tiny_h5ad, fast_train_args, tmp_path, monkeypatch, tiny):
    monkeypatch.chdir(tmp_path)
    result = invoke("train", tiny_h5ad, "--condition", "condition", *fast_train_args, "--jit")   # XLA, once
    assert_ok(result)
    assert result.stdout == "trvae_model\n"
    assert (tmp_path / "trvae_model" / "model.keras").is_file()

    result = invoke("transform", "--from", "control", "--to", "stimulated")
    assert_ok(result)
    assert result.stdout == os.path.join("trvae_model", "control_to_stimulated.h5ad") + "\n"
    out = tmp_path / "trvae_model" / "control_to_stimulated.h5ad"
    assert out.is_file()
    assert "using default --model trvae_model" in result.stderr
    assert f"using default --data {tiny_h5ad.resolve()}" in result.stderr
    assert "using default --out " in result.stderr and "control_to_stimulated.h5ad" in result.stderr
    pred = ad.read_h5ad(out)
    assert pred.n_obs == int((tiny.obs["condition"] == "control").sum())
    assert (pred.obs["condition"].astype(str) == "stimulated").all()

    # -q silences the report of defaults but not the path on stdout
    result = invoke("transform", "--from", "control", "--to", "inhibited", "-q")
    assert_ok(result)
    assert result.stderr == ""
    assert result.stdout == os.path.join("trvae_model", "control_to_inhibited.h5ad") + "\n"


# --------------------------------------------------------------------------- reproducibility

def test_train_force_overwrites_and_same_seed_gives_identical_weights(
        trained_model, tiny_h5ad, fast_train_args, work):
    out = work / "model"
    out.mkdir()
    (out / "marker.txt").write_text("old")
    args = ["train", tiny_h5ad, "--condition", "condition", "--cell-type-key", "cell_type",
            "--exclude", "NK:stimulated", "--out", out, *fast_train_args]

    assert_user_error(invoke(*args), "output exists", "--force")
    assert listing(out) == ["marker.txt"]
    assert listing(work) == ["model"]

    # --force replaces only what trvae wrote: this folder is the user's
    assert_user_error(invoke(*args, "--force"), "did not write")
    assert listing(out) == ["marker.txt"]
    (out / "marker.txt").unlink()
    out.rmdir()
    assert_ok(invoke(*args))
    assert_ok(invoke(*args, "--force"))        # a model directory trvae wrote: replaced
    assert listing(work) == ["model"]          # no staging, backup or lock files left

    a = load_keras_model(trained_model / "model.keras").get_weights()
    b = load_keras_model(out / "model.keras").get_weights()
    assert len(a) == len(b) > 0
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)


def test_dense_x_trains_exactly_like_sparse_x(trained_model, tiny, fast_train_args, data_dir, work):
    dense = tiny.copy()
    dense.X = np.asarray(dense.X.toarray())
    path = _write(dense, data_dir / "dense.h5ad")
    out = work / "dense_model"
    assert_ok(invoke("train", path, "--condition", "condition", "--cell-type-key", "cell_type",
                     "--exclude", "NK:stimulated", "--out", out, *fast_train_args))
    a = load_keras_model(trained_model / "model.keras").get_weights()
    b = load_keras_model(out / "model.keras").get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)


def _transform_x(model, out, *extra):
    result = invoke("transform", "--model", model, "--from", "control", "--to", "stimulated",
                    "--cell-type", "NK", "--out", out, "-q", *extra)
    assert_ok(result)
    assert result.stdout == f"{out}\n"
    return dense(ad.read_h5ad(out).X)


def test_default_and_mean_decoding_are_deterministic(trained_model, tmp_path):
    a = _transform_x(trained_model, tmp_path / "a.h5ad")
    b = _transform_x(trained_model, tmp_path / "b.h5ad", "--decode", "counterfactual", "--seed", "0")
    np.testing.assert_array_equal(a, b)   # the default: counterfactual on counts, seed 0
    c = _transform_x(trained_model, tmp_path / "c.h5ad", "--seed", "5")
    assert not np.array_equal(a, c)       # counts are drawn: another seed, other draws
    d1 = _transform_x(trained_model, tmp_path / "d1.h5ad", "--residual-scale", "log1p")
    d2 = _transform_x(trained_model, tmp_path / "d2.h5ad", "--residual-scale", "log1p", "--seed", "5")
    np.testing.assert_array_equal(d1, d2)  # additive counterfactuals draw nothing
    m1 = _transform_x(trained_model, tmp_path / "m1.h5ad", "--decode", "mean")
    m2 = _transform_x(trained_model, tmp_path / "m2.h5ad", "--decode", "mean", "--seed", "5")
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(a, m1)


def test_decode_sample_is_seeded(trained_model, tmp_path):
    mean = _transform_x(trained_model, tmp_path / "mean.h5ad", "--decode", "mean")
    s1 = _transform_x(trained_model, tmp_path / "s1.h5ad", "--decode", "sample", "--seed", "1")
    s1_again = _transform_x(trained_model, tmp_path / "s1b.h5ad", "--decode", "sample", "--seed", "1")
    s2 = _transform_x(trained_model, tmp_path / "s2.h5ad", "--decode", "sample", "--seed", "2")
    np.testing.assert_array_equal(s1, s1_again)
    assert not np.array_equal(s1, s2)
    assert not np.array_equal(s1, mean)


def test_transform_reorders_genes(trained_model, shuffled_h5ad, tiny, tmp_path):
    reference = _transform_x(trained_model, tmp_path / "ref.h5ad")
    shuffled = _transform_x(trained_model, tmp_path / "shuf.h5ad", "--data", shuffled_h5ad)
    np.testing.assert_allclose(shuffled, reference, rtol=1e-5, atol=1e-5)
    pred = ad.read_h5ad(tmp_path / "shuf.h5ad")
    assert list(pred.var_names) == list(tiny.var_names)   # the model's genes, in the model's order


# --------------------------------------------------------------------------- user errors: train

def _train(data, out, *extra):
    return invoke("train", data, "--condition", "condition", "--out", out, "--epochs", "1",
                  "--hidden", "8", "--mmd-dim", "4", "--latent-dim", "2", "-q", *extra)


def test_train_missing_data_file(work):
    assert_user_error(_train(work.parent / "nope.h5ad", work / "m"), "data file not found", "nope.h5ad")
    assert listing(work) == []


def test_train_not_an_h5ad(work, tmp_path):
    text = tmp_path / "cells.h5ad"
    text.write_text("cell,gene1\nA,1\n")
    assert_user_error(_train(text, work / "m"), "not an .h5ad")
    assert listing(work) == []


def test_train_condition_key_absent_lists_obs_columns(tiny_h5ad, work):
    result = invoke("train", tiny_h5ad, "--condition", "treatment", "--out", work / "m", "-q")
    assert_user_error(result, "'treatment'", "obs columns are: cell_type, condition")
    assert listing(work) == []


def test_train_exclude_unknown_cell_type_lists_values(tiny_h5ad, work):
    result = _train(tiny_h5ad, work / "m", "--cell-type-key", "cell_type", "--exclude", "Eryth:stimulated")
    assert_user_error(result, "'Eryth'", "B, Mono, NK, T")
    assert listing(work) == []


def test_train_exclude_unknown_condition_lists_values(tiny_h5ad, work):
    result = _train(tiny_h5ad, work / "m", "--cell-type-key", "cell_type", "--exclude", "NK:frozen")
    assert_user_error(result, "'frozen'", "control, inhibited, stimulated")
    assert listing(work) == []


def test_train_exclude_without_cell_type_key(tiny_h5ad, work):
    assert_user_error(_train(tiny_h5ad, work / "m", "--exclude", "NK:stimulated"), "--cell-type-key")
    assert listing(work) == []


def test_train_fewer_than_two_conditions_after_exclusion(two_condition_h5ad, work):
    excludes = [a for ct in ("T", "B", "NK", "Mono") for a in ("--exclude", f"{ct}:stimulated")]
    result = _train(two_condition_h5ad, work / "m", "--cell-type-key", "cell_type", *excludes)
    assert_user_error(result, "at least 2 conditions", "found 1")
    assert listing(work) == []


def test_train_nonfinite_values(nonfinite_h5ad, work):
    assert_user_error(_train(nonfinite_h5ad, work / "m"), "NaN or infinite")
    assert listing(work) == []


def test_train_output_exists_without_force(tiny_h5ad, work):
    out = work / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_user_error(_train(tiny_h5ad, out), "output exists", "--force")
    assert listing(work) == ["m"] and listing(out) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"


def test_train_raw_counts_warns(tiny_h5ad, fast_train_args, work):
    out = work / "m"
    result = invoke("train", tiny_h5ad, "--condition", "condition", "--layer", "counts", "--out", out,
                    *fast_train_args)
    assert_ok(result)
    assert (out / "model.keras").is_file()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "--layer" in warnings[0] and "counts" in warnings[0]
    assert "Traceback" not in result.output
    assert json.loads((out / "config.json").read_text())["data"]["layer"] == "counts"


def test_train_unknown_layer(tiny_h5ad, work):
    assert_user_error(_train(tiny_h5ad, work / "m", "--layer", "spliced"), "'spliced'", "counts")
    assert listing(work) == []


# --------------------------------------------------------------------------- user errors: transform

def _transform(model, out, *extra):
    return invoke("transform", "--model", model, "--from", "control", "--to", "stimulated", "--out", out,
                  *extra)


def test_transform_model_missing(work):
    assert_user_error(_transform(work / "no_model", work / "p.h5ad"), "model directory not found")
    assert listing(work) == []


def test_transform_default_model_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke("transform", "--from", "control", "--to", "stimulated"), "trvae_model")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("content", [None, "{}", "not json", '{"format": "something-else"}'])
def test_transform_model_dir_not_a_trvae_model(work, content):
    model = work / "not_a_model"
    model.mkdir()
    (model / "notes.txt").write_text("hello")
    if content is not None:
        (model / "config.json").write_text(content)
        (model / "model.keras").write_text("not a zip")
    before = listing(model)
    assert_user_error(_transform(model, work / "p.h5ad"), str(model))
    assert listing(work) == ["not_a_model"] and listing(model) == before


def test_transform_unknown_from_lists_conditions(trained_model, work):
    before = listing(trained_model)
    result = invoke("transform", "--model", trained_model, "--from", "ctrl", "--to", "stimulated")
    assert_user_error(result, "--from 'ctrl'", "control, stimulated, inhibited")
    result = invoke("transform", "--model", trained_model, "--from", "control", "--to", "stim",
                    "--out", work / "p.h5ad")
    assert_user_error(result, "--to 'stim'")
    assert listing(trained_model) == before and listing(work) == []


def test_transform_unknown_cell_type_lists_values(trained_model, work):
    before = listing(trained_model)
    result = invoke("transform", "--model", trained_model, "--from", "control", "--to", "stimulated",
                    "--cell-type", "Eryth")
    assert_user_error(result, "'Eryth'", "B, Mono, NK, T")
    assert_user_error(_transform(trained_model, work / "p.h5ad", "--cell-type", "Eryth"), "'Eryth'")
    assert listing(trained_model) == before and listing(work) == []


def test_transform_data_missing_genes(trained_model, missing_genes_h5ad, work):
    result = _transform(trained_model, work / "p.h5ad", "--data", missing_genes_h5ad)
    assert_user_error(result, "5 of the model's 40 genes are missing")
    assert listing(work) == []


def test_transform_data_not_found(trained_model, work):
    assert_user_error(_transform(trained_model, work / "p.h5ad", "--data", work / "nope.h5ad"), "not found")
    assert listing(work) == []


def test_transform_nonfinite_data(trained_model, nonfinite_h5ad, work):
    assert_user_error(_transform(trained_model, work / "p.h5ad", "--data", nonfinite_h5ad), "NaN or infinite")
    assert listing(work) == []


def test_transform_output_exists_needs_force(trained_model, work):
    out = work / "p.h5ad"
    out.write_text("precious")
    assert_user_error(_transform(trained_model, out, "--cell-type", "NK"), "output exists", "--force")
    assert out.read_text() == "precious" and listing(work) == ["p.h5ad"]

    # --force replaces only a prediction trvae wrote, never the user's file
    assert_user_error(_transform(trained_model, out, "--cell-type", "NK", "--force"), "did not write")
    assert out.read_text() == "precious"
    out.unlink()
    assert_ok(_transform(trained_model, out, "--cell-type", "NK"))
    result = _transform(trained_model, out, "--cell-type", "NK", "--force")
    assert_ok(result)
    assert result.stdout == f"{out}\n"
    assert ad.read_h5ad(out).X.shape[1] == 40
    assert listing(work) == ["p.h5ad"]     # no partial or lock files left beside it
