"""The metric functions against hand computations and NumPy/SciPy references on tiny arrays."""

import numpy as np
import pytest
import scipy.sparse as sp

from trvae_cli.metrics import (
    change_pearson, change_scale, energy_distance, gene_means, gene_variances, mean_shift_prediction, mmd, overlap_fraction,
    pearson, r2, r2_scores, rank_degs, subsample_indices, subsample_size, subsampled_r2,
)


def test_r2_is_squared_pearson():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([1.0, 2.5, 2.5, 5.0])
    assert r2(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1] ** 2)
    assert r2(a, 3 * a + 1) == pytest.approx(1.0)  # not sklearn's r2_score, which would be far below 1


def test_means_and_variances_sparse_equals_dense():
    x = np.array([[0.0, 1.0, 2.0], [0.0, 3.0, 0.0], [4.0, 0.0, 0.0]])
    np.testing.assert_allclose(gene_means(sp.csr_matrix(x)), [4 / 3, 4 / 3, 2 / 3])
    np.testing.assert_allclose(gene_variances(sp.csr_matrix(x)), x.var(axis=0))
    np.testing.assert_allclose(gene_variances(x), x.var(axis=0))


def test_r2_scores_on_a_gene_subset():
    rng = np.random.default_rng(0)
    real, pred = rng.random((20, 6)), rng.random((15, 6))
    genes = np.array([0, 2, 5])
    out = r2_scores(real, pred, genes)
    assert out["r2_mean"] == pytest.approx(np.corrcoef(real.mean(0)[genes], pred.mean(0)[genes])[0, 1] ** 2)
    assert out["r2_var"] == pytest.approx(np.corrcoef(real.var(0)[genes], pred.var(0)[genes])[0, 1] ** 2)


def test_mean_shift_baseline():
    src = np.array([[1.0, 0.0], [3.0, 0.5]])
    other_src = np.array([[1.0, 1.0], [1.0, 1.0]])
    other_tgt = np.array([[2.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(mean_shift_prediction(sp.csr_matrix(src), other_src, other_tgt),
                               [[2.0, 0.0], [4.0, 0.0]])  # +1 on gene 0, -1 on gene 1 clipped at 0


# --- subsampling, change, distances, DEG recovery ----------------------------------------------

def test_subsample_sizes():
    assert subsample_size(10, 0.8) == 8
    assert subsample_size(3, 0.1) == 2      # a variance needs two cells
    assert subsample_size(2, 0.5) == 2
    assert subsample_size(5, 1.0) == 5


def test_subsample_indices_without_replacement_and_seeded():
    a = subsample_indices(50, 0.8, 20, np.random.default_rng(3))
    b = subsample_indices(50, 0.8, 20, np.random.default_rng(3))
    c = subsample_indices(50, 0.8, 20, np.random.default_rng(4))
    assert a.shape == (20, 40)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for row in a:
        assert len(np.unique(row)) == 40 and row.min() >= 0 and row.max() < 50


def test_subsampled_r2_matches_an_independent_loop():
    rng = np.random.default_rng(0)
    real = rng.gamma(2.0, 1.0, (30, 25))
    pred = real[:20] * 1.1 + rng.normal(0, 0.3, (20, 25))
    degs = np.array([0, 3, 7, 11, 19])
    ri = subsample_indices(30, 0.7, 5, np.random.default_rng(1))
    pi = subsample_indices(20, 0.7, 5, np.random.default_rng(2))
    out = subsampled_r2(sp.csr_matrix(real), pred, degs, ri, pi)

    def corr2(a, b):
        return np.corrcoef(a, b)[0, 1] ** 2

    for i in range(5):
        r, p = real[ri[i]], pred[pi[i]]
        assert out["r2_mean_all"][i] == pytest.approx(corr2(r.mean(0), p.mean(0)), abs=1e-9)
        assert out["r2_var_all"][i] == pytest.approx(corr2(r.var(0), p.var(0)), abs=1e-9)
        assert out["r2_mean_degs"][i] == pytest.approx(corr2(r.mean(0)[degs], p.mean(0)[degs]), abs=1e-9)
        assert out["r2_var_degs"][i] == pytest.approx(corr2(r.var(0)[degs], p.var(0)[degs]), abs=1e-9)


def test_pearson_and_change_pearson():
    assert np.isnan(pearson(np.ones(4), np.arange(4.0)))            # constant side: undefined
    assert pearson(np.arange(5.0), 2 * np.arange(5.0) + 1) == pytest.approx(1.0)
    source = np.array([1.0, 1.0, 1.0, 1.0])
    real = np.array([2.0, 1.0, 0.0, 1.5])        # change +1, 0, -1, +0.5
    pred = np.array([3.0, 1.0, -1.0, 2.0])       # change +2, 0, -2, +1: same direction, twice as big
    assert change_pearson(pred, real, source) == pytest.approx(1.0)
    assert np.isnan(change_pearson(source, real, source))             # identity: no change predicted


def test_change_scale_is_the_slope_through_the_origin():
    source = np.array([1.0, 1.0, 1.0, 1.0])
    real = np.array([2.0, 1.0, 0.0, 1.5])        # change +1, 0, -1, +0.5
    assert change_scale(2 * real - source, real, source) == pytest.approx(2.0)   # twice the real change
    assert change_scale(source, real, source) == 0.0                              # identity: nothing moves
    assert np.isnan(change_scale(real, source, source))                          # no real change: undefined
    rng = np.random.default_rng(4)
    s, r, p = rng.normal(size=(3, 50))
    d, e = (p - s).astype(np.float64), (r - s).astype(np.float64)
    expected = np.linalg.lstsq(e[:, None], d, rcond=None)[0][0]                 # the float64 least-squares fit
    assert change_scale(p, r, s) == pytest.approx(expected, rel=1e-12)


def test_mmd_matches_an_explicit_double_loop():
    from trvae_cli.kernel import KERNEL_SCALES

    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, (6, 3)), rng.normal(0.5, 2, (4, 3))

    def k(a, b):
        d2 = ((a - b) ** 2).sum()
        return np.mean([np.exp(-d2 / (2 * s)) for s in KERNEL_SCALES])

    def mean_k(a, b):
        return np.mean([[k(u, v) for v in b] for u in a])

    expected = mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)
    assert mmd(x, y) == pytest.approx(expected, rel=1e-10)
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-12)
    assert mmd(x, y + 5) > mmd(x, y)


def test_mmd_equals_the_training_loss_kernel():
    """The evaluation's NumPy MMD and the Keras training term are the same quantity."""
    from trvae_cli.kernel import KERNEL_SCALES
    from trvae_cli.model.mmd import pairwise_condition_mmd
    from tolerances import assert_within, mmd_rounding_bound

    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, (7, 4)).astype(np.float32), rng.normal(1, 1, (5, 4)).astype(np.float32)
    onehot = np.zeros((12, 2), np.float32)
    onehot[:7, 0] = onehot[7:, 1] = 1
    keras_value = float(np.asarray(pairwise_condition_mmd(np.vstack([x, y]), onehot)))
    # mmd() is float64; the Keras term float32: within its worst-case float32 rounding bound
    # (tests/tolerances.py), not a relative tolerance measured on one CPU
    bound = mmd_rounding_bound(np.vstack([x, y]), np.repeat([0, 1], [7, 5]), 2, KERNEL_SCALES)
    assert_within(keras_value, mmd(x, y), bound, "float32 training MMD vs float64 evaluation MMD")
    assert bound < 1e-3 * mmd(x, y)


def test_energy_distance_against_scipy_in_one_dimension():
    """scipy's 1-D energy_distance is sqrt of the same V-statistic."""
    from scipy.stats import energy_distance as scipy_energy

    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 9), rng.normal(1, 2, 13)
    assert energy_distance(a[:, None], b[:, None]) == pytest.approx(scipy_energy(a, b) ** 2, rel=1e-10)
    assert energy_distance(a[:, None], a[:, None]) == 0.0


def test_energy_distance_by_hand():
    x = np.array([[0.0, 0.0], [0.0, 2.0]])
    y = np.array([[3.0, 0.0]])
    # cross distances 3 and sqrt(13); within x: mean of (0, 2, 2, 0) = 1; within y: 0
    assert energy_distance(x, y) == pytest.approx(2 * (3 + np.sqrt(13)) / 2 - 1.0)


def test_overlap_fraction():
    assert overlap_fraction(np.array([1, 2, 3, 4]), np.array([4, 9, 1])) == 0.5
    assert np.isnan(overlap_fraction(np.array([], int), np.array([1])))


def test_rank_degs_finds_the_changed_genes_in_order():
    rng = np.random.default_rng(0)
    source = rng.gamma(2.0, 0.5, (40, 12))
    target = source.copy() + rng.normal(0, 0.05, source.shape)
    target[:, 5] += 3.0
    target[:, 2] += 1.5
    target[:, 9] -= 1.0            # down: ranked last by score, not in a top-2
    order = rank_degs(target, sp.csr_matrix(source), [f"g{i}" for i in range(12)], 2)
    assert list(order) == [5, 2]
