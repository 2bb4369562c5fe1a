"""The one output layer: every file or folder trvae writes goes through :func:`staged`.

A result is written under a hidden temporary name beside its destination (same folder, so
the same file system) and renamed into place only when it is complete: a crash, a full disk
or a signal leaves either the old output or the new one, never a half-written file, and the
temporary is removed on the way out. :func:`check_target` is the one check of where a
command may write. Model directories, predictions (``.h5ad``, PNG trees), reports (JSON, CSV),
figures and checkpoints all use these two.

Examples
--------
>>> from pathlib import Path
>>> import tempfile
>>> out = Path(tempfile.mkdtemp()) / "report.json"
>>> with staged(out) as tmp:
...     _ = tmp.write_text("{}")
>>> out.read_text()
'{}'
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

from .errors import TrvaeError

STAGING_SUFFIX = ".partial"


def check_target(path: str | Path, force: bool, what: str = "output") -> Path:
    """``path`` as a Path, or a one-line error when it exists and ``force`` is not given."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not force:
        raise TrvaeError(f"{what} exists: {path} (use --force to overwrite)")
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def publish(tmp: Path, final: Path) -> None:
    """Move a finished ``tmp`` into place, replacing ``final`` (a folder is swapped via a backup)."""
    if final.is_dir() and not final.is_symlink():
        backup = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        backup.rmdir()
        final.rename(backup)
        try:
            tmp.rename(final)
        except BaseException:
            backup.rename(final)
            raise
        _remove(backup)
    else:
        os.replace(tmp, final)


@contextmanager
def staged(final: str | Path, *, directory: bool = False, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``final`` into; publish it when the block ends normally.

    ``directory``: the temporary is an empty folder (else a file name, not yet created).
    ``durable``: fsync what was written before the rename (checkpoints: a power cut after the
    rename must not leave an empty file). On any exception the temporary is removed and the
    destination is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=STAGING_SUFFIX, dir=final.parent))
    if not directory:
        tmp.rmdir()
    try:
        yield tmp
        if durable:
            _fsync_tree(tmp)
        publish(tmp, final)
    finally:
        _remove(tmp)


def write_files(writers: Mapping[Path, Callable[[Path], object]]) -> list[Path]:
    """Write every file or none: ``writers[path](tmp)`` writes each to its temporary, then all are
    renamed (a failure in any leaves every destination as it was)."""
    with ExitStack() as stack:
        for path, write in writers.items():
            write(stack.enter_context(staged(path)))
    return list(writers)


def write_text(path: str | Path, text: str) -> Path:
    with staged(path) as tmp:
        tmp.write_text(text)
    return Path(path)
