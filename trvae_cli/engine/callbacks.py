"""The training callbacks the engine adds to every fit: timing, KL warm-up, LR schedule, early
stopping and progress."""

from __future__ import annotations

import math
import os
import time

from ..config import TrainConfig
from ..errors import TrvaeError
from .progress_callbacks import progress_callback
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


class FullWeightObjective(keras.callbacks.Callback):
    """Adds ``objective`` (and ``val_objective``) to every epoch's logs: the loss at the full KL weight,
    ``eta * reconstruction + alpha * kl + beta * mmd`` from the epoch's mean terms.

    During a KL warm-up ``loss`` carries the ramping weight, so it rises from one epoch to the next
    while the model improves: early stopping and the LR schedule would compare losses of different
    objectives (and stop at the start of the ramp). They monitor this instead, as scArches' trainer
    monitors its unweighted validation loss.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        m = self.model
        for prefix in ("", "val_"):
            if prefix + "reconstruction" in logs:
                logs[prefix + "objective"] = (m.eta * float(logs[prefix + "reconstruction"])
                                              + m.alpha * float(logs[prefix + "kl"])
                                              + m.beta * float(logs[prefix + "mmd"]))


def monitored(kl_warmup: int, validation: bool) -> str:
    """The log key early stopping and the LR schedule watch: the loss, or with a KL warm-up the
    full-weight objective (:class:`FullWeightObjective`); of the validation rows when there are any."""
    return ("val_" if validation else "") + ("objective" if kl_warmup > 0 else "loss")


class EpochTimer(keras.callbacks.Callback):
    """Adds ``seconds`` and ``learning_rate`` to every epoch's logs (and so to history.csv)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self._t0
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class TrainingFailed(TrvaeError):
    """A check of a finished epoch failed (:class:`EveryStepRan`, :class:`FiniteLoss`): no later run can
    continue from this one; :func:`~trvae_cli.engine.fit.fit` discards what it wrote and says so."""


class EveryStepRan(keras.callbacks.Callback):
    """Refuses an epoch that ended before its last training step.

    Keras takes an end-of-input error raised *inside* the training step (TensorFlow's
    ``OutOfRangeError``) for the end of the data: it ends the epoch there with a warning and goes
    on. trvae's training input never runs out within an epoch (an endless stream read ``steps``
    batches an epoch, or a ``PyDataset`` of ``steps`` batches), so a shorter epoch means the step
    failed. Seen: TensorFlow reading a damaged entry of a persistent XLA cache
    (``TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=DIR``, "Read less bytes than requested")
    ended every epoch at its first step, and the model was saved untrained with exit status 0.
    """

    def __init__(self, steps: int):
        super().__init__()
        self.steps = int(steps)
        self.ran = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.ran = 0

    def on_train_batch_end(self, batch, logs=None):
        self.ran += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.ran >= self.steps:
            return
        why = "the training step raised an end-of-input error, which Keras takes for the end of the data"
        flags = os.environ.get("TF_XLA_FLAGS", "")
        if "--tf_xla_persistent_cache_directory" in flags:
            why += ("; TF_XLA_FLAGS names a persistent XLA cache, and a damaged entry there does this: "
                    "remove the cache's files or the flag")
        raise TrainingFailed(f"epoch {epoch + 1} ran {self.ran} of its {self.steps} training steps: {why}")


class FiniteLoss(keras.callbacks.Callback):
    """Stops a training whose loss became NaN or infinite, before anything records the epoch.

    Keras trains on: every later epoch is NaN too, early stopping never improves, and the model
    would be saved with NaN weights and exit status 0 (seen with ``--learning-rate 1e6`` on the
    tiny data). The epoch's mean loss is NaN as soon as one of its steps was.
    """

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                raise TrainingFailed(f"training diverged: {key} was {float(value)} at epoch {epoch + 1}: try a "
                                     f"lower --learning-rate (this run's: {lr:g})")


def make_callbacks(s: TrainConfig, monitor: str, progress: str, console=None, initial_epoch: int = 0,
                   info: dict | None = None, compiling: bool = False, steps: int | None = None):
    """(early stopping, LR schedule or None, every callback): the checks that every step of an epoch
    ran (``steps`` an epoch, :class:`EveryStepRan`) and that its loss is finite, timing, KL warm-up, the LR schedule, early
    stopping and progress, in the order they must run (``info``, ``compiling``: see
    :func:`~trvae_cli.engine.progress_callbacks.progress_callback`)."""
    callbacks = [EveryStepRan(steps)] if steps else []
    callbacks += [FiniteLoss(), EpochTimer(), KLWarmup(s.kl_warmup)]
    if s.kl_warmup > 0:   # before the callbacks that read it
        callbacks.append(FullWeightObjective())
    reduce_lr = None
    if s.lr_patience > 0:
        reduce_lr = keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode="min", factor=s.lr_factor, patience=s.lr_patience, min_lr=1e-6, verbose=0)
        callbacks.append(reduce_lr)
    early = keras.callbacks.EarlyStopping(
        monitor=monitor, mode="min", patience=s.early_stopping_patience if s.early_stopping_patience > 0 else s.epochs,
        restore_best_weights=True, verbose=0)
    callbacks.append(early)
    shown = progress_callback(progress, s.epochs, console, initial_epoch, info=info, compiling=compiling)
    if shown is not None:
        callbacks.append(shown)
    return early, reduce_lr, callbacks
