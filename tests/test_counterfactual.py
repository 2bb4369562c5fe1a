"""Counterfactual decoding: the pure function against NumPy references, and the transform mode."""

import anndata as ad
import numpy as np
import pytest

from cli_helpers import assert_ok, invoke, dense
from trvae_cli.counterfactual import counterfactual, poisson_coupling, recover_counts
from tolerances import U, U64, assert_within

# counterfactual() computes in float64 and rounds the result to float32 once: against a float64
# reference it is off by U |reference| (round to nearest) plus the float64 rounding of the
# sums, a few U64 times the magnitudes of their terms.


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
    x64, t64, s64 = (a.astype(np.float64) for a in (x, f_t, f_s))
    want = np.array([[max(x64[i, j] + t64[i, j] - s64[i, j], 0.0) for j in range(x.shape[1])]
                     for i in range(x.shape[0])])
    assert_within(got, want, U * np.abs(want) + 4 * U64 * (x64 + t64 + s64), "linear counterfactual")


def test_log1p_scale_adds_on_normalised_counts(arrays):
    x, f_t, f_s = arrays
    got = counterfactual(x, f_t, f_s, "log1p")
    x64, t64, s64 = (a.astype(np.float64) for a in (x, f_t, f_s))
    counts = np.exp(x64) - 1 + (np.exp(t64) - 1) - (np.exp(s64) - 1)
    want = np.log(1 + np.clip(counts, 0, None))
    # float64 exp - 1 vs expm1 and the sum: ~8 U64 of the lifted terms, shrunk by log1p' <= 1
    assert_within(got, want, U * want + 8 * U64 * (np.exp(x64) + np.exp(t64) + np.exp(s64) + 3),
                  "log1p counterfactual")
    assert got.dtype == np.float32 and (got >= 0).all()


@pytest.mark.parametrize("scale", ["log1p", "linear"])
def test_no_change_returns_the_cell_and_no_noise_returns_the_decoding(arrays, scale):
    x, f_t, f_s = arrays
    # the float64 result is within a few U64 of x (of f_t), a float32 number: it rounds back to it
    # (at most U off, e.g. at a value that is subnormal in float32)
    lifted = np.exp(x.astype(np.float64)) + np.exp(f_s.astype(np.float64)) + np.exp(f_t.astype(np.float64))
    assert_within(counterfactual(x, f_s, f_s, scale), x, U * np.abs(x) + 8 * U64 * lifted, "no change")
    assert_within(counterfactual(f_s, f_t, f_s, scale), f_t, U * np.abs(f_t) + 8 * U64 * lifted, "no noise")


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


def _log_normalised(counts, size_factors):
    return np.log1p(counts * np.asarray(size_factors)[:, None]).astype(np.float32)


def _size_factor_rtol(counts, size_factors):
    """Relative error of a size factor recovered from float32 log1p values, per row.

    s is expm1 of the row's smallest value x = log1p(k_min s) (over k_min); x is rounded to float32
    (relative U), and expm1 magnifies a relative error of x by x e^x / expm1(x) (< 1 + x).
    """
    k_min = np.where(counts > 0, counts, np.inf).min(axis=1)
    x = np.log1p(k_min * size_factors)
    return U * x * np.exp(x * (1 + U)) / np.expm1(x) * (1 + 4 * U) + 4 * U64


def test_recover_counts_inverts_log_normalisation():
    rng = np.random.default_rng(0)
    k = rng.poisson(1.5, (6, 40)).astype(float)
    k[:, 0] = 1                                   # every cell but two has a count of 1 ...
    k[4] = np.where(k[4] > 0, 2 + 3 * (np.arange(40) % 2), 0)   # ... this one has only 2s and 5s
    k[5] = 0                                       # and this one no counts at all
    s = np.array([0.3, 1.0, 2.2, 7.5, 0.9, 1.0])
    got_k, got_s = recover_counts(_log_normalised(k, s))
    np.testing.assert_array_equal(got_k, k)
    rel = _size_factor_rtol(k[:5], s[:5])
    assert_within(got_s[:5], s[:5], rel * s[:5], "size factors")
    assert_within(got_s[5], np.median(s[:5]), (rel * s[:5]).max(), "median size factor")   # an empty cell


@pytest.mark.parametrize("spoil", [lambda x: x * 1.01, lambda x: x + 0.01 * (x > 0), lambda x: x - 0.5])
def test_recover_counts_refuses_data_without_counts(spoil):
    k = np.random.default_rng(1).poisson(2.0, (5, 30)).astype(float)
    k[:, 0] = 1
    assert recover_counts(_log_normalised(k, np.full(5, 1.3))) is not None
    assert recover_counts(spoil(_log_normalised(k, np.full(5, 1.3)))) is None


@pytest.mark.parametrize("mu_source,mu_target", [(0.0, 0.7), (1.0, 3.0), (4.0, 1.5), (2.0, 0.0)])
def test_poisson_coupling_gives_the_target_distribution_and_keeps_the_counts(mu_source, mu_target):
    rng = np.random.default_rng(2)
    k = rng.poisson(mu_source, 200_000).astype(float)
    moved = poisson_coupling(k, np.full(k.shape, mu_source), np.full(k.shape, mu_target), rng)
    assert moved.mean() == pytest.approx(mu_target, abs=0.02)
    assert moved.var() == pytest.approx(mu_target, abs=0.03)        # Poisson: variance = mean
    assert np.mean(moved == 0) == pytest.approx(np.exp(-mu_target), abs=0.005)
    assert (moved >= k).all() if mu_target >= mu_source else (moved <= k).all()
    assert (moved == np.round(moved)).all()


def test_counts_scale_keeps_unchanged_cells_and_draws_zeros_of_an_induced_gene():
    rng = np.random.default_rng(3)
    k = rng.poisson(1.0, (4000, 3)).astype(float)
    k[:, 0] = 1
    k[:, 1] = 0                                   # gene 1: silent before
    s = rng.uniform(0.5, 2.0, 4000)
    x = _log_normalised(k, s)
    f_s = np.log1p(np.tile([1.0, 0.0, 1.0], (4000, 1)) * s[:, None])
    # no change: the cell, log1p(k s') with s' off by rel (above), log1p' = 1/(1+v), and two float32
    # roundings (of x and of the result)
    v = k * s[:, None]
    tol = _size_factor_rtol(k, s)[:, None] * v / (1 + v) + 2 * U * np.abs(x)
    assert_within(counterfactual(x, f_s, f_s, "counts", rng=rng), x, tol, "unchanged counts")
    f_t = np.log1p(np.tile([1.0, 0.8, 1.0], (4000, 1)) * s[:, None])                  # gene 1 induced to 0.8
    cf = counterfactual(x, f_t, f_s, "counts", rng=np.random.default_rng(4))
    assert np.mean(cf[:, 1] == 0) == pytest.approx(np.exp(-0.8), abs=0.02)             # real dropout
    assert np.mean(counterfactual(x, f_t, f_s, "log1p")[:, 1] == 0) == 0               # additive: none
    assert_within(cf[:, [0, 2]], x[:, [0, 2]], tol[:, [0, 2]], "genes left unchanged")
    with pytest.raises(ValueError, match="counts"):
        counterfactual(x * 1.01, f_t, f_s, "counts", rng=rng)
    with pytest.raises(ValueError, match="rng"):
        counterfactual(x, f_t, f_s, "counts")


def _transform(model, out, *extra):
    return invoke("transform", "--model", model, "--from", "control", "--to", "stimulated",
                  "--cell-type", "NK", "--out", out, "-q", *extra)


def test_transform_counterfactual_equals_the_formula(trained_model, tiny_h5ad, tmp_path):
    """Through the CLI: x + f(z, to) - f(z, from) on the log1p scale, with f decoded at the posterior mean."""
    from trvae_cli.model_dir import load_model

    assert_ok(_transform(trained_model, tmp_path / "mean.h5ad", "--decode", "mean"))
    assert_ok(_transform(trained_model, tmp_path / "cf.h5ad", "--residual-scale", "log1p"))
    assert_ok(_transform(trained_model, tmp_path / "lin.h5ad", "--decode", "counterfactual",
                         "--residual-scale", "linear"))
    tiny = ad.read_h5ad(tiny_h5ad)
    cfg, model = load_model(trained_model)
    rows = ((tiny.obs["cell_type"] == "NK") & (tiny.obs["condition"] == "control")).values
    x = np.asarray(tiny.X[rows].toarray(), np.float32)
    conds = cfg["data"]["conditions"]
    z, _ = model.encode(x, conds.index("control"))
    f_s, _ = model.decode(z, conds.index("control"))
    f_t = dense(ad.read_h5ad(tmp_path / "mean.h5ad").X)
    cf = ad.read_h5ad(tmp_path / "cf.h5ad")
    np.testing.assert_allclose(dense(cf.X), counterfactual(x, f_t, f_s, "log1p"), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dense(ad.read_h5ad(tmp_path / "lin.h5ad").X),
                               counterfactual(x, f_t, f_s, "linear"), rtol=1e-4, atol=1e-4)
    assert cf.uns["trvae"]["decode"] == "counterfactual" and cf.uns["trvae"]["residual_scale"] == "log1p"


def test_default_moves_counts_seeded_and_falls_back_to_log1p(trained_model, tiny_h5ad, tmp_path):
    """The default (auto) uses the counts the tiny data hold: integer counts out, same seed same cells."""
    runs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        result = invoke("transform", "--model", trained_model, "--from", "control", "--to", "stimulated",
                        "--cell-type", "NK", "--out", tmp_path / f"{name}.h5ad", "--seed", seed)
        assert_ok(result)
        assert "using default --residual-scale counts" in result.output
        runs[name] = ad.read_h5ad(tmp_path / f"{name}.h5ad")
    assert runs["a"].uns["trvae"]["residual_scale"] == "counts"
    np.testing.assert_array_equal(dense(runs["a"].X), dense(runs["b"].X))
    assert not np.array_equal(dense(runs["a"].X), dense(runs["c"].X))
    assert recover_counts(dense(runs["a"].X)) is not None        # still log1p of whole counts

    data = ad.read_h5ad(tiny_h5ad)
    data.X = np.asarray(data.X.toarray()) * 1.01                     # no longer counts
    path = tmp_path / "nocounts.h5ad"
    data.write_h5ad(path)
    result = invoke("transform", "--model", trained_model, "--data", path, "--from", "control", "--to",
                    "stimulated", "--cell-type", "NK", "--out", tmp_path / "d.h5ad")
    assert_ok(result)
    assert "using default --residual-scale log1p" in result.output
    from cli_helpers import assert_user_error

    out = tmp_path / "e.h5ad"
    assert_user_error(_transform(trained_model, out, "--data", path, "--residual-scale", "counts"),
                      "no recoverable counts", "--residual-scale log1p")
    assert not out.exists()


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
    assert_user_error(_transform(trained_model, out, "--data", path, "--residual-scale", "log1p"),
                      "negative values", "linear")
    assert not out.exists()
    # the default (auto) means linear for such data, as training accepts them: the same handling
    auto = invoke("transform", "--model", trained_model, "--from", "control", "--to", "stimulated",
                  "--cell-type", "NK", "--out", out, "--data", path)
    assert_ok(auto)
    assert "using default --residual-scale linear" in auto.stderr
    assert ad.read_h5ad(out).uns["trvae"]["residual_scale"] == "linear"


def test_draws_write_independent_draws_of_every_cell(trained_model, tmp_path):
    one = tmp_path / "one.h5ad"
    three = tmp_path / "three.h5ad"
    assert_ok(_transform(trained_model, one))
    assert_ok(_transform(trained_model, three, "--draws", "3"))
    a, b = ad.read_h5ad(one), ad.read_h5ad(three)
    n = a.n_obs
    assert b.n_obs == 3 * n and b.uns["trvae"]["draws"] == 3
    assert list(b.obs["trvae_draw"]) == [0] * n + [1] * n + [2] * n
    assert list(b.obs_names[:2]) == [f"{a.obs_names[0]}-0", f"{a.obs_names[1]}-0"]
    np.testing.assert_array_equal(dense(b.X[:n]), dense(a.X))       # draw 0 = the --draws 1 output
    assert not np.array_equal(dense(b.X[n:2 * n]), dense(b.X[:n]))   # the others are new draws
    assert (b.obs["condition"] == "stimulated").all()


@pytest.mark.parametrize("extra", [("--decode", "mean"), ("--residual-scale", "log1p")])
def test_draws_refuse_deterministic_decodings(trained_model, tmp_path, extra):
    from cli_helpers import assert_user_error

    out = tmp_path / "x.h5ad"
    assert_user_error(_transform(trained_model, out, "--draws", "2", *extra), "needs random draws")
    assert not out.exists()
