"""Condition-balanced mini-batches, densified one batch at a time.

:class:`BalancedSampler` is pure NumPy: each batch holds (nearly) the same number
of cells from every condition, drawn without replacement from a per-condition
permutation that is reshuffled when used up (so the small conditions are
revisited more often within an epoch, as in the paper's Fig. 1). An epoch has
``ceil(n_cells / batch_size)`` batches.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp


class BalancedSampler:
    def __init__(self, labels: np.ndarray, batch_size: int, seed: int = 0, balanced: bool = True):
        self.labels = np.asarray(labels)
        self.batch_size = int(batch_size)
        self.balanced = balanced
        self.rng = np.random.default_rng(seed)
        self.groups = [np.flatnonzero(self.labels == k) for k in np.unique(self.labels)]
        self.n_batches = max(1, math.ceil(len(self.labels) / self.batch_size))

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
        if not self.balanced:
            perm = self.rng.permutation(len(self.labels))
            return [np.sort(b) for b in np.array_split(perm, self.n_batches)]
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


def dense_rows(matrix, rows: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Rows of a CSR or dense matrix as a float32 dense array (only these rows)."""
    block = matrix[rows]
    if columns is not None:
        block = block[:, columns]
    if sp.issparse(block):
        block = block.toarray()
    return np.asarray(block, dtype=np.float32)


def iter_row_chunks(n_rows: int, chunk: int):
    for start in range(0, n_rows, chunk):
        yield np.arange(start, min(start + chunk, n_rows))
