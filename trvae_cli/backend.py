"""Importing Keras quietly, seeding, and recording versions.

TensorFlow is heavy and chatty: nothing imports it at module level. The commands
that need the model call :func:`keras_module`, which silences TensorFlow's C++
log noise first (unless the user set ``TF_CPP_MIN_LOG_LEVEL`` themselves).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import platform
import re
import sys
from contextlib import contextmanager, nullcontext


@contextmanager
def _silenced_stderr_fd():
    """Send C-level stderr to /dev/null (TensorFlow's absl logs ignore TF_CPP_MIN_LOG_LEVEL
    before absl is initialised). Python exceptions are unaffected."""
    fd = 2
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):
        pass
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def limit_threads(threads: int) -> None:
    """Cap CPU threads: environment variables for the native libraries (effective when set
    before they load), and the backend's own setting where it is already importable."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(threads)


def _apply_backend_threads(keras, threads: int) -> None:
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        elif backend == "torch":
            import torch

            torch.set_num_threads(threads)
    except RuntimeError:   # the runtime was already initialised in this process: the env vars still apply
        pass


#: Packages that TensorFlow and Keras import at their own import when installed, for features trvae
#: never uses: scikit-learn (Keras' scikit-learn wrappers), IPython (notebook display of saved
#: files), matplotlib (Keras' image-gallery plots) and JAX (TensorFlow Lite's JAX converter). Each
#: of those imports is guarded by ``except ImportError`` in the library. Together they cost 2.5-3.5 s
#: of the ~8 s that importing Keras takes on 2 cores (measured with ``python -X importtime``).
OPTIONAL_IMPORTS = frozenset({"sklearn", "IPython", "matplotlib", "jax", "jaxlib"})

#: Set by the ``trvae`` command (:func:`trvae_cli.cli.console`): a process of its own, where Keras may
#: be imported without its optional integrations. A notebook that imports the library keeps them.
lean_imports = False


class _SkipOptional(importlib.abc.MetaPathFinder):
    """While Keras is imported, reports ``skipped`` packages that are not loaded yet as missing."""

    def __init__(self, skipped: frozenset):
        self.skipped = skipped

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.skipped:
            raise ModuleNotFoundError(f"{name} is not loaded while trvae imports Keras", name=name)
        return None


@contextmanager
def _without_optional_imports():
    """Keras' optional integrations left out of this import (only where :data:`lean_imports`); the
    packages themselves import normally afterwards (trvae's plots import matplotlib on their own)."""
    if not lean_imports:
        yield
        return
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    finder = _SkipOptional(OPTIONAL_IMPORTS - ({"jax", "jaxlib"} if backend == "jax" else set()))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def exit_now(code: int) -> None:
    """End the ``trvae`` process with ``code`` once a command has finished and its outputs are
    in place. Where a backend was imported, Python's shutdown would spend ~2 s tearing down
    TensorFlow's modules and native state after the work is done (measured on Kang: 2.2 s between
    the command's return and the process' exit, 0.1 s this way), so the streams are flushed and the
    ``atexit`` handlers run here, then the process ends. Every file trvae writes is complete and
    renamed into place before its command returns."""
    if not any(m in sys.modules for m in ("tensorflow", "torch", "jax")):
        raise SystemExit(code)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)


#: XLA:CPU flag that keeps reductions out of YNNPACK fusions. jaxlib 0.10.2 and 0.11.0 crash (SIGSEGV in
#: ``YnnFusionThunk``/slinky, jax-ml/jax#39257 and #40412) executing some of them; trvae's training
#: step on Kang (6,998 genes, batches of 448) is one: the first step died under ``KERAS_BACKEND=jax``
#: at the default batch size, and ran with this flag (same loss curve; ``benchmarks/README.md``,
#: fourteenth session). The flag exists from the YNNPACK-enabled jaxlib 0.10.2 on; older jaxlibs
#: would reject an unknown flag, so it is set only there.
YNN_REDUCE_OFF = "--xla_cpu_experimental_ynn_fusion_type=-reduce"


def xla_flags_for_jax(jaxlib_version: str | None, flags: str) -> str:
    """``XLA_FLAGS`` to run trvae under JAX with: ``flags`` (the user's) plus :data:`YNN_REDUCE_OFF`
    where the installed jaxlib has YNNPACK fusions, unless the user set the YNN fusion types
    themselves."""
    if not jaxlib_version or "xla_cpu_experimental_ynn_fusion_type" in flags:
        return flags
    release = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", jaxlib_version)
    if release is None or tuple(int(n or 0) for n in release.groups()) < (0, 10, 2):
        return flags
    return f"{flags} {YNN_REDUCE_OFF}".strip()


#: ``mallopt`` parameters of glibc (``malloc.h``): the most blocks served by ``mmap``, and the free
#: space at the top of the heap above which ``free`` gives memory back to the system.
M_MMAP_MAX, M_TRIM_THRESHOLD = -4, -1
#: Environment variables by which a user tunes glibc's malloc; any of them set, trvae leaves it alone.
MALLOC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory(environ=os.environ) -> bool:
    """Under JAX on the CPU, what :data:`CPU_POOL` does for TensorFlow: glibc serves large blocks from
    its heap and keeps them when freed, so XLA's per-step buffers are not faulted in and zeroed by
    the kernel again at every step (the Kang step under ``KERAS_BACKEND=jax``: 57-61 ms, 30 % of
    it in the kernel under ``perf``; 41-48 ms this way; ``benchmarks/README.md``, sixteenth
    session). Nothing happens off Linux, without glibc's ``mallopt``, or where the user set one of
    :data:`MALLOC_VARIABLES`. Returns whether both settings took."""
    if not sys.platform.startswith("linux") or any(name in environ for name in MALLOC_VARIABLES):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    no_mmap, no_trim = mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, 2**31 - 1)   # both, always
    return bool(no_mmap and no_trim)


#: TensorFlow's pooling (BFC) allocator for host memory, set before TensorFlow loads unless the user
#: set the variable. TensorFlow's default CPU allocator hands each step's large buffers back to the
#: system and takes fresh ones the next step; every page of them is then faulted in and zeroed by
#: the kernel again. On a 2-core AVX2 machine (``benchmarks/README.md``, sixteenth session) that was
#: 27 % of the default Kang training step's CPU time under ``perf`` and the step took 54-72 ms; with
#: the pool 38-43 ms, the same numbers out. ``TF_CPU_ALLOCATOR_USE_BFC=false`` restores the default.
CPU_POOL = ("TF_CPU_ALLOCATOR_USE_BFC", "true")


def _prepare_tensorflow() -> None:
    """Before TensorFlow loads (it reads the variable when it makes its CPU allocator): host memory
    pooled (:data:`CPU_POOL`), unless the user chose."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault(*CPU_POOL)


def _prepare_jax() -> None:
    """Before JAX loads (its XLA client reads ``XLA_FLAGS`` once): the YNNPACK work-around, and
    freed memory kept (:func:`keep_freed_memory`)."""
    if "jax" in sys.modules or "jaxlib" in sys.modules:
        return
    keep_freed_memory()
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("jaxlib")
    except PackageNotFoundError:
        return
    os.environ["XLA_FLAGS"] = xla_flags_for_jax(installed, os.environ.get("XLA_FLAGS", ""))


def keras_module(threads: int | None = None):
    """Import Keras (TensorFlow backend unless KERAS_BACKEND says otherwise), quietly.

    ``threads`` caps the backend's CPU threads (only fully effective on first import). Before
    TensorFlow first loads, host memory pooling is switched on (:data:`CPU_POOL`).
    """
    if threads is not None:
        limit_threads(threads)
    if "keras" in sys.modules:
        keras = sys.modules["keras"]
        if threads is not None:
            _apply_backend_threads(keras, threads)
        return keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if os.environ["KERAS_BACKEND"] == "jax":
        _prepare_jax()
    else:
        _prepare_tensorflow()
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3"
    with _silenced_stderr_fd() if quiet else nullcontext(), _without_optional_imports():
        import keras

        if threads is not None:
            _apply_backend_threads(keras, threads)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe logs here; keep it quiet
        elif importlib.util.find_spec("tensorflow") is not None:
            import tensorflow  # noqa: F401  Keras' data adapters import it under every backend: quietly, here

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
    return keras


def seed_everything(seed: int) -> None:
    """Python, NumPy and backend seeds (all the randomness of training flows from these)."""
    keras = keras_module()
    keras.utils.set_random_seed(int(seed))


def versions() -> dict:
    from importlib.metadata import version

    import numpy

    from . import __version__

    keras = keras_module()
    backend = keras.backend.backend()
    backend_version = None
    try:
        mod = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
        if mod:
            backend_version = str(__import__(mod).__version__)
    except Exception:  # pragma: no cover
        pass
    return {
        "trvae": __version__,
        "keras": keras.__version__,
        "backend": backend,
        "backend_version": backend_version,
        "numpy": numpy.__version__,
        "anndata": version("anndata"),
        "python": platform.python_version(),
        **({"xla_flags": os.environ["XLA_FLAGS"]} if os.environ.get("XLA_FLAGS") else {}),
    }
