"""Condition-balanced mini-batches, densified one batch at a time.

:class:`BalancedSampler` is pure NumPy: each batch holds (nearly) the same number
of cells from every condition, drawn without replacement from a per-condition
permutation that is reshuffled when used up (so the small conditions are
revisited more often within an epoch, as in the paper's Fig. 1). An epoch has
``ceil(n_cells / batch_size)`` batches. ``batch_size`` is the largest batch: balanced batches are
all ``ceil(n_cells / n_batches)`` cells, so that an epoch draws about ``n_cells`` cells, not up
to ``batch_size - 1`` more (1,790 Kang training cells at 512: 4 batches of 448, 1,792 cells, not
2,048 — an eighth less arithmetic per epoch), and every batch has one shape (one XLA compile).

Unbalanced (``balanced=False``, the scGen preset's plain shuffling) is the same draw with all cells
as one group: each epoch a new permutation, cut into batches of that one size, the few cells the
last batch lacks taken from a fresh permutation. Every cell is seen in every epoch (those few twice)
and every batch still has one shape (``np.array_split`` gave sizes differing by one: two XLA compiles).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp


#: How batches are drawn, recorded with every checkpoint: a checkpoint of another scheme is not
#: resumed (the rest of its run would see other batches than either version's uninterrupted run).
#: 2: batches of one even size, balanced or not (1: ``batch_size`` each, ``array_split`` unbalanced).
#: Backed runs record their own plan's number (:data:`~trvae_cli.data.backed.PLAN_SCHEME`).
SAMPLER_SCHEME = 2


class BalancedSampler:
    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0, balanced: bool = True):
        self.labels = np.asarray(labels)
        self.rng = np.random.default_rng(seed)
        self.groups = ([np.flatnonzero(self.labels == k) for k in np.unique(self.labels)] if balanced
                       else [np.arange(len(self.labels))] if len(self.labels) else [])
        self.n_batches = max(1, math.ceil(len(self.labels) / int(batch_size)))
        #: the cells of every batch: at most the ``batch_size`` asked for
        self.batch_size = max(1, math.ceil(len(self.labels) / self.n_batches))

    def _shares(self, batch: int) -> np.ndarray:
        """Cells per condition in batch number ``batch``: equal, the remainder rotating."""
        k = len(self.groups)
        share = np.full(k, self.batch_size // k)
        extra = (batch + np.arange(self.batch_size % k)) % k
        share[extra] += 1
        return share

    def _refill(self, group: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """A new permutation of ``group`` with the cells already in this batch at its end."""
        perm = self.rng.permutation(group)
        if taken.size:
            used = np.isin(perm, taken)
            perm = np.concatenate([perm[~used], perm[used]])
        return perm

    def epoch(self) -> list[np.ndarray]:
        """The batches of one epoch (index arrays, sorted within each batch)."""
        queues = [self.rng.permutation(g) for g in self.groups]
        pos = [0] * len(self.groups)
        batches = []
        for b in range(self.n_batches):
            parts = []
            for g, (group, n) in enumerate(zip(self.groups, self._shares(b))):
                taken = np.empty(0, dtype=group.dtype)
                while n > 0:
                    if pos[g] >= len(queues[g]):
                        queues[g] = self._refill(group, taken)
                        pos[g] = 0
                    step = min(n, len(queues[g]) - pos[g])
                    taken = np.concatenate([taken, queues[g][pos[g]: pos[g] + step]])
                    pos[g] += step
                    n -= step
                parts.append(taken)
            batches.append(np.sort(np.concatenate(parts)))
        return batches


def replica_order(labels: np.ndarray, replicas: int) -> np.ndarray:
    """Positions that reorder one batch so that each of its ``replicas`` contiguous slices
    holds the conditions in proportion.

    ``tf.distribute`` gives replica r the r-th contiguous slice of a global batch (sizes
    differing by at most one, the larger first). The batch is grouped by condition and
    dealt round-robin: position j goes to slice ``j % replicas``, which gives exactly
    those sizes. With one replica the order is unchanged.
    """
    labels = np.asarray(labels)
    if replicas <= 1:
        return np.arange(len(labels))
    grouped = np.argsort(labels, kind="stable")
    return np.concatenate([grouped[r::replicas] for r in range(replicas)])


def dense_rows(matrix, rows: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Rows of a CSR or dense matrix as a float32 dense array (only these rows).

    CSR rows are gathered straight from ``indptr`` / ``indices`` / ``data``. scipy's fancy row
    indexing first unifies the index dtypes, and for a matrix whose ``indptr`` is int64 and
    ``indices`` int32 (what anndata writes for large files) that copies the whole ``indices``
    array on every call: 0.5 s per batch on 10^6 x 2,000 cells, against milliseconds here
    (measured with benchmarks/throughput.py).
    """
    if sp.issparse(matrix) and matrix.format == "csr":
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = matrix.indptr[rows].astype(np.int64), matrix.indptr[rows + 1].astype(np.int64)
        lengths = ends - starts
        total = int(lengths.sum())
        block = np.zeros((len(rows), matrix.shape[1]), dtype=np.float32)
        if total:
            first = np.cumsum(lengths) - lengths                  # where each row starts in the gather
            take = np.repeat(starts - first, lengths) + np.arange(total)
            block[np.repeat(np.arange(len(rows)), lengths), matrix.indices[take]] = matrix.data[take]
        return block[:, columns] if columns is not None else block
    block = matrix[rows]
    if columns is not None:
        block = block[:, columns]
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=np.float32)


def iter_row_chunks(n_rows: int, chunk: int):
    for start in range(0, n_rows, chunk):
        yield np.arange(start, min(start + chunk, n_rows))
