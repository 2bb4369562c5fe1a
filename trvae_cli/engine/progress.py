"""Progress on stderr: a rich bar (terminal, notebook), a line per epoch (text) or JSON lines.

``auto`` picks the bar on a terminal or in a Jupyter kernel and JSON lines otherwise (batch logs).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Callable

import numpy as np
from ..backend import keras_module

keras = keras_module()   # quietly: TensorFlow logs nothing before it is configured


def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) session, where stderr is not a terminal but shows a bar."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:  # pragma: no cover
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def resolve_progress(progress: str) -> str:
    """``auto`` -> ``rich`` (terminal or notebook) or ``json``; ``plain`` -> ``text``."""
    if progress == "plain":
        return "text"
    if progress == "auto":
        return "rich" if sys.stderr.isatty() or in_notebook() else "json"
    return progress


PHASES = {
    "reading": "reading {data}",
    "building": "building the model ({parameters:,} weights)",
    "compiling": "compiling the training step (XLA) and training",
    "training": "training",
    "saving": "saving the model to {out}",
}


def phase_text(phase: str, **fields) -> str:
    """The line a text log shows when a phase begins."""
    try:
        return PHASES[phase].format(**fields)
    except (KeyError, ValueError):
        return phase


def event_logger(progress: str) -> Callable[..., None]:
    """``log(event, **fields)``: a JSON line (json, with ``time``) or a short text line (text, rich) on stderr.

    Events: ``phase`` (reading, building, compiling or training, saving), ``checkpoint``,
    ``interrupted``, ``end`` (what training did: its ``text`` and fields) and ``result``; the
    progress callback adds ``start`` and one ``epoch`` per epoch.
    """
    mode = resolve_progress(progress)

    def log(event: str, **fields) -> None:
        if mode == "json":
            print(json_line({"event": event, "time": round(time.time(), 3), **fields}), file=sys.stderr, flush=True)
        elif mode not in ("text", "rich"):
            return
        elif event == "checkpoint":
            print(f"checkpoint after epoch {fields['epoch']}: {fields['path']}", file=sys.stderr, flush=True)
        elif event == "phase":
            print(phase_text(**fields), file=sys.stderr, flush=True)
        elif event == "end":
            print(fields["text"], file=sys.stderr, flush=True)

    return log


def eta_seconds(epoch_seconds: list[float], done: int, total: int) -> float | None:
    """Seconds the remaining ``total - done`` epochs take at most (early stopping may end sooner): the
    median epoch so far, leaving out the first (it includes compiling) once there are others."""
    if not epoch_seconds or done >= total:
        return None if not epoch_seconds else 0.0
    times = epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds
    return float(np.median(times)) * (total - done)


def duration(seconds: float | None) -> str:
    """``1:05:03``, ``4:10`` or ``12s``."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else (f"{m}:{sec:02d}" if m else f"{sec}s")


def progress_callback(progress: str, epochs: int, console=None, initial_epoch: int = 0, info: dict | None = None,
                      compiling: bool = False):
    """The Keras callback that shows progress in ``progress`` mode (None for ``none``).

    ``info``: what the ``start`` event says about the run (items, genes, conditions, held out);
    ``compiling``: the first epoch compiles the step (XLA), which the bar says until it ends.
    """
    mode = resolve_progress(progress)
    if mode == "rich":
        if console is None:
            from ..console import stderr_console

            console = stderr_console()
        return RichProgress(epochs, console, initial_epoch, compiling=compiling)
    if mode == "text":
        return PlainProgress(epochs, initial_epoch=initial_epoch)
    if mode == "json":
        return JsonProgress(epochs, initial_epoch, info=info)
    return None


class _Timed(keras.callbacks.Callback):
    """Keeps each epoch's seconds for the ETA."""

    def __init__(self, epochs: int, initial_epoch: int = 0):
        super().__init__()
        self.epochs, self.initial_epoch = epochs, initial_epoch
        self.times: list[float] = []

    def _eta(self, epoch: int, logs) -> float | None:
        if "seconds" in (logs or {}):
            self.times.append(float(logs["seconds"]))
        return eta_seconds(self.times, epoch + 1, self.epochs)


def _fmt(logs, keys, short=False):
    parts = []
    for key in keys:
        if key in logs:
            name = _SHORT.get(key, key) if short else key
            parts.append(f"{name} {logs[key]:.4g}")
    return "  ".join(parts)


_SHORT = {"reconstruction": "rec", "val_loss": "val"}


_TERMS = ("loss", "reconstruction", "kl", "mmd", "val_loss")


class PlainProgress(_Timed):
    """One line per epoch on stderr, for batch jobs and logs, with the time left at most."""

    def __init__(self, epochs, stream=None, initial_epoch=0):
        super().__init__(epochs, initial_epoch)
        self.stream = stream or sys.stderr

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        width = len(str(self.epochs))
        eta = self._eta(epoch, logs)
        line = f"epoch {epoch + 1:>{width}}/{self.epochs}  {_fmt(logs, _TERMS)}"
        if "seconds" in logs:
            line += f"  ({logs['seconds']:.2f}s"
            line += f", at most {duration(eta)} left)" if eta else ")"
        print(line, file=self.stream, flush=True)


class RichProgress(_Timed):
    """A rich progress bar over epochs: elapsed, the time left at most, the loss terms; until the first
    epoch ends it says that the step is compiling."""

    def __init__(self, epochs, console, initial_epoch=0, compiling=False):
        super().__init__(epochs, initial_epoch)
        self.console = console
        self.compiling = compiling

    def on_train_begin(self, logs=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]epoch"), MofNCompleteColumn(), BarColumn(bar_width=16), TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[terms]}"), console=self.console,
            transient=False,
        )
        self.progress.start()
        first = "compiling (XLA) and running the first epoch..." if self.compiling else "first epoch..."
        self.task = self.progress.add_task("train", total=self.epochs, completed=self.initial_epoch, terms=first,
                                           eta="")

    def on_epoch_end(self, epoch, logs=None):
        eta = self._eta(epoch, logs)
        self.progress.update(self.task, completed=epoch + 1, terms=_fmt(logs or {}, _TERMS, short=True),
                             eta=f"≤ {duration(eta)} left" if eta else "")

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


class JsonProgress(_Timed):
    """JSON lines on stderr for batch jobs: a ``start`` event (epochs, and what ``info`` says: items,
    genes, conditions, held out) and one ``epoch`` event per epoch (the ``end`` event, with what
    training did, comes from the engine once it knows).

    Every line is an object with ``event`` and ``time`` (Unix seconds); epoch events carry
    the epoch (1-based), the total, every loss term, ``seconds``, ``learning_rate`` and
    ``eta_seconds`` (the remaining epochs at the median epoch time: early stopping may end sooner).
    """

    def __init__(self, epochs, initial_epoch=0, stream=None, info=None):
        super().__init__(epochs, initial_epoch)
        self.stream = stream or sys.stderr
        self.info = dict(info or {})

    def _emit(self, event, **fields):
        print(json_line({"event": event, "time": round(time.time(), 3), **fields}), file=self.stream, flush=True)

    def on_train_begin(self, logs=None):
        self._emit("start", epochs=self.epochs, initial_epoch=self.initial_epoch, **self.info)

    def on_epoch_end(self, epoch, logs=None):
        eta = self._eta(epoch, logs)
        self._emit("epoch", epoch=epoch + 1, epochs=self.epochs,
                   **{k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0},
                   eta_seconds=round(eta, 1) if eta is not None else None)
