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


def rank_degs(target, source, var_names, n: int = 100) -> np.ndarray:
    """Column indices of the top-``n`` genes up or down in ``target`` vs ``source`` cells.

    As in scGen/trVAE: ``sc.tl.rank_genes_groups(method="wilcoxon")`` with the target
    group against the source as reference, ranked by score; the ranked list is sliced to
    ``n`` (scGen's tutorial passes the whole list). Needs scanpy.
    """
    import warnings

    import anndata as ad
    import pandas as pd
    import scanpy as sc

    x = sp.vstack([sp.csr_matrix(target), sp.csr_matrix(source)]).tocsr()
    groups = np.array(["target"] * target.shape[0] + ["source"] * source.shape[0])
    sub = ad.AnnData(X=x, obs=pd.DataFrame({"group": pd.Categorical(groups)},
                                           index=[str(i) for i in range(len(groups))]))
    sub.var_names = [str(g) for g in var_names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(sub, groupby="group", groups=["target"], reference="source",
                                method="wilcoxon", n_genes=n)
    names = [row[0] for row in sub.uns["rank_genes_groups"]["names"]][:n]
    return sub.var_names.get_indexer(names)


def top_degs(adata, condition_key: str, source: str, target: str, n: int = 100,
             cell_type_key: str | None = None, cell_type: str | None = None) -> np.ndarray:
    """:func:`rank_degs` of the ``target`` vs ``source`` cells of ``adata`` (of one cell type)."""
    keep = np.ones(adata.n_obs, bool)
    if cell_type is not None:
        keep = adata.obs[cell_type_key].astype(str).values == cell_type
    cond = adata.obs[condition_key].astype(str).values
    return rank_degs(adata.X[keep & (cond == target)], adata.X[keep & (cond == source)], adata.var_names, n)


def mean_shift_prediction(x_source, x_other_source, x_other_target) -> np.ndarray:
    """The linear baseline: source cells + (mean target - mean source) of other cells, clipped at 0."""
    delta = gene_means(x_other_target) - gene_means(x_other_source)
    x = x_source.toarray() if sp.issparse(x_source) else np.asarray(x_source)
    return np.maximum(x + delta[None, :], 0.0)


# --- subsampling -----------------------------------------------------------------------------

def subsample_size(n: int, fraction: float) -> int:
    """Cells drawn per subsample: ``round(fraction * n)``, at least 2 (a variance needs 2), at most n."""
    return int(min(n, max(2, round(fraction * n))))


def subsample_indices(n: int, fraction: float, n_subsamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_subsamples, k) row indices, each row drawn without replacement and sorted."""
    k = subsample_size(n, fraction)
    return np.stack([np.sort(rng.choice(n, size=k, replace=False)) for _ in range(n_subsamples)])


def per_gene_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """(means, variances) of each gene."""
    return gene_means(x), gene_variances(x)


def subsampled_r2(real, pred, genes: np.ndarray, real_idx: np.ndarray, pred_idx: np.ndarray) -> dict:
    """R² of per-gene means and variances over paired subsamples of real and predicted cells.

    ``real_idx[i]`` and ``pred_idx[i]`` are the rows of subsample ``i``. Returns, for each of
    ``r2_mean_all``, ``r2_mean_degs``, ``r2_var_all``, ``r2_var_degs``, an array of one value
    per subsample.
    """
    out: dict[str, list[float]] = {k: [] for k in ("r2_mean_all", "r2_mean_degs", "r2_var_all", "r2_var_degs")}
    for ri, pi in zip(real_idx, pred_idx):
        rm, rv = per_gene_stats(real[ri])
        pm, pv = per_gene_stats(pred[pi])
        out["r2_mean_all"].append(r2(rm, pm))
        out["r2_var_all"].append(r2(rv, pv))
        out["r2_mean_degs"].append(r2(rm[genes], pm[genes]))
        out["r2_var_degs"].append(r2(rv[genes], pv[genes]))
    return {k: np.asarray(v) for k, v in out.items()}


# --- change, distances, DEG recovery ---------------------------------------------------------

def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant (e.g. a prediction that changes nothing)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(stats.pearsonr(a, b).statistic)


def change_pearson(pred_mean, real_mean, source_mean) -> float:
    """Pearson r of the predicted change (pred - source) against the real change (real - source)."""
    return pearson(np.asarray(pred_mean) - source_mean, np.asarray(real_mean) - source_mean)


def change_scale(pred_mean, real_mean, source_mean) -> float:
    """How big the predicted change is against the real one: the least-squares slope through the origin
    of the predicted change on the real change, ``sum(p r) / sum(r r)`` with p = pred - source and
    r = real - source. 1: the right size; 0.8: a fifth too weak (the identity's is 0), 1.2: a fifth
    too strong. Pearson r (:func:`change_pearson`) ignores the size; R² of means sees it only mixed
    with the source's level. NaN when the real change is 0.

    The real change carries its cells' sampling noise, and the top DEGs are picked where it is
    largest, so a perfect prediction scores a little below 1: half of Kang's real stimulated cells
    predicting the other half score 0.94-1.01 (NK, CD4T, both monocytes, dendritic cells; 29-178
    cells a half). A model that is unsure of a gene's change does well to shrink it: below 1 is not
    by itself a fault to be scaled away (``benchmarks/README.md``, tenth session)."""
    p = np.asarray(pred_mean, float) - np.asarray(source_mean, float)
    r = np.asarray(real_mean, float) - np.asarray(source_mean, float)
    rr = float(r @ r)
    return float(p @ r) / rr if rr > 0 else float("nan")


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import cdist

    return cdist(np.asarray(x, np.float64), np.asarray(y, np.float64), "sqeuclidean")


def mmd(x: np.ndarray, y: np.ndarray, scales=None) -> float:
    """Biased MMD² between two point sets with the training kernel (19 scales used as variances)::

        k(a, b) = 1/S * sum_s exp(-||a - b||^2 / (2 s))
        MMD^2 = mean k(X, X) + mean k(Y, Y) - 2 mean k(X, Y)
    """
    from .kernel import KERNEL_SCALES

    scales = KERNEL_SCALES if scales is None else scales

    def k(d2):
        return np.mean([np.exp(-d2 / (2.0 * s)) for s in scales], axis=0).mean()

    return float(max(k(_sq_dists(x, x)) + k(_sq_dists(y, y)) - 2.0 * k(_sq_dists(x, y)), 0.0))


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance with plain Euclidean distances (Székely & Rizzo; pertpy since 2025)::

        E = 2 mean ||x - y|| - mean ||x - x'|| - mean ||y - y'||

    V-statistic form (within-set means include the zero diagonal), so E >= 0 and E = 0 only
    for identical point sets. Not scPerturb's squared-Euclidean variant, which reduces to
    about twice the squared distance of the means and so ignores everything but the mean.
    """
    def d(a, b):
        return np.sqrt(np.maximum(_sq_dists(a, b), 0.0)).mean()

    return float(max(2.0 * d(x, y) - d(x, x) - d(y, y), 0.0))


def overlap_fraction(reference: np.ndarray, found: np.ndarray) -> float:
    """Fraction of ``reference`` items that are also in ``found``."""
    reference = np.asarray(reference)
    if len(reference) == 0:
        return float("nan")
    return float(np.isin(reference, np.asarray(found)).mean())
