"""The one output layer: where a command may write, and how everything it writes gets there.

* :func:`check_target` is the one check of an output path: it must not exist unless ``--force``;
  with ``--force`` it must be a trvae output of the same kind (a marker in what trvae writes), never
  an input, nor a folder holding an input, nor a place inside an input folder.
* :func:`claim` makes a run the one writer of an output (a lock beside it; a second run is told who
  holds it), cleans what a killed run left half-written, and checks that the folder is writable
  before any work starts.
* :func:`staged` writes a result under a hidden temporary name beside its destination (same folder,
  so the same file system) and renames it into place only when complete: a crash, a full disk or a
  signal leaves either the old output or the new one, never a half-written file. :func:`inside`
  refuses a relative path that would lead out of an output folder.

Model directories, predictions (``.h5ad``, PNG trees), reports (JSON, CSV), figures and checkpoints
all go through these.

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

import errno
import os
import shutil
import socket
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from .errors import TrvaeError

STAGING_TAG = ".trvae-"       # .<name>.trvae-<random>.partial / .old beside the destination
LOCK_SUFFIX = ".trvae-lock"


class OutputError(TrvaeError):
    """The output cannot be written (no space, read-only, permission): exit status 74 (EX_IOERR)."""

    exit_code = 74


def io_error(exc: OSError, what: str = "") -> OutputError:
    """One line for an OSError: the path, and the reason in words."""
    where = exc.filename or what or "output"
    reason = exc.strerror or str(exc)
    hint = " (free some space and run again)" if exc.errno == errno.ENOSPC else ""
    return OutputError(f"cannot write {where}: {reason}{hint}")


def _resolved(path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _within(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies below it."""
    return a == b or b in a.parents


def check_target(path: str | Path, force: bool, *, what: str = "output", inputs: Iterable = (),
                 containers: Iterable = (), marker: Callable[[Path], bool] | None = None,
                 suffix: str | None = None) -> Path:
    """``path`` as a Path, or a one-line error naming why it may not be written.

    ``inputs``: paths the run reads (data files and folders): the output may not be one, hold one
    or lie inside one. ``containers``: inputs the output may lie inside but not be or hold (a model
    directory holds its own predictions). ``marker(path)``: True when an existing ``path`` is a trvae
    output of this kind; with ``--force`` nothing else is replaced. ``suffix``: the file name's
    required ending (``.h5ad``: what an AnnData output is written as, whatever the name says).
    """
    path = Path(path)
    target = _resolved(path)
    for given in inputs:
        if given is None:
            continue
        src = _resolved(given)
        if _within(target, src) or _within(src, target):
            relation = "is" if target == src else ("lies inside" if _within(target, src) else "holds")
            raise TrvaeError(f"{what} {path} {relation} the input {given}: choose another --out")
    for given in containers:
        if given is None:
            continue
        src = _resolved(given)
        if _within(src, target):
            relation = "is" if target == src else "holds"
            raise TrvaeError(f"{what} {path} {relation} the input {given}: choose another --out")
    if path.exists() or path.is_symlink():
        if not force:
            raise TrvaeError(f"output exists: {path} (use --force to overwrite)")
        if marker is not None and not marker(path):
            kind = "folder" if path.is_dir() else "file"
            raise TrvaeError(f"{what} {path} is a {kind} that trvae did not write: --force replaces only "
                             "trvae's own outputs; choose another --out")
    if suffix and path.suffix.lower() != suffix:
        raise TrvaeError(f"{what} {path}: it is written as an {suffix} file; name it "
                         f"{path.with_suffix(suffix).name} or another *{suffix}")
    return path


def inside(root: Path, rel: str | Path) -> Path:
    """``root / rel``, refused in one line when ``rel`` would lead outside ``root``."""
    rel = Path(rel)
    full = _resolved(root / rel)
    if rel.is_absolute() or ".." in rel.parts or not _within(full, _resolved(root)):
        raise TrvaeError(f"refusing to write {rel}: it would lie outside {root}")
    return root / rel


def _apply_umask(path: Path) -> None:
    """mkdtemp makes folders 0700; a published output gets the user's usual permissions."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o777 & ~mask)


def stale_parts(final: Path) -> list[Path]:
    """What a killed run left beside ``final``: staging folders and files, old copies."""
    parent = final.parent
    if not parent.is_dir():
        return []
    prefix = f".{final.name}{STAGING_TAG}"
    return [p for p in parent.iterdir() if p.name.startswith(prefix) and p.name.endswith((".partial", ".old"))]


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


def check_space(folder: Path, need_bytes: int, what: str) -> None:
    """Refuse, before writing, an output that cannot fit (a full disk would leave the work half done)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if need_bytes > free:
        raise OutputError(f"not enough space for {what} in {folder}: about {need_bytes / 1e6:.1f} MB needed, "
                          f"{free / 1e6:.1f} MB free")


@contextmanager
def claim(final: str | Path, need_bytes: int = 0) -> Iterator[Path]:
    """Hold ``final`` for this run: a lock beside it (a second run is refused, naming the holder),
    its folder made and checked writable, the leftovers of a killed run removed."""
    import fcntl

    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        lock_path = final.parent / f".{final.name}{LOCK_SUFFIX}"
        fh = open(lock_path, "a+")
    except OSError as exc:
        raise OutputError(f"cannot write to {final.parent}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise TrvaeError(f"{final} is being written by another trvae run ({holder}); wait for it to end") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}")
        fh.flush()
        for leftover in stale_parts(final):
            _remove(leftover)
        try:
            probe = tempfile.NamedTemporaryFile(dir=final.parent, prefix=f".{final.name}{STAGING_TAG}",
                                                suffix=".partial")
            probe.close()
        except OSError as exc:
            raise OutputError(f"cannot write to {final.parent}: {exc.strerror or exc}") from None
        if need_bytes:
            check_space(final.parent, need_bytes, str(final))
        yield final
    finally:
        try:
            os.unlink(lock_path)
        except OSError:
            pass
        fh.close()


def publish(tmp: Path, final: Path) -> None:
    """Move a finished ``tmp`` into place, replacing ``final`` (a folder is swapped via a backup)."""
    if final.is_dir() and not final.is_symlink():
        backup = final.parent / f".{final.name}{STAGING_TAG}{os.getpid()}.old"
        _remove(backup)
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
    destination is left as it was; an OSError (no space, read-only) becomes one line.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{STAGING_TAG}", suffix=".partial", dir=final.parent))
        if directory:
            _apply_umask(tmp)
        else:
            tmp.rmdir()
    except OSError as exc:
        raise io_error(exc, str(final)) from None
    try:
        try:
            yield tmp
            if durable:
                _fsync_tree(tmp)
            publish(tmp, final)
        except OSError as exc:
            raise io_error(exc, str(final)) from None
    finally:
        _remove(tmp)


def write_files(writers: Mapping[Path, Callable[[Path], object]]) -> list[Path]:
    """Write every file or none: ``writers[path](tmp)`` writes each to its temporary, then all are
    renamed (a failure in any leaves every destination as it was)."""
    with ExitStack() as stack:
        for path, write in writers.items():
            write(stack.enter_context(staged(path)))
    return list(writers)


# -- markers: what trvae wrote ----------------------------------------------------------------

def is_model_dir(path: Path) -> bool:
    """A model directory (config.json of format trvae-model), or one an interrupted run left
    (nothing but a checkpoint)."""
    import json

    if not path.is_dir():
        return False
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("format") == "trvae-model"
        except (OSError, ValueError, AttributeError):
            return False
    entries = {p.name for p in path.iterdir()}
    return entries <= {"checkpoint"} and (path / "checkpoint" / "state.json").is_file()


def is_prediction_file(path: Path) -> bool:
    """An ``.h5ad`` that trvae transform wrote (it records ``uns/trvae``)."""
    import h5py

    try:
        if not path.is_file() or not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            return "uns" in f and "trvae" in f["uns"]
    except OSError:
        return False


def is_image_prediction(path: Path) -> bool:
    """A folder that trvae transform wrote for images (trvae.json beside transformed.npz)."""
    return path.is_dir() and (path / "trvae.json").is_file() and (path / "transformed.npz").is_file()


def is_plain_file(path: Path) -> bool:
    """Reports and figures: an existing file may be replaced, a folder never."""
    return path.is_file() or path.is_symlink()
