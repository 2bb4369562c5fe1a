"""Out-of-core access to an ``.h5ad`` matrix: contiguous row blocks read from disk, on demand.

``--backed`` keeps the expression matrix on disk. obs and var are read (they are small);
the matrix -- X or a layer, CSR or dense -- is opened with anndata's ``sparse_dataset`` (or as
an h5py dataset when dense) and read one contiguous block of rows at a time, the access
pattern HDF5 serves fast. Nothing here holds more than one block (or one batch) of rows.

:class:`BackedMatrix` looks enough like an in-memory matrix for the code that reads rows
(``matrix[sorted_rows]``, ``.shape``) and adds ``block(start, stop)`` and ``iter_values``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..errors import TrvaeError

#: Rows per block read from disk when scanning (validation of the values).
SCAN_ROWS = 8192


class BackedMatrix:
    """Rows of an on-disk X / layer; keeps the HDF5 file open until :meth:`close`."""

    def __init__(self, path: str | Path, layer: str | None = None):
        import h5py

        self.path = Path(path)
        self.file = h5py.File(self.path, "r")
        key = "X" if layer is None else f"layers/{layer}"
        if key not in self.file:
            self.file.close()
            where = "X" if layer is None else f"layer {layer!r}"
            raise TrvaeError(f"{self.path} has no {where} to read backed")
        node = self.file[key]
        # anndata's layout names the encoding; its older one (h5sparse, e.g. the Kang file) the format
        encoding = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format", "array"))
        if isinstance(encoding, bytes):
            encoding = encoding.decode()
        encoding = {"csr": "csr_matrix", "csc": "csc_matrix"}.get(str(encoding), str(encoding))
        if encoding == "csr_matrix":
            shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
            if shape is None or not all(k in node for k in ("data", "indices", "indptr")):
                self.file.close()
                raise TrvaeError(f"{key} of {self.path} is a sparse matrix without data/indices/indptr or a "
                                 "shape: rewrite the file with anndata (adata.write_h5ad) or drop --backed")
            self.sparse = True
            self.dataset = _CsrRows(node, tuple(int(v) for v in shape))
            self._data = node["data"]
            self._indptr = self.dataset.indptr
        elif encoding == "csc_matrix":
            self.file.close()
            raise TrvaeError(f"{key} of {self.path} is CSC: rows cannot be read one block at a time; "
                             "rewrite it as CSR (adata.X = adata.X.tocsr()) or drop --backed")
        elif isinstance(node, h5py.Dataset):
            self.sparse = False
            self.dataset = node
            self._data = node
        else:
            self.file.close()
            raise TrvaeError(f"{key} of {self.path} has an encoding trvae cannot read backed ({encoding}): "
                             "rewrite the file with anndata (adata.write_h5ad) or drop --backed")
        self.shape = tuple(int(s) for s in self.dataset.shape)
        self.dtype = self._data.dtype

    # -- reading ---------------------------------------------------------------------------

    def block(self, start: int, stop: int):
        """Rows ``start:stop`` (CSR when the file is sparse, else a dense array)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.dataset[start:stop]
        return sp.csr_matrix(out) if self.sparse else np.asarray(out)

    def __getitem__(self, rows):
        """Rows by sorted integer index (read as the smallest covering block, then selected)."""
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            return self.block(start, stop)[::step] if step != 1 else self.block(start, stop)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return sp.csr_matrix((0, self.shape[1]), dtype=self.dtype) if self.sparse \
                else np.zeros((0, self.shape[1]), self.dtype)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 4 * rows.size:       # dense enough: one contiguous read
            return self.block(lo, hi)[rows - lo]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            order = np.argsort(rows, kind="stable")
            got = self.dataset[np.sort(rows)] if self.sparse else self.dataset[np.sort(rows).tolist()]
        got = sp.csr_matrix(got) if self.sparse else np.asarray(got)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        return got[inverse]

    def iter_values(self, rows_per_block: int = SCAN_ROWS):
        """The stored values, block by block (sparse: the nonzeros only)."""
        n = self.shape[0]
        for start in range(0, n, rows_per_block):
            stop = min(start + rows_per_block, n)
            if self.sparse:
                yield np.asarray(self._data[self._indptr[start]: self._indptr[stop]])
            else:
                yield np.asarray(self._data[start:stop]).ravel()

    def close(self) -> None:
        try:
            self.file.close()
        except Exception:  # pragma: no cover - closing twice
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _CsrRows:
    """Rows of an on-disk CSR matrix (``data`` / ``indices`` / ``indptr``), read by slices of rows."""

    def __init__(self, node, shape: tuple[int, int]):
        self.data, self.indices = node["data"], node["indices"]
        self.indptr = np.asarray(node["indptr"][:], dtype=np.int64)
        self.shape = shape

    def _slice(self, start: int, stop: int) -> sp.csr_matrix:
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return sp.csr_matrix((np.asarray(self.data[lo:hi]), np.asarray(self.indices[lo:hi]),
                              self.indptr[start:stop + 1] - lo), shape=(stop - start, self.shape[1]))

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
            return self._slice(start, max(start, stop))
        rows = np.asarray(rows, dtype=np.int64)        # sorted: read each run of consecutive rows once
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        runs = np.split(rows, breaks)
        return sp.vstack([self._slice(int(r[0]), int(r[-1]) + 1) for r in runs], format="csr")


def read_backed(path: str | Path, layer: str | None = None):
    """(AnnData with obs and var in memory and X left on disk, BackedMatrix of X or ``layer``)."""
    import anndata as ad

    from .anndata_io import check_h5ad_path

    path = check_h5ad_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            adata = ad.read_h5ad(path, backed="r")
    except Exception as exc:  # anndata raises many kinds for malformed files
        raise TrvaeError(f"could not read {path} as AnnData: {exc.__class__.__name__}: {exc}") from None
    return adata, BackedMatrix(path, layer)


def check_finite_backed(matrix: BackedMatrix, name: str = "X") -> None:
    if not np.issubdtype(matrix.dtype, np.number):
        raise TrvaeError(f"{name} is not numeric (dtype {matrix.dtype})")
    bad = 0
    for values in matrix.iter_values():
        bad += int((~np.isfinite(values)).sum())
    if bad:
        raise TrvaeError(f"{name} holds {bad} NaN or infinite values; clean the data first")


def first_values(matrix: BackedMatrix, n: int = 200_000) -> np.ndarray:
    """Up to ``n`` stored values from the start of the matrix (for the raw-counts check)."""
    for values in matrix.iter_values():
        return values[:n]
    return np.zeros(0, matrix.dtype)


#: recorded with a backed run's checkpoints as its ``sampler_scheme`` (see
#: :data:`~trvae_cli.data.batching.SAMPLER_SCHEME`): 3, training batches of one size (2: the last one smaller)
PLAN_SCHEME = 3


class ChunkPlan:
    """Which rows go in which batch, for one epoch of out-of-core training.

    The matrix is cut into blocks of ``block_rows`` consecutive rows. Each epoch the blocks
    are put in a random order and taken ``pool_blocks`` at a time; the training rows of
    such a pool are shuffled -- stratified by condition, so every stretch of a pool holds
    the conditions in their pool proportions -- and the epoch's rows, pool after pool, are
    cut into ``ceil(n / batch_size)`` training batches of one size, ``ceil(n / n_batches)`` (as in
    memory: one shape, one XLA compile). Every training row appears once per epoch; the few rows the
    last batch lacks are the ones just before it, seen twice. A batch touches at most two pools
    (given pools larger than a batch), so at most two pools are in memory. A ``fixed`` plan (the
    validation pass) keeps every row exactly once, its last batch smaller.

    Conditions stored in separate halves of a file still meet in a batch, because a pool
    draws its blocks from anywhere in the file. Unlike the in-memory sampler, shares are
    proportional to the pool's condition sizes, not equal.
    """

    def __init__(self, rows: np.ndarray, labels: np.ndarray, batch_size: int, block_rows: int,
                 pool_blocks: int, seed: int, fixed: bool = False):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels)
        order = np.argsort(self.rows, kind="stable")
        self.rows, self.labels = self.rows[order], self.labels[order]
        self.batch_size = int(batch_size)
        self.block_rows = int(block_rows)
        self.pool_blocks = max(1, int(pool_blocks))
        self.fixed = fixed
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        block_of = self.rows // self.block_rows
        self.blocks = np.unique(block_of)
        self.members = {int(b): np.flatnonzero(block_of == b) for b in self.blocks}
        self.n_batches = max(1, -(-len(self.rows) // self.batch_size))
        #: rows per batch: at most the ``batch_size`` asked for, the same in every training batch
        self.size = self.batch_size if fixed else max(1, -(-len(self.rows) // self.n_batches))

    def _stratified(self, positions: np.ndarray, rng) -> np.ndarray:
        """``positions`` shuffled so that each condition is spread evenly along the order."""
        labels = self.labels[positions]
        keys = np.empty(len(positions))
        for k in np.unique(labels):
            idx = np.flatnonzero(labels == k)
            keys[idx] = (rng.permutation(len(idx)) + rng.random(len(idx))) / len(idx)
        return positions[np.argsort(keys, kind="stable")]

    def epoch(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Batches as (pool number of each row, positions into ``rows``), pools in reading order."""
        rng = np.random.default_rng(self.seed) if self.fixed else self.rng
        blocks = self.blocks if self.fixed else rng.permutation(self.blocks)
        pools, pool_of = [], []
        for p, start in enumerate(range(0, len(blocks), self.pool_blocks)):
            members = np.concatenate([self.members[int(b)] for b in blocks[start: start + self.pool_blocks]])
            pools.append(self._stratified(members, rng))
            pool_of.append(np.full(len(members), p))
        order, pool_of = np.concatenate(pools), np.concatenate(pool_of)
        self.pool_blocks_of = [blocks[s: s + self.pool_blocks] for s in range(0, len(blocks), self.pool_blocks)]
        size = self.size
        batches = [(pool_of[c: c + size], order[c: c + size]) for c in range(0, len(order), size)]
        short = size - len(batches[-1][1])
        if short and not self.fixed and len(batches) > 1:
            last = len(order) - len(batches[-1][1])      # the rows just before the last batch fill it
            batches[-1] = (pool_of[last - short:], order[last - short:])
        return batches


class RowsView:
    """Selected rows of a (backed) matrix, read only when indexed: ``view[i]`` = ``matrix[rows[i]]``."""

    def __init__(self, matrix, rows: np.ndarray):
        self.matrix = matrix
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (len(self.rows), matrix.shape[1])

    def __getitem__(self, idx):
        return self.matrix[self.rows[idx]]

    def blocks(self, rows_per_block: int = SCAN_ROWS):
        for start in range(0, len(self.rows), rows_per_block):
            yield self.matrix[self.rows[start: start + rows_per_block]]
