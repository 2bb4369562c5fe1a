"""Fit a TRVAE on any input: the one training loop of cells and images alike.

:func:`fit` builds the model from the settings and what :class:`TrainingData` says of the input,
trains it (validation split, early stopping, LR schedule, KL warm-up, checkpoints, ``--resume``,
SIGTERM / SIGINT, ``tf.distribute`` strategies, progress) and returns a :class:`FitResult`; the
caller decides what to record and :meth:`FitResult.save` writes the model directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import RunOptions, TrainSettings
from ..errors import Interrupted, TrvaeError


@dataclass
class TrainingData:
    """What :func:`fit` needs to know of the data, whatever its kind.

    ``labels``: the condition code of every training item; ``make_batches(positions, seed, fixed,
    replicas, batch_size)`` returns the Keras ``PyDataset`` of the items at ``positions`` (indices into
    ``labels``); ``model_args``: the input's shape arguments of the model (``n_genes`` or
    ``image_shape``); ``example_shape``: one item's shape; ``meta``: what identifies the data for a
    checkpoint (a resumed run must match it); ``describe``: what the ``start`` event says of the data
    (items, genes or image shape, held-out items).
    """

    labels: np.ndarray
    n_conditions: int
    model_args: dict
    example_shape: tuple
    make_batches: Callable
    meta: dict
    describe: dict = dataclasses.field(default_factory=dict)


def weights_digest(model) -> str:
    """SHA-256 of every weight of ``model`` (float32 bytes, in order): equal digests, equal models."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return h.hexdigest()


def validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``labels``) of train and validation items, stratified by condition."""
    if not 0.0 <= fraction < 1.0:
        raise TrvaeError(f"--validation-fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_val = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) > 1:
            n_val = max(1, min(n_val, len(idx) - 1))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@dataclass
class FitResult:
    """A trained (unsaved) model and what its training did."""

    model: object
    settings: TrainSettings
    distribution: object
    history: list
    early: object
    monitor: str
    seconds: float
    n_train: int
    n_validation: int
    log: Callable

    def result(self) -> dict:
        """``config.json``'s ``result``: epochs run, the restored epoch, the best monitored loss, time, digest."""
        early, rows = self.early, self.history
        return {
            "epochs_run": len(rows),
            "best_epoch": int(early.best_epoch) + 1 if early.best_weights is not None else len(rows),
            "best_" + self.monitor: float(early.best) if early.best_weights is not None else None,
            "train_seconds": round(self.seconds, 2),
            "weights_sha256": weights_digest(self.model),
        }

    def summary(self) -> dict:
        """What training did, in words (``text``) and fields: epochs run, early stopping, the epoch kept."""
        early, s = self.early, self.settings
        run = len(self.history)
        stopped = int(early.stopped_epoch) > 0
        best = int(early.best_epoch) + 1 if early.best_weights is not None else run
        value = float(early.best) if early.best_weights is not None else None
        if stopped:
            text = (f"stopped early at epoch {run} of {s.epochs} (no {self.monitor} improvement in "
                    f"{s.early_stopping_patience} epochs); restored the best epoch, {best}")
        elif early.best_weights is not None and best != run:
            text = f"trained {run} of {s.epochs} epochs; restored the best epoch, {best}"
        else:
            text = f"trained {run} of {s.epochs} epochs; the last epoch was the best"
        if value is not None:
            text += f" ({self.monitor} {value:.4g})"
        text += f", {self.seconds:.0f} s"
        return {"text": text, "epochs_run": run, "epochs": s.epochs, "stopped_early": stopped, "best_epoch": best,
                "monitor": self.monitor, "best": value, "train_seconds": round(self.seconds, 2)}

    def save(self, out: Path, config: dict) -> Path | None:
        """Write the model directory atomically (the chief only; other workers return None)."""
        from ..model_dir import write_model_dir

        dist = self.distribution
        self.log("result", weights_sha256=config["result"]["weights_sha256"], epochs_run=len(self.history),
                 worker=dist.worker_index, written=dist.is_chief)
        if not dist.is_chief:
            return None
        return write_model_dir(out, self.model, config, self.history)


def fit_batch_size(s: TrainSettings, n_train: int, warn) -> TrainSettings:
    """A batch the data and the MMD kernel can hold: at most the training items (a larger one would
    repeat them), and a batch x batch kernel that fits in half of this machine's memory."""
    batch = s.batch_size
    if batch > n_train:
        warn(f"--batch-size {batch} is more than the {n_train} training items: using {n_train}")
        batch = n_train
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):   # pragma: no cover - not POSIX
        memory = None
    kernel = 4 * 4 * batch * batch                  # float32 distances, kernel and two temporaries
    if memory and s.mmd_on != "none" and kernel > memory / 2:
        largest = int((memory / 32) ** 0.5)
        raise TrvaeError(f"--batch-size {batch} needs a {kernel / 2**30:.0f} GiB MMD kernel (batch x batch); "
                         f"this machine has {memory / 2**30:.0f} GiB: use --batch-size {largest} or less")
    return s if batch == s.batch_size else dataclasses.replace(s, batch_size=batch)


def _build(keras, data: TrainingData, s: TrainSettings, dist):
    from ..model import TRVAE
    from .distribute import prepare_model

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(s.precision)   # layers compute in 16 bits, variables and losses stay float32
    try:
        with dist.scope():
            model = TRVAE(n_conditions=data.n_conditions, sync_batchnorm=dist.replicas > 1, **data.model_args,
                          **s.model_kwargs())
            optimizer = keras.optimizers.Adam(learning_rate=s.learning_rate)
            if s.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            model.compile(optimizer=optimizer, jit_compile=bool(s.jit) and keras.backend.backend() != "torch")
            prepare_model(model, dist, data.example_shape)   # built here, not by fit (see .distribute)
            # Adam's slots now, not inside the first trace of the step: a tf.function that creates
            # variables is traced twice (1.8 s + 1.1 s on Kang), one that does not, once (1.1 s)
            model.optimizer.build(model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return model


def _discard_checkpoint(out: Path, existed: bool, resumed: bool, checkpointer) -> str:
    """After a failed epoch check: remove the checkpoint this run wrote into ``out`` (and ``out`` when
    the run created it and it is left empty); a resumed run's checkpoint, or one this run did not
    write (an earlier run's, under ``--force``), stays. Says which."""
    path = checkpointer.directory
    if resumed and path.is_dir():
        return f"the checkpoint it resumed from stays in {path}/ (it would fail the same way again)"
    if checkpointer.wrote:
        shutil.rmtree(path, ignore_errors=True)
    if not existed:
        try:
            Path(out).rmdir()
        except OSError:          # not there, or not empty: nothing of this run's is left in it
            pass
    return "nothing was written"


def fit(data: TrainingData, s: TrainSettings, out: Path, options: RunOptions | None = None,
        signals=None) -> FitResult:
    """Build the model, train it (checkpoints, resume, signals, strategies) and return it unsaved.

    ``signals``: the run's :class:`~trvae_cli.engine.signals.Signals` (else SIGTERM / SIGINT are
    caught around ``fit`` only)."""
    from ..backend import keras_module, seed_everything
    from ..data.batching import SAMPLER_SCHEME
    from .callbacks import TrainingFailed, make_callbacks, monitored
    from .checkpoint import (Checkpointer, TrainingInterrupted, check_same_run, checkpoint_path, read_checkpoint,
                             restore_batches, restore_callbacks, restore_model)
    from .distribute import make_distribution
    from .feeding import feed
    from .progress import event_logger

    o = options or RunOptions()
    out_existed = Path(out).exists()
    train_pos, val_pos = validation_split(data.labels, s.validation_fraction, s.seed)
    s = fit_batch_size(s, len(train_pos), o.warning)
    keras = keras_module(threads=o.threads)
    dist = make_distribution(o.strategy)       # before TensorFlow runs anything (multi-worker needs that)
    if dist.replicas > 1 and s.jit and not dist.has_gpu:
        o.warning("XLA cannot compile collective operations on the CPU: training without --jit")
        s = dataclasses.replace(s, jit=False)
    seed_everything(s.seed)
    log = event_logger(o.progress)
    model = _build(keras, data, s, dist)
    log("phase", phase="building", parameters=int(sum(np.prod(w.shape) for w in model.trainable_weights)))

    train_batches = data.make_batches(train_pos, s.seed, False, dist.replicas, s.batch_size)
    val_batches = None
    if len(val_pos):
        val_batches = data.make_batches(val_pos, s.seed + 1, True, dist.replicas, s.batch_size)
    monitor = monitored(s.kl_warmup, bool(len(val_pos)))

    # what a checkpoint must match to be resumed: the settings and the data as selected
    run_meta = json.loads(json.dumps({
        "settings": s.to_dict(), **data.meta, "n_train": int(len(train_pos)), "n_validation": int(len(val_pos)),
        "distribution": dist.describe(), "sampler_scheme": getattr(train_batches, "scheme", SAMPLER_SCHEME),
    }))
    ckpt, initial_epoch, history_before = None, 0, []
    if o.resume:
        ckpt = read_checkpoint(out, s.epochs)
        check_same_run(ckpt["state"]["meta"], run_meta)
        if ckpt["state"]["epochs_done"] == 0:
            # stopped before its first epoch ended (XLA compiling, say): the snapshot is the seeded
            # initial state, which this run has just built again -- start from it
            ckpt = None
        else:
            restore_model(ckpt, model)
            restore_batches(ckpt, train_batches)
            initial_epoch, history_before = ckpt["state"]["epochs_done"], ckpt["state"]["history"]

    compiling = bool(s.jit) and keras.backend.backend() != "torch"
    info = {**data.describe, "conditions": list(data.meta.get("conditions") or []),
            "held_out": list(data.meta.get("exclude") or []), "n_train": int(len(train_pos)),
            "n_validation": int(len(val_pos)), "batch_size": int(s.batch_size),
            "steps_per_epoch": int(len(train_batches))}
    train_feed = feed(train_batches, data.example_shape, keras, dist.replicas, initial_epoch)
    early, reduce_lr, callbacks = make_callbacks(s, monitor, o.progress, o.console, initial_epoch, info=info,
                                                 compiling=compiling, steps=train_feed.steps or len(train_batches))
    val_feed = feed(val_batches, data.example_shape, keras, dist.replicas)
    checkpointer = Checkpointer(
        checkpoint_path(out), o.checkpoint_every if dist.is_chief else 0, train_feed.sampler_state, early, reduce_lr,
        run_meta,
        history=history_before, restore=ckpt,
        on_write=lambda epoch, path: log("checkpoint", epoch=epoch, path=str(path)),
    )
    callbacks.append(checkpointer)           # last: its snapshot sees the other callbacks' epoch
    from .signals import Signals

    own_signals = signals is None
    # a multi-worker run cannot stop one worker mid-epoch without hanging the others:
    # signals keep their default action there, and --checkpoint-every is the way to resume
    signals = signals if signals is not None else Signals(enabled=dist.workers == 1)
    signals.listen(checkpointer.request_stop)
    finished = ckpt is not None and (initial_epoch >= s.epochs or ckpt["state"]["early"]["stopped_epoch"] > 0)
    t0 = time.perf_counter()
    if not finished:
        log("phase", phase="compiling" if compiling else "training")
        try:
            with signals if own_signals else nullcontext(), warnings.catch_warnings():
                # an epoch that ends early is EveryStepRan's error, said in one line, not Keras' warning
                warnings.filterwarnings("ignore", message="Your input ran out of data", category=UserWarning)
                model.fit(train_feed.data, steps_per_epoch=train_feed.steps,
                          validation_data=None if val_feed is None else val_feed.data,
                          validation_steps=None if val_feed is None else val_feed.steps,
                          epochs=s.epochs, initial_epoch=initial_epoch, callbacks=callbacks, verbose=0,
                          shuffle=False)
        except TrainingFailed as failed:
            raise TrvaeError(f"{failed}; {_discard_checkpoint(out, out_existed, o.resume, checkpointer)}") from None
        except TrainingInterrupted as stop:
            path = checkpointer.write()
            done = checkpointer.snapshot["state"]["epochs_done"]
            log("interrupted", signal=stop.signame, epochs_done=done, checkpoint=str(path))
            raise Interrupted(f"{stop.signame}: stopped after epoch {done} of {s.epochs}; checkpoint in {path}; "
                              f"continue with the same command plus --resume") from None
    elif ckpt is not None:   # the checkpoint is of a finished run: what early stopping's end would do
        restore_callbacks(ckpt, early, reduce_lr)
        if early.best_weights is not None:
            model.set_weights(early.best_weights)
    seconds = time.perf_counter() - t0 + (ckpt["state"]["seconds"] if ckpt is not None else 0.0)
    return FitResult(model, s, dist, checkpointer.history, early, monitor, seconds, int(len(train_pos)),
                     int(len(val_pos)), log)


def model_record(fit_result: FitResult, *, command: str, preset: str | None, data: dict) -> dict:
    """The model directory's ``config.json`` (format, command, model, training, data set-up, result,
    versions); the caller adds what belongs to its input (``var_names``, latent means)."""
    from ..backend import versions
    from ..model_dir import FORMAT, FORMAT_VERSION

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "model": fit_result.model.get_config(),
        "preset": preset,
        "training": fit_result.settings.to_dict(),
        "data": data,
        "distribution": fit_result.distribution.describe(),
        "result": fit_result.result(),
        "versions": versions(),
    }
