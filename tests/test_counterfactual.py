"""Counterfactual decoding: the pure function against NumPy references, and the transform mode."""

import anndata as ad
import numpy as np
import pytest

from cli_helpers import assert_ok, invoke
from trvae_cli.counterfactual import counterfactual


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    x = np.where(rng.random((30, 12)) < 0.4, 0.0, rng.gamma(2.0, 0.6, (30, 12))).astype(np.float32)
    f_s = rng.gamma(2.0, 0.5, (30, 12)).astype(np.float32)
    f_t = rng.gamma(2.0, 0.5, (30, 12)).astype(np.float32)
    return x, f_t, f_s


def test_linear_scale_adds_the_change_and_clips_at_zero(arrays):
    x, f_t, f_s = arrays
    got = counterfactual(x, f_t, f_s, "linear")
    want = np.array([[max(x[i, j] + f_t[i, j] - f_s[i, j], 0.0) for j in range(x.shape[1])]
                     for i in range(x.shape[0])])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_log1p_scale_adds_on_normalised_counts(arrays):
    x, f_t, f_s = arrays
    got = counterfactual(x, f_t, f_s, "log1p")
    counts = np.exp(x.astype(np.float64)) - 1 + (np.exp(f_t) - 1) - (np.exp(f_s) - 1)
    np.testing.assert_allclose(got, np.log(1 + np.clip(counts, 0, None)), rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32 and (got >= 0).all()


@pytest.mark.parametrize("scale", ["log1p", "linear"])
def test_no_change_returns_the_cell_and_no_noise_returns_the_decoding(arrays, scale):
    x, f_t, f_s = arrays
    np.testing.assert_allclose(counterfactual(x, f_s, f_s, scale), x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(counterfactual(f_s, f_t, f_s, scale), f_t, rtol=1e-5, atol=1e-5)


def test_counterfactual_keeps_the_spread_that_mean_decoding_loses():
    """Cells = smooth state + noise; the counterfactual's per-gene variance is the real one, the mean's is not."""
    rng = np.random.default_rng(1)
    state = rng.normal(0, 0.05, (500, 1))
    noise = rng.normal(0, 0.5, (500, 20))
    f_s = 2.0 + state + np.zeros((1, 20))
    f_t = f_s + np.linspace(0, 1, 20)
    x = f_s + noise
    real_target = f_t + rng.normal(0, 0.5, (500, 20))
    cf = counterfactual(x, f_t, f_s, "linear")
    np.testing.assert_allclose(cf.var(0), real_target.var(0), rtol=0.25)
    assert (f_t.var(0) < 0.05 * real_target.var(0)).all()


def test_unknown_scale_is_refused(arrays):
    with pytest.raises(ValueError, match="scale"):
        counterfactual(*arrays, scale="log")


def _transform(model, out, *extra):
    return invoke("transform", "--model", model, "--from", "control", "--to", "stimulated",
                  "--cell-type", "NK", "--out", out, "-q", *extra)


def test_transform_counterfactual_equals_the_formula(trained_model, tiny_h5ad, tmp_path):
    """Through the CLI: x + f(z, to) - f(z, from) on the log1p scale, with f decoded at the posterior mean."""
    from trvae_cli.api import decode_rows, encode_rows
    from trvae_cli.model_dir import load_model

    assert_ok(_transform(trained_model, tmp_path / "mean.h5ad", "--decode", "mean"))
    assert_ok(_transform(trained_model, tmp_path / "cf.h5ad"))   # the default
    assert_ok(_transform(trained_model, tmp_path / "lin.h5ad", "--decode", "counterfactual",
                         "--residual-scale", "linear"))
    tiny = ad.read_h5ad(tiny_h5ad)
    cfg, model = load_model(trained_model)
    rows = ((tiny.obs["cell_type"] == "NK") & (tiny.obs["condition"] == "control")).values
    x = np.asarray(tiny.X[rows].toarray(), np.float32)
    conds = cfg["data"]["conditions"]
    z, _ = encode_rows(model, x, np.full(len(x), conds.index("control")), len(conds))
    f_s, _ = decode_rows(model, z, np.full(len(x), conds.index("control")), len(conds))
    f_t = np.asarray(ad.read_h5ad(tmp_path / "mean.h5ad").X)
    cf = ad.read_h5ad(tmp_path / "cf.h5ad")
    np.testing.assert_allclose(np.asarray(cf.X), counterfactual(x, f_t, f_s, "log1p"), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ad.read_h5ad(tmp_path / "lin.h5ad").X),
                               counterfactual(x, f_t, f_s, "linear"), rtol=1e-4, atol=1e-4)
    assert cf.uns["trvae"]["decode"] == "counterfactual" and cf.uns["trvae"]["residual_scale"] == "log1p"


def test_transform_refuses_an_unknown_residual_scale(trained_model, tmp_path):
    result = _transform(trained_model, tmp_path / "x.h5ad", "--decode", "counterfactual", "--residual-scale", "log")
    assert result.exit_code == 2 and "residual-scale" in result.output
    assert not (tmp_path / "x.h5ad").exists()


def test_log1p_scale_refuses_data_with_negative_values(trained_model, tiny_h5ad, tmp_path):
    from cli_helpers import assert_user_error

    data = ad.read_h5ad(tiny_h5ad)
    data.X = np.asarray(data.X.toarray()) - 1.0      # e.g. scaled data: not log1p counts
    path = tmp_path / "scaled.h5ad"
    data.write_h5ad(path)
    out = tmp_path / "x.h5ad"
    assert_user_error(_transform(trained_model, out, "--data", path), "negative values", "--residual-scale linear")
    assert not out.exists()
    assert_ok(_transform(trained_model, out, "--data", path, "--residual-scale", "linear"))
