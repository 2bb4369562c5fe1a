"""Scores of a prediction against real cells, as the trVAE / scGen papers compute them.

Pure NumPy/SciPy functions on dense or sparse matrices (cells x genes).
"R²" is ``scipy.stats.linregress(real, pred).rvalue ** 2`` (squared Pearson of the
per-gene statistic), not sklearn's coefficient of determination.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import stats


def gene_means(x) -> np.ndarray:
    return np.asarray(x.mean(axis=0)).ravel()


def gene_variances(x) -> np.ndarray:
    """Per-gene population variance (ddof=0), sparse-aware."""
    if sp.issparse(x):
        mean = gene_means(x)
        sq = np.asarray(x.multiply(x).mean(axis=0)).ravel()
        return np.maximum(sq - mean**2, 0.0)
    return np.asarray(x, dtype=np.float64).var(axis=0)


def r2(real: np.ndarray, pred: np.ndarray) -> float:
    """Squared Pearson correlation via ``scipy.stats.linregress``, as in the paper."""
    return float(stats.linregress(np.asarray(real, float), np.asarray(pred, float)).rvalue ** 2)


def r2_scores(real, pred, genes: np.ndarray | None = None) -> dict:
    """R² of per-gene means and variances (optionally on a gene subset, as column indices)."""
    rm, pm = gene_means(real), gene_means(pred)
    rv, pv = gene_variances(real), gene_variances(pred)
    if genes is not None:
        rm, pm, rv, pv = rm[genes], pm[genes], rv[genes], pv[genes]
    return {"r2_mean": r2(rm, pm), "r2_var": r2(rv, pv)}
