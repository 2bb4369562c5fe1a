"""One rich Console on stderr for human output; stdout stays for machine output."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def stderr_console():
    from rich.console import Console

    return Console(stderr=True)
