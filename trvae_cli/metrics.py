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


def top_degs(adata, condition_key: str, source: str, target: str, n: int = 100,
             cell_type_key: str | None = None, cell_type: str | None = None) -> np.ndarray:
    """Column indices of the top-``n`` DEGs, target vs source, by scanpy's wilcoxon score.

    As in scGen/trVAE: ``sc.tl.rank_genes_groups`` on the cells of one cell type,
    grouped by condition; the ranked list is sliced to ``n`` (scGen's tutorial
    passes the whole list). Needs scanpy.
    """
    import warnings

    import scanpy as sc

    sub = adata
    if cell_type is not None:
        sub = adata[adata.obs[cell_type_key].astype(str).values == cell_type]
    sub = sub[sub.obs[condition_key].astype(str).isin([source, target]).values].copy()
    sub.obs[condition_key] = sub.obs[condition_key].astype(str).astype("category")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(sub, groupby=condition_key, groups=[target], reference=source,
                                method="wilcoxon", n_genes=n)
    names = [row[0] for row in sub.uns["rank_genes_groups"]["names"]][:n]
    return adata.var_names.get_indexer(names)


def mean_shift_prediction(x_source, x_other_source, x_other_target) -> np.ndarray:
    """The linear baseline: source cells + (mean target - mean source) of other cells, clipped at 0."""
    delta = gene_means(x_other_target) - gene_means(x_other_source)
    x = x_source.toarray() if sp.issparse(x_source) else np.asarray(x_source)
    return np.maximum(x + delta[None, :], 0.0)
