"""Keras feeders of training batches, one per way of reading the input (no model code here).

Each is a ``keras.utils.PyDataset`` of ``((x, condition), x)`` batches, drawn for a whole epoch in
``on_epoch_begin`` so that the sampler's random state after epoch k decides epoch k + 1 alone (what
a checkpoint saves): :class:`CellBatches` (a matrix in memory), :class:`BackedBatches` (row blocks
read from disk) and :class:`ImageBatches` (image files read a batch at a time). The sources of
:mod:`trvae_cli.sources` choose among them; the training engine only sees a PyDataset with a
``sampler``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..data.batching import BalancedSampler, dense_rows, replica_order
from ..backend import keras_module

keras = keras_module()   # quietly: TensorFlow logs nothing before it is configured


def training_batch(x: np.ndarray, labels: np.ndarray, replicas: int = 1):
    """The ``((x, condition), x)`` tuple Keras trains on, its rows dealt to ``replicas``
    slices with every condition in each (:func:`~trvae_cli.data.batching.replica_order`)."""
    labels = np.asarray(labels, dtype=np.int32)
    if replicas > 1:
        order = replica_order(labels, replicas)
        x, labels = x[order], labels[order]
    return (x, labels), x


class CellBatches(keras.utils.PyDataset):
    """Feeds ``((x, condition), x)`` batches, densifying one batch at a time.

    Each epoch's batches are drawn in ``on_epoch_begin``, once per epoch, so the sampler's
    random state after epoch k decides epoch k + 1 alone (what a checkpoint saves). Keras
    also calls ``on_epoch_end`` when ``fit`` starts; nothing happens there.
    ``fixed=True`` replays the same batches every epoch (for validation).
    """

    def __init__(self, matrix, rows, labels, batch_size, seed=0, fixed=False, balanced=True, replicas=1):
        super().__init__(workers=1, use_multiprocessing=False)
        self.matrix = matrix
        self.replicas = int(replicas)
        self.rows = np.asarray(rows)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.seed = seed
        self.fixed = fixed
        self.balanced = balanced
        self.batch_size = batch_size
        self._new_sampler()
        self._batches = self.sampler.epoch()

    def _new_sampler(self):
        self.sampler = BalancedSampler(self.labels, self.batch_size, self.seed, self.balanced)

    def __len__(self):
        return self.sampler.n_batches

    @property
    def n_items(self) -> int:
        return len(self.rows)

    #: the rows can be held dense in memory all at once (:meth:`resident`); image files cannot
    can_reside = True

    def __getitem__(self, i):
        local = self._batches[i]
        return training_batch(self._read(local), self.labels[local], self.replicas)

    def positions(self, i) -> np.ndarray:
        """Batch ``i``'s rows as positions into :meth:`resident` (the rows of ``__getitem__(i)``)."""
        return self._batches[i]

    def resident(self) -> np.ndarray:
        """Every row of this feeder, dense float32, in the order :meth:`positions` indexes."""
        return dense_rows(self.matrix, self.rows)

    def _read(self, local):
        """The batch's data, dense float32 (one batch at a time)."""
        return dense_rows(self.matrix, self.rows[local])

    def on_epoch_begin(self):
        if self.fixed:
            self._new_sampler()
        self._batches = self.sampler.epoch()


class BackedBatches(keras.utils.PyDataset):
    """Out-of-core twin of :class:`CellBatches`: reads pools of row blocks from disk as needed.

    The plan (:class:`~trvae_cli.data.backed.ChunkPlan`) is drawn in ``on_epoch_begin``,
    like :class:`CellBatches`; at most two pools of blocks are held, sparse, and one batch
    is densified at a time.
    """

    def __init__(self, matrix, rows, labels, batch_size, seed=0, fixed=False, block_rows=4096, pool_blocks=8,
                 replicas=1):
        super().__init__(workers=1, use_multiprocessing=False)
        from ..data.backed import PLAN_SCHEME, ChunkPlan

        self.matrix = matrix
        self.replicas = int(replicas)
        self.fixed = fixed
        self.plan = ChunkPlan(rows, labels, batch_size, block_rows, pool_blocks, seed, fixed)
        self.scheme = PLAN_SCHEME           # how its batches are drawn, recorded with checkpoints
        self.sampler = self.plan            # what a checkpoint saves: .rng
        self._cache: dict = {}
        self._batches = self.plan.epoch()

    def __len__(self):
        return self.plan.n_batches

    @property
    def n_items(self) -> int:
        return len(self.plan.rows)

    def _pool(self, p: int):
        if p not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            br = self.plan.block_rows
            blocks = sorted(int(b) for b in self.plan.pool_blocks_of[p])
            parts = [self.matrix.block(b * br, min((b + 1) * br, self.matrix.shape[0])) for b in blocks]
            starts = np.concatenate([np.arange(b * br, b * br + part.shape[0]) for b, part in zip(blocks, parts)])
            stacked = sp.vstack(parts, format="csr") if sp.issparse(parts[0]) else np.concatenate(parts)
            self._cache[p] = (starts, stacked)
        return self._cache[p]

    def __getitem__(self, i):
        pools, positions = self._batches[i]
        order = np.argsort(positions, kind="stable")      # rows sorted within the batch, as in memory
        pools, positions = pools[order], positions[order]
        xs = []
        for p in np.unique(pools):
            starts, stacked = self._pool(int(p))
            sel = positions[pools == p]
            local = np.searchsorted(starts, self.plan.rows[sel])
            xs.append(dense_rows(stacked, local))
        x = np.concatenate(xs) if len(xs) > 1 else xs[0]
        labels = np.concatenate([self.plan.labels[positions[pools == p]] for p in np.unique(pools)])
        return training_batch(x, labels, self.replicas)

    def on_epoch_begin(self):
        self._cache.clear()
        self._batches = self.plan.epoch()


class ImageBatches(CellBatches):
    """Feeds ``((images, condition), images)`` batches read from disk one batch at a time
    (:func:`~trvae_cli.data.images.load_images`), drawn like :class:`CellBatches`."""

    def __init__(self, image_set, items, labels, batch_size, seed=0, fixed=False, balanced=True, replicas=1):
        self.image_set = image_set
        super().__init__(None, items, labels, batch_size, seed, fixed, balanced, replicas)

    can_reside = False

    def _read(self, local):
        from ..data.images import load_images

        return load_images(self.image_set, self.rows[local])
