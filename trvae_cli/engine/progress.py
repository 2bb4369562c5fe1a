"""Keras plumbing for training: the batch feeder, KL warm-up and progress reporting.

Imports Keras (and so the backend); only the commands that train or predict
import this module.
"""

from __future__ import annotations

import json
import math
import sys
import time

import keras
import numpy as np
import scipy.sparse as sp

from .data.batching import BalancedSampler, dense_rows, replica_order


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

    def __getitem__(self, i):
        local = self._batches[i]
        return training_batch(self._read(local), self.labels[local], self.replicas)

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
        from .data.backed import ChunkPlan

        self.matrix = matrix
        self.replicas = int(replicas)
        self.fixed = fixed
        self.plan = ChunkPlan(rows, labels, batch_size, block_rows, pool_blocks, seed, fixed)
        self.sampler = self.plan            # what a checkpoint saves: .rng
        self._cache: dict = {}
        self._batches = self.plan.epoch()

    def __len__(self):
        return self.plan.n_batches

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

    def _read(self, local):
        from .data.images import load_images

        return load_images(self.image_set, self.rows[local])


class KLWarmup(keras.callbacks.Callback):
    """Ramps the model's ``kl_factor`` linearly from 0 to 1 over ``epochs`` epochs."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        factor = 1.0 if self.epochs <= 0 else min(1.0, epoch / self.epochs)
        self.model.kl_factor.assign(factor)


class EpochTimer(keras.callbacks.Callback):
    """Adds ``seconds`` and ``learning_rate`` to every epoch's logs (and so to history.csv)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._t0
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _fmt(logs, keys, short=False):
    parts = []
    for key in keys:
        if key in logs:
            name = _SHORT.get(key, key) if short else key
            parts.append(f"{name} {logs[key]:.4g}")
    return "  ".join(parts)


_SHORT = {"reconstruction": "rec", "val_loss": "val"}


_TERMS = ("loss", "reconstruction", "kl", "mmd", "val_loss")


class PlainProgress(keras.callbacks.Callback):
    """One line per epoch on stderr, for batch jobs and logs."""

    def __init__(self, epochs, stream=None):
        super().__init__()
        self.epochs = epochs
        self.stream = stream or sys.stderr

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        width = len(str(self.epochs))
        line = f"epoch {epoch + 1:>{width}}/{self.epochs}  {_fmt(logs, _TERMS)}"
        if "seconds" in logs:
            line += f"  ({logs['seconds']:.2f}s)"
        print(line, file=self.stream, flush=True)


class RichProgress(keras.callbacks.Callback):
    """A rich progress bar over epochs, showing the loss terms."""

    def __init__(self, epochs, console, initial_epoch=0):
        super().__init__()
        self.epochs = epochs
        self.console = console
        self.initial_epoch = initial_epoch

    def on_train_begin(self, logs=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]epoch"), MofNCompleteColumn(), BarColumn(bar_width=16), TimeElapsedColumn(),
            TextColumn("{task.fields[terms]}"), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.epochs, completed=self.initial_epoch, terms="")

    def on_epoch_end(self, epoch, logs=None):
        self.progress.update(self.task, completed=epoch + 1, terms=_fmt(logs or {}, _TERMS, short=True))

    def on_train_end(self, logs=None):
        self.progress.stop()


def json_line(record: dict) -> str:
    """One JSON object on one line; NaN and infinities become null (strict JSON)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        return v

    return json.dumps({k: clean(v) for k, v in record.items()}, separators=(",", ":"))


class JsonProgress(keras.callbacks.Callback):
    """JSON lines on stderr for batch jobs: a ``start`` event, one ``epoch`` event per epoch, ``end``.

    Every line is an object with ``event`` and ``time`` (Unix seconds); epoch events carry
    the epoch (1-based), the total, every loss term, ``seconds`` and ``learning_rate``.
    """

    def __init__(self, epochs, initial_epoch=0, stream=None):
        super().__init__()
        self.epochs = epochs
        self.initial_epoch = initial_epoch
        self.stream = stream or sys.stderr

    def _emit(self, event, **fields):
        print(json_line({"event": event, "time": round(time.time(), 3), **fields}), file=self.stream, flush=True)

    def on_train_begin(self, logs=None):
        self._emit("start", epochs=self.epochs, initial_epoch=self.initial_epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._emit("epoch", epoch=epoch + 1, epochs=self.epochs,
                   **{k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0})

    def on_train_end(self, logs=None):
        self._emit("end")


def history_rows(history: dict) -> list[dict]:
    """Per-epoch rows (epoch, loss, reconstruction, kl, mmd, val_*, lr, seconds)."""
    n = max((len(v) for v in history.values()), default=0)
    rows = []
    for i in range(n):
        row = {"epoch": i + 1}
        for key, values in history.items():
            if i < len(values):
                value = values[i]
                row[key] = float(value) if not (isinstance(value, float) and math.isnan(value)) else value
        rows.append(row)
    return rows
