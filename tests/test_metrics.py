"""R² and the mean-shift baseline against hand computations on tiny arrays."""

import numpy as np
import pytest
import scipy.sparse as sp

from trvae_cli.metrics import gene_means, gene_variances, mean_shift_prediction, r2, r2_scores


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
