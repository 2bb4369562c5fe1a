"""SIGTERM and SIGINT during a run: recorded, then acted on where the run can stop cleanly.

A batch scheduler stops a job with SIGTERM (Slurm's ``--signal``, pre-emption) and a user with
Ctrl-C. The default action would kill the process wherever it is -- mid-save included. Inside
:class:`Signals` a signal only sets :attr:`Signals.received`; the phases poll it: before training a
run stops with nothing written, during training the checkpointer writes the last finished epoch
(exit 75, ``--resume`` continues), and a save that has begun is finished first.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

from ..errors import Interrupted

SIGNALS = ("SIGTERM", "SIGINT")


class Signals:
    """Context manager recording SIGTERM / SIGINT (main thread only; ``enabled=False`` keeps the
    default actions, as a multi-worker run needs: one worker cannot stop alone)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.received: str | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._previous: dict = {}

    def __enter__(self) -> "Signals":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for name in SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, lambda signum, frame, n=name: self._receive(n))
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def _receive(self, name: str) -> None:
        if self.received is None:
            self.received = name
        for listener in self._listeners:
            listener(name)

    def listen(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(name)`` on every signal from now on (and at once if one came already)."""
        self._listeners.append(listener)
        if self.received is not None:
            listener(self.received)

    def check(self, phase: str) -> None:
        """Stop with exit 75 if a signal came: ``phase`` says where (nothing was written yet)."""
        if self.received is not None:
            raise Interrupted(f"{self.received}: stopped {phase}; nothing was written: run the same command again")
