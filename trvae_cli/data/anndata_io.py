"""Reading and validating AnnData for trVAE: no Keras, no TensorFlow here.

Everything that can be wrong with a user's file is checked here and reported as
one :class:`~trvae_cli.errors.TrvaeError` line that says what was expected and
what was found.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import TrvaeError



def _preview(values: Sequence, n: int = 8) -> str:
    values = [str(v) for v in values]
    shown = ", ".join(values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def check_h5ad_path(path: str | Path) -> Path:
    """Clear errors for a missing file, a directory or a file that is not HDF5."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise TrvaeError(f"data file not found: {path}")
    if path.is_dir():
        raise TrvaeError(f"expected an .h5ad file, got a directory: {path}")
    if not h5py.is_hdf5(path):
        raise TrvaeError(f"not an .h5ad (HDF5) file: {path}")
    return path


def read_h5ad(path: str | Path):
    """Read an ``.h5ad`` file into memory; clear errors for a missing or foreign file."""
    import anndata as ad

    path = check_h5ad_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # anndata's notes on old layouts
            # repeated gene names are refused in one line where they matter (require_unique_genes)
            warnings.filterwarnings("ignore", message="Variable names are not unique", category=UserWarning)
            return ad.read_h5ad(path)
    except Exception as exc:  # anndata raises many kinds for malformed files
        raise TrvaeError(f"could not read {path} as AnnData: {exc.__class__.__name__}: {exc}") from None


def require_obs_key(adata, key: str, what: str = "condition") -> pd.Series:
    """``obs[key]`` as strings; a one-line error when the column is missing or has missing labels
    (NaN would otherwise become a label called ``nan``)."""
    if key not in adata.obs.columns:
        raise TrvaeError(
            f"{what} key {key!r} is not a column of obs; obs columns are: {_preview(list(adata.obs.columns), 20)}"
        )
    col = adata.obs[key]
    missing = int(col.isna().sum())
    if missing:
        raise TrvaeError(f"obs[{key!r}] has {missing} missing {what} labels (NaN): label those cells or drop them "
                         f"(adata = adata[adata.obs[{key!r}].notna()])")
    return col.astype(str)


def require_values(series: pd.Series, values: Sequence[str], key: str) -> None:
    present = set(series.unique())
    for v in values:
        if v not in present:
            raise TrvaeError(
                f"{v!r} is not a value of obs[{key!r}]; values are: {_preview(sorted(present))}"
            )


def ordered_labels(adata, key: str) -> list[str]:
    """Condition labels in a stable order: categorical order when categorical, else sorted."""
    col = adata.obs[key]
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.astype(str).unique())
        return [str(c) for c in col.cat.categories if str(c) in present]
    return sorted(col.astype(str).unique())


def get_matrix(adata, layer: str | None = None):
    """The expression matrix (X or a layer), as CSR or a dense float array. Not copied."""
    if layer is None:
        mat = adata.X
        if mat is None:
            raise TrvaeError("the data has no X matrix; choose a matrix with --layer")
    else:
        if layer not in adata.layers:
            raise TrvaeError(f"layer {layer!r} not found; layers are: {_preview(list(adata.layers.keys())) or 'none'}")
        mat = adata.layers[layer]
    if sp.issparse(mat):
        mat = sp.csr_matrix(mat) if not sp.isspmatrix_csr(mat) else mat
    elif not isinstance(mat, np.ndarray):
        mat = np.asarray(mat)
    return mat


def _values(mat) -> np.ndarray:
    return mat.data if sp.issparse(mat) else mat


def check_finite(mat, name: str = "X") -> None:
    vals = _values(mat)
    if not np.issubdtype(vals.dtype, np.number):
        raise TrvaeError(f"{name} is not numeric (dtype {vals.dtype})")
    bad = ~np.isfinite(vals)
    if bad.any():
        raise TrvaeError(f"{name} holds {int(bad.sum())} NaN or infinite values; clean the data first")


def looks_like_counts(mat, sample: int = 200_000) -> bool:
    """True when the stored values are all integers with a large maximum (raw counts)."""
    vals = np.asarray(_values(mat)).ravel()
    if vals.size == 0:
        return False
    vals = vals[:sample]
    return bool(np.all(np.equal(np.mod(vals, 1), 0)) and vals.max() > 50)


def parse_exclusions(exclude: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in exclude:
        parts = item.split(",")
        if len(parts) > 1 and all(":" in p for p in parts):
            raise TrvaeError(f"--exclude takes one CELLTYPE:CONDITION; give it once for each: "
                             + " ".join(f"--exclude {p.strip()}" for p in parts))
        if ":" not in item:
            raise TrvaeError(f"--exclude expects CELLTYPE:CONDITION, got {item!r}")
        cell_type, condition = item.rsplit(":", 1)
        if not cell_type or not condition:
            raise TrvaeError(f"--exclude expects CELLTYPE:CONDITION, got {item!r}")
        pairs.append((cell_type, condition))
    return pairs


@dataclass
class TrainingSelection:
    """Which cells train the model, and the condition index of each."""

    mask: np.ndarray            # boolean over adata.obs_names
    conditions: list[str]       # ordered condition labels (index = model input)
    labels: np.ndarray          # int condition index of each selected cell
    n_excluded: int


def select_training_cells(
    adata,
    condition_key: str,
    cell_type_key: str | None = None,
    exclude: Sequence[str] = (),
) -> TrainingSelection:
    cond = require_obs_key(adata, condition_key, "condition")
    mask = np.ones(adata.n_obs, dtype=bool)
    pairs = parse_exclusions(exclude)
    if pairs:
        if cell_type_key is None:
            raise TrvaeError("--exclude needs --cell-type-key to know which column holds cell types")
        ct = require_obs_key(adata, cell_type_key, "cell-type")
        for cell_type, condition in pairs:
            require_values(ct, [cell_type], cell_type_key)
            require_values(cond, [condition], condition_key)
            drop = (ct.values == cell_type) & (cond.values == condition)
            if not drop.any():
                raise TrvaeError(f"--exclude {cell_type}:{condition} matches no cells")
            mask &= ~drop
    elif cell_type_key is not None:
        require_obs_key(adata, cell_type_key, "cell-type")
    conditions = ordered_labels(adata, condition_key)
    kept = cond.values[mask]
    conditions = [c for c in conditions if c in set(kept)]
    if len(conditions) < 2:
        raise TrvaeError(
            f"need at least 2 conditions in obs[{condition_key!r}] to train, found {len(conditions)}: "
            f"{_preview(conditions)}"
        )
    index = {c: i for i, c in enumerate(conditions)}
    labels = np.array([index[c] for c in kept], dtype=np.int32)
    return TrainingSelection(mask=mask, conditions=conditions, labels=labels, n_excluded=int((~mask).sum()))


def require_unique_genes(var_names: Sequence, data_name: str = "the data") -> None:
    """A one-line error when gene names repeat: models match genes by name (a model trained on
    repeated names could not be matched to any data, its own included)."""
    genes = pd.Index([str(g) for g in var_names])
    if not genes.is_unique:
        repeated = genes[genes.duplicated()].unique()
        raise TrvaeError(f"the var_names of {data_name} are not unique ({len(repeated)} repeated, e.g. "
                         f"{_preview(list(repeated), 5)}); run adata.var_names_make_unique() first")


def gene_indexer(data_genes: Sequence[str], model_genes: Sequence[str], *, data_name: str = "the data",
                 genes_name: str = "the model's", prefix: str = "") -> np.ndarray | None:
    """Column indices that put ``data_genes`` in the model's order; None when already equal.

    ``data_name``, ``genes_name`` and ``prefix`` only word the error messages.
    """
    data_genes = pd.Index([str(g) for g in data_genes])
    model_genes = pd.Index([str(g) for g in model_genes])
    if data_genes.equals(model_genes):
        return None
    require_unique_genes(data_genes, data_name)
    missing = model_genes.difference(data_genes, sort=False)
    if len(missing):
        raise TrvaeError(
            f"{prefix}{len(missing)} of {genes_name} {len(model_genes)} genes are missing from {data_name} "
            f"(e.g. {_preview(list(missing), 5)})"
        )
    return data_genes.get_indexer(model_genes)


# Per-cell QC columns of scanpy (calculate_qc_metrics, filter_cells) and Seurat: the gene counts are
# recomputed from a prediction, the count totals dropped (a prediction holds normalised values, no
# library size). Matched on the whole column name.
_GENES_DETECTED = {"n_genes": np.int64, "n_genes_by_counts": np.int64, "nFeature_RNA": np.int64}
_LOG_GENES_DETECTED = ("log1p_n_genes_by_counts",)
_COUNT_TOTALS = re.compile(r"(n_counts|total_counts(_.+)?|log1p_total_counts(_.+)?|pct_counts_.+|"
                           r"pct_counts_in_top_\d+_genes|nCount_RNA|n_umis?|size_factors?|"
                           r"mt_frac|frac_mito|mito_frac|percent_mito|pct_mito|percent_mt|percent\.mt)")


def refresh_cell_qc(obs: pd.DataFrame, genes_detected: np.ndarray) -> tuple[list[str], list[str]]:
    """Make the per-cell QC columns of ``obs`` describe a prediction, in place.

    ``genes_detected``: the non-zero genes of each predicted cell. Returns (recomputed, dropped)
    column names.
    """
    recomputed, dropped = [], []
    for column in list(obs.columns):
        if column in _GENES_DETECTED:
            obs[column] = np.asarray(genes_detected, _GENES_DETECTED[column])
            recomputed.append(column)
        elif column in _LOG_GENES_DETECTED:
            obs[column] = np.log1p(np.asarray(genes_detected, np.float64))
            recomputed.append(column)
        elif _COUNT_TOTALS.fullmatch(str(column)):
            del obs[column]
            dropped.append(column)
    return recomputed, dropped
