"""Progress on stderr: a rich bar (terminal, notebook), a line per epoch (text) or JSON lines.

``auto`` picks the bar on a terminal or in a Jupyter kernel and JSON lines otherwise (batch logs).
This module does not import Keras (the run's phase events are logged while the data are still being
read and checked, before the backend loads); the epoch callbacks are in :mod:`.progress_callbacks`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Callable

import numpy as np


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
            print(json_event(event, **fields), file=sys.stderr, flush=True)
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


def format_terms(logs, keys, short=False):
    """``loss 1.23  reconstruction 0.0112 ...``: the terms of ``keys`` found in ``logs`` (short names if ``short``)."""
    parts = []
    for key in keys:
        if key in logs:
            name = _SHORT.get(key, key) if short else key
            parts.append(f"{name} {logs[key]:.4g}")
    return "  ".join(parts)


_SHORT = {"reconstruction": "rec", "val_loss": "val"}


TERMS = ("loss", "reconstruction", "kl", "mmd", "val_loss")


def json_line(record: dict) -> str:
    """One JSON object on one line; NaN and infinities become null (strict JSON)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (np.floating, np.integer)):
            return clean(v.item())
        return v

    return json.dumps({k: clean(v) for k, v in record.items()}, separators=(",", ":"))


def json_event(event: str, **fields) -> str:
    """A progress event as one JSON line: ``event``, ``time`` (Unix seconds) and ``fields``."""
    return json_line({"event": event, "time": round(time.time(), 3), **fields})
