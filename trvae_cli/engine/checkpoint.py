"""Resumable training: epoch-boundary snapshots, checkpoints on disk, stopping on a signal.

A checkpoint is everything that decides the rest of a run, taken at the end of an epoch:

* every model variable (weights, BatchNorm statistics, the KL factor, the states of the
  random seed generators of sampling and dropout) and every optimizer variable (Adam's
  moments, its step counter, the learning rate), by position (checked by shape);
* the state of early stopping (wait, best value, best epoch, best weights) and of the
  learning-rate schedule (wait, best, cooldown);
* the training batch sampler's random state (which alone decides the next epoch's batches);
* the per-epoch history so far and the seconds spent.

Resuming from it with the same settings on the same machine continues bit for bit as if the
run had not stopped (CPU; tested). The checkpoint lives in ``MODEL_DIR/checkpoint/`` and is
replaced atomically (written next to it, then renamed), so a kill during a write leaves the
previous one intact. The finished model directory does not keep it.

A snapshot is kept in memory after every epoch; ``--checkpoint-every N`` also writes every
N-th one to disk, and SIGTERM / SIGINT write the latest one, then stop training with
:data:`EXIT_INTERRUPTED` -- the current epoch's partial work is discarded, so the resumed run
is identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import signal
import threading
from pathlib import Path

import keras
import numpy as np

from ..errors import TrvaeError
from ..outputs import staged

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"
CHECKPOINT_FORMAT = 1

#: Exit status after a signal stopped training and a checkpoint was written (EX_TEMPFAIL:
#: "try again later"; a batch script can requeue the job on it and run ``--resume``).
EXIT_INTERRUPTED = 75


class TrainingInterrupted(Exception):
    """Raised inside ``fit`` when a stop signal arrived; carries the signal's name."""

    def __init__(self, signame: str):
        super().__init__(signame)
        self.signame = signame


def _np(v) -> np.ndarray:
    return np.array(keras.ops.convert_to_numpy(v), copy=True)


def _number(x):
    """JSON-safe float (None stays None; inf / nan as strings: json's Infinity is not standard JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else repr(x)


def _from_number(x):
    return None if x is None else float(x)


def checkpoint_path(model_dir: str | Path) -> Path:
    return Path(model_dir) / CHECKPOINT_DIR


class Checkpointer(keras.callbacks.Callback):
    """Snapshots the run at every epoch end; writes every ``every``-th one (0: only on a signal).

    Must be the last callback, so that its snapshot sees what early stopping and the
    learning-rate schedule did in that epoch.
    """

    def __init__(self, directory: Path, every: int, batches, early, reduce_lr, meta: dict,
                 history: list[dict] | None = None, restore: dict | None = None, on_write=None):
        super().__init__()
        self.directory = Path(directory)
        self.every = int(every)
        self.batches = batches
        self.early = early
        self.reduce_lr = reduce_lr
        self.meta = meta
        self.history = list(history or [])
        self._restore = restore
        self._on_write = on_write
        self.snapshot: dict | None = None
        self.stop_signal: str | None = None

    # -- signals ---------------------------------------------------------------------------

    def request_stop(self, signame: str) -> None:
        self.stop_signal = signame

    def on_train_batch_end(self, batch, logs=None):
        if self.stop_signal:
            raise TrainingInterrupted(self.stop_signal)

    # -- snapshots -------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        if self._restore is not None:       # after the other callbacks' own on_train_begin resets
            restore_callbacks(self._restore, self.early, self.reduce_lr)
            self._restore = None
        self.snapshot = self._take(len(self.history))

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1}
        row.update({k: float(v) for k, v in (logs or {}).items() if np.isscalar(v) or np.ndim(v) == 0})
        self.history.append(row)
        self.snapshot = self._take(epoch + 1)
        if self.every > 0 and (epoch + 1) % self.every == 0:
            self.write()

    def _take(self, epochs_done: int) -> dict:
        sampler = self.batches.sampler
        early = self.early
        state = {
            "format": CHECKPOINT_FORMAT,
            "epochs_done": epochs_done,
            "meta": self.meta,
            "history": [dict(r) for r in self.history],
            "seconds": sum(r.get("seconds", 0.0) for r in self.history),
            "sampler_rng": sampler.rng.bit_generator.state,
            "early": {"wait": int(early.wait), "best": _number(early.best), "best_epoch": int(early.best_epoch),
                      "stopped_epoch": int(early.stopped_epoch), "has_best": early.best_weights is not None},
            "reduce_lr": None,
        }
        if self.reduce_lr is not None:
            r = self.reduce_lr
            state["reduce_lr"] = {"wait": int(r.wait), "best": _number(r.best), "cooldown": int(r.cooldown_counter)}
        # by position: variable paths carry per-process auto-numbering (trvae_1/..., seed_generator_3/...)
        arrays = {f"model/{i}": _np(v) for i, v in enumerate(self.model.variables)}
        arrays.update({f"optimizer/{i}": _np(v) for i, v in enumerate(self.model.optimizer.variables)})
        if early.best_weights is not None:
            arrays.update({f"best/{i}": np.array(w, copy=True) for i, w in enumerate(early.best_weights)})
        return {"state": state, "arrays": arrays}

    def write(self) -> Path | None:
        """Write the latest snapshot (atomically); returns the checkpoint directory."""
        if self.snapshot is None:
            return None
        path = write_checkpoint(self.directory, self.snapshot)
        if self._on_write is not None:
            self._on_write(self.snapshot["state"]["epochs_done"], path)
        return path


def write_checkpoint(directory: Path, snapshot: dict) -> Path:
    """Write ``snapshot`` as ``directory`` (staged, fsynced, then swapped in: a kill mid-write keeps
    the previous checkpoint)."""
    directory = Path(directory)
    with staged(directory, directory=True, durable=True) as tmp:
        np.savez(tmp / ARRAYS_FILE, **snapshot["arrays"])
        (tmp / STATE_FILE).write_text(json.dumps(snapshot["state"], indent=1))
    return directory


def read_checkpoint(model_dir: str | Path) -> dict:
    """The checkpoint of ``model_dir`` as ``{"state": ..., "arrays": ...}``, or a one-line error."""
    directory = checkpoint_path(model_dir)
    if not (directory / STATE_FILE).is_file() or not (directory / ARRAYS_FILE).is_file():
        raise TrvaeError(f"--resume: no checkpoint in {model_dir} (expected {directory}/)")
    try:
        state = json.loads((directory / STATE_FILE).read_text())
        with np.load(directory / ARRAYS_FILE) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise TrvaeError(f"--resume: unreadable checkpoint {directory}: {exc}") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TrvaeError(f"--resume: checkpoint {directory} has an unknown format")
    return {"state": state, "arrays": arrays}


def check_same_run(saved: dict, current: dict) -> None:
    """Refuse to resume a checkpoint made with other settings or data."""
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:3])
        raise TrvaeError(f"--resume: the checkpoint was made with other settings or data ({shown}); "
                         "resume with the original command, or train afresh with --force")


def restore_model(ckpt: dict, model) -> None:
    """Assign the saved model and optimizer variables (the optimizer must be built)."""
    arrays = ckpt["arrays"]
    for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
        saved = sum(1 for k in arrays if k.startswith(prefix + "/"))
        if saved != len(variables):
            raise TrvaeError(f"--resume: the checkpoint holds {saved} {prefix} variables, this model "
                             f"{len(variables)}; it belongs to another model")
        for i, v in enumerate(variables):
            value = arrays[f"{prefix}/{i}"]
            if tuple(value.shape) != tuple(v.shape):
                raise TrvaeError(f"--resume: checkpoint variable {prefix}/{i} has shape {value.shape}, "
                                 f"the model's {v.path} {tuple(v.shape)}; it belongs to another model")
            v.assign(value)


def restore_batches(ckpt: dict, batches) -> None:
    """The sampler's random state; the next ``on_epoch_begin`` draws the resumed epoch's batches."""
    batches.sampler.rng.bit_generator.state = ckpt["state"]["sampler_rng"]


def restore_callbacks(ckpt: dict, early, reduce_lr) -> None:
    state, arrays = ckpt["state"], ckpt["arrays"]
    e = state["early"]
    early.wait, early.best = e["wait"], _from_number(e["best"])
    early.best_epoch, early.stopped_epoch = e["best_epoch"], e["stopped_epoch"]
    if e["has_best"]:
        n = sum(1 for k in arrays if k.startswith("best/"))
        early.best_weights = [arrays[f"best/{i}"] for i in range(n)]
    if reduce_lr is not None and state["reduce_lr"] is not None:
        r = state["reduce_lr"]
        reduce_lr.wait, reduce_lr.best, reduce_lr.cooldown_counter = r["wait"], _from_number(r["best"]), r["cooldown"]


class StopOnSignals:
    """Context manager: SIGTERM / SIGINT ask ``checkpointer`` to stop (main thread only)."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer = checkpointer
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, lambda signum, frame, n=name: self.checkpointer.request_stop(n))
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False
