"""The training callbacks the engine adds to every fit: timing, KL warm-up, LR schedule, early
stopping and progress."""

from __future__ import annotations

import time

from ..config import TrainConfig
from .progress import progress_callback
from ..backend import keras_module

keras = keras_module()   # quietly: TensorFlow logs nothing before it is configured


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


def make_callbacks(s: TrainConfig, monitor: str, progress: str, console=None, initial_epoch: int = 0,
                   info: dict | None = None, compiling: bool = False):
    """(early stopping, LR schedule or None, every callback): timing, KL warm-up, the LR schedule,
    early stopping and progress, in the order they must run (``info``, ``compiling``: see
    :func:`~trvae_cli.engine.progress.progress_callback`)."""
    callbacks = [EpochTimer(), KLWarmup(s.kl_warmup)]
    reduce_lr = None
    if s.lr_patience > 0:
        reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=s.lr_factor, patience=s.lr_patience, min_lr=1e-6, verbose=0)
        callbacks.append(reduce_lr)
    early = keras.callbacks.EarlyStopping(
        monitor=monitor, patience=s.early_stopping_patience if s.early_stopping_patience > 0 else s.epochs,
        restore_best_weights=True, verbose=0)
    callbacks.append(early)
    shown = progress_callback(progress, s.epochs, console, initial_epoch, info=info, compiling=compiling)
    if shown is not None:
        callbacks.append(shown)
    return early, reduce_lr, callbacks
