"""The Keras callbacks that show training's progress (:mod:`.progress` has the formats and events)."""

from __future__ import annotations

import sys

import numpy as np

from ..backend import keras_module
from .progress import TERMS, duration, eta_seconds, format_terms, json_event, resolve_progress

keras = keras_module()   # quietly: TensorFlow logs nothing before it is configured


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


class PlainProgress(_Timed):
    """One line per epoch on stderr, for batch jobs and logs, with the time left at most."""

    def __init__(self, epochs, stream=None, initial_epoch=0):
        super().__init__(epochs, initial_epoch)
        self.stream = stream or sys.stderr

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        width = len(str(self.epochs))
        eta = self._eta(epoch, logs)
        line = f"epoch {epoch + 1:>{width}}/{self.epochs}  {format_terms(logs, TERMS)}"
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
        self.progress.update(self.task, completed=epoch + 1, terms=format_terms(logs or {}, TERMS, short=True),
                             eta=f"≤ {duration(eta)} left" if eta else "")

    def on_train_end(self, logs=None):
        self.progress.stop()


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
        print(json_event(event, **fields), file=self.stream, flush=True)

    def on_train_begin(self, logs=None):
        self._emit("start", epochs=self.epochs, initial_epoch=self.initial_epoch, **self.info)

    def on_epoch_end(self, epoch, logs=None):
        eta = self._eta(epoch, logs)
        self._emit("epoch", epoch=epoch + 1, epochs=self.epochs,
                   **{k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0},
                   eta_seconds=round(eta, 1) if eta is not None else None)
