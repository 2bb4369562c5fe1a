"""Write an ``.h5ad`` whose X arrives in blocks of rows, holding one block in memory at a time.

X is appended block by block (CSR through anndata's ``sparse_dataset(...).append``, dense into a
chunked h5py dataset with anndata's array encoding); obs, var, obsm and uns are written after the
last block, so columns computed from X (genes detected per cell) can go in them. The file is a
regular AnnData: ``anndata.read_h5ad`` reads it, in memory or backed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

# CSR holds a float32 value and an int32 column index per non-zero: smaller than dense below half
SPARSE_MAX_DENSITY = 0.5


@dataclass
class Written:
    """What :func:`write_streamed` wrote: whether X is CSR, and the non-zeros of every row."""

    sparse: bool
    nnz_per_row: np.ndarray


def as_csr(x: np.ndarray):
    """Rows ``x`` (any trailing shape) as a float32 CSR matrix."""
    import scipy.sparse as sp

    return sp.csr_matrix(np.asarray(x, np.float32).reshape(len(x), -1))


def stays_sparse(block: np.ndarray) -> bool:
    """Whether predictions whose first block is ``block`` are kept as CSR (:data:`SPARSE_MAX_DENSITY`)."""
    return bool(block.size == 0 or np.count_nonzero(block) / block.size <= SPARSE_MAX_DENSITY)


def write_streamed(path: str | Path, blocks: Iterable[np.ndarray], n_rows: int, n_cols: int, *,
                   sparse: bool | None, annotations: Callable[[Written], dict],
                   before_first: Callable[[np.ndarray], None] | None = None) -> Written:
    """Write rows ``blocks`` (dense float32 arrays, in order, ``n_rows`` in all) as X of ``path``.

    ``sparse``: CSR (True), dense (False), or None for CSR when the first block's density is at most
    :data:`SPARSE_MAX_DENSITY`. ``annotations(written)`` returns the ``obs``, ``var``, ``obsm`` and
    ``uns`` to write after X. ``before_first(block)``: called with the first block before anything
    is written (e.g. to check the disk space the whole file needs).
    """
    import h5py
    from anndata.io import sparse_dataset, write_elem

    nnz: list[np.ndarray] = []
    done = 0
    with h5py.File(path, "w") as f:
        dataset = None
        for block in blocks:
            block = np.asarray(block, np.float32).reshape(len(block), -1)
            if dataset is None:
                if before_first is not None:
                    before_first(block)
                if sparse is None:
                    sparse = stays_sparse(block)
                if sparse:
                    write_elem(f, "X", as_csr(block))
                    dataset = sparse_dataset(f["X"])
                else:
                    dataset = f.create_dataset("X", shape=(n_rows, n_cols), dtype=np.float32,
                                               chunks=(max(1, min(n_rows, 1024)), n_cols))
                    dataset.attrs["encoding-type"], dataset.attrs["encoding-version"] = "array", "0.2.0"
                    dataset[:len(block)] = block
            elif sparse:
                dataset.append(as_csr(block))
            else:
                dataset[done:done + len(block)] = block
            nnz.append(np.count_nonzero(block, axis=1))
            done += len(block)
        if done != n_rows:
            raise ValueError(f"expected {n_rows} rows, the blocks held {done}")
        written = Written(bool(sparse), np.concatenate(nnz) if nnz else np.zeros(0, np.int64))
        parts = annotations(written)
        for key in ("obs", "var"):
            write_elem(f, key, parts[key])
        for key in ("obsm", "uns"):
            write_elem(f, key, dict(parts.get(key, {})))
        for key in ("layers", "obsp", "varm", "varp"):
            write_elem(f, key, {})
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
    return written
