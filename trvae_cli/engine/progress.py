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


def event_logger(progress: str) -> Callable[..., None]:
    """``log(event, **fields)``: a JSON line (json) or a short text line (text, rich) on stderr."""
    mode = resolve_progress(progress)

    def log(event: str, **fields) -> None:
        if mode == "json":
            print(json_line({"event": event, **fields}), file=sys.stderr, flush=True)
        elif mode in ("text", "rich") and event == "checkpoint":
            print(f"checkpoint after epoch {fields['epoch']}: {fields['path']}", file=sys.stderr, flush=True)
        elif mode in ("text", "rich") and event == "trained":
            print(fields["text"], file=sys.stderr, flush=True)

    return log


def progress_callback(progress: str, epochs: int, console=None, initial_epoch: int = 0):
    """The Keras callback that shows progress in ``progress`` mode (None for ``none``)."""
    mode = resolve_progress(progress)
    if mode == "rich":
        if console is None:
            from ..console import stderr_console

            console = stderr_console()
        return RichProgress(epochs, console, initial_epoch)
    if mode == "text":
        return PlainProgress(epochs)
    if mode == "json":
        return JsonProgress(epochs, initial_epoch)
    return None


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
