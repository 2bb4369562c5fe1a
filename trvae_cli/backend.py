"""Importing Keras quietly, seeding, and recording versions.

TensorFlow is heavy and chatty: nothing imports it at module level. The commands
that need the model call :func:`keras_module`, which silences TensorFlow's C++
log noise first (unless the user set ``TF_CPP_MIN_LOG_LEVEL`` themselves).
"""

from __future__ import annotations

import importlib.util
import os
import platform
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


def keras_module(threads: int | None = None):
    """Import Keras (TensorFlow backend unless KERAS_BACKEND says otherwise), quietly.

    ``threads`` caps the backend's CPU threads (only fully effective on first import).
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
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3"
    with _silenced_stderr_fd() if quiet else nullcontext():
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
    }
