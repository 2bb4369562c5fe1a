"""The model under Keras' JAX and PyTorch backends (``KERAS_BACKEND=jax|torch``), on the CPU.

Each backend runs in its own process (Keras picks its backend once, at import), which
calls the CLI three times: two trainings with the same seed and a transform. A backend
that is not installed is skipped; ``pip install -e ".[test]"`` installs both.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from cli_helpers import dense
import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "perturbation.h5ad"
TRAIN = ["train", str(SAMPLE), "--condition-key", "condition", "--cell-type-key", "cell_type",
         "--exclude", "B:stimulated", "--hidden", "32", "--mmd-dim", "16", "--latent-dim", "4",
         "--batch-size", "64", "--epochs", "3", "--seed", "5", "--log-format", "json"]

CHILD = """
import json, sys
from trvae_cli.cli import main
for args in json.loads(sys.argv[1]):
    try:
        main(args=args, prog_name="trvae", standalone_mode=False)
    except SystemExit as stop:
        if stop.code:
            raise
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_trains_reproducibly_checkpoints_and_transforms(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    import anndata as ad

    a, b, pred_path = tmp_path / "a", tmp_path / "b", tmp_path / "pred.h5ad"
    calls = [[*TRAIN, "--out", str(a), "--checkpoint-every", "1"], [*TRAIN, "--out", str(b)],
             ["transform", "--model", str(a), "--from", "control", "--to", "stimulated", "--cell-type", "B",
              "--out", str(pred_path), "-q"],
             # eager steps (NumPy batches reach the model's call un-converted)
             [*TRAIN[:-6], "--epochs", "1", "--no-jit", "--out", str(tmp_path / "eager")]]
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(calls)], capture_output=True, text=True,
                          timeout=400, env={**os.environ, "KERAS_BACKEND": backend})
    assert proc.returncode == 0, proc.stderr[-3000:]

    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [e["epoch"] for e in events if e["event"] == "checkpoint"] == [1, 2, 3]
    config = json.loads((a / "config.json").read_text())
    assert config["versions"]["backend"] == backend
    if backend == "jax":   # the YNNPACK work-around reached XLA where this jaxlib needs it, and is recorded
        from importlib.metadata import version

        from trvae_cli.backend import xla_flags_for_jax

        expected = xla_flags_for_jax(version("jaxlib"), os.environ.get("XLA_FLAGS", ""))
        assert config["versions"].get("xla_flags", "") == expected
    assert (tmp_path / "eager" / "model.keras").exists()
    # same seed, same weights (this backend, CPU)
    assert config["result"]["weights_sha256"] == json.loads((b / "config.json").read_text())["result"]["weights_sha256"]
    losses = [float(row["loss"]) for row in csv.DictReader(open(a / "history.csv"))]
    assert len(losses) == 3 and np.isfinite(losses).all() and losses[-1] < losses[0]

    pred = ad.read_h5ad(pred_path)
    assert pred.n_obs > 0 and np.isfinite(dense(pred.X)).all()
    assert pred.uns["trvae"]["versions"]["backend"] == backend


def test_xla_flags_for_jax_adds_the_ynn_work_around_only_where_it_applies():
    from trvae_cli.backend import YNN_REDUCE_OFF, xla_flags_for_jax

    for affected in ("0.10.2", "0.11.0", "0.10.2rc1", "1.0"):
        assert xla_flags_for_jax(affected, "") == YNN_REDUCE_OFF
    assert xla_flags_for_jax("0.10.2", "--xla_force_host_platform_device_count=2") == (
        "--xla_force_host_platform_device_count=2 " + YNN_REDUCE_OFF)
    for unaffected in ("0.10.1", "0.4.38", "garbage", "", None):   # older jaxlibs reject unknown flags
        assert xla_flags_for_jax(unaffected, "--a=1") == "--a=1"
    mine = "--xla_cpu_experimental_ynn_fusion_type="   # the user's own choice stands
    assert xla_flags_for_jax("0.11.0", mine) == mine


POOL_CHILD = """
from trvae_cli.backend import keras_module
keras_module()
import tensorflow as tf
tf.ones((64, 64)) * 2.0
try:
    print(tf.config.experimental.get_memory_info("CPU:0")["peak"] > 0)
except ValueError:   # "Allocator stats not available": TensorFlow's default, non-pooling allocator
    print("default allocator")
"""


@pytest.mark.parametrize("given, expected", [(None, "True"), ("false", "default allocator")])
def test_tensorflow_pools_host_memory_unless_the_user_says_otherwise(given, expected):
    """keras_module() turns on TensorFlow's pooling CPU allocator before TensorFlow loads (each
    step's buffers are reused, not faulted in again), and leaves a user's own setting alone."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPU_ALLOCATOR_USE_BFC", "KERAS_BACKEND")}
    if given is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = given
    proc = subprocess.run([sys.executable, "-c", POOL_CHILD], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == expected


def test_jax_keeps_freed_memory_unless_the_user_tuned_malloc():
    """Under JAX, glibc keeps large freed blocks (mallopt), as TensorFlow's pool does; a user's own
    malloc settings, or a platform without glibc's mallopt, are left alone."""
    from trvae_cli.backend import keep_freed_memory

    assert keep_freed_memory({"MALLOC_MMAP_MAX_": "65536"}) is False
    assert keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) is False
    # the settings themselves, in a process of their own (they last for the process)
    code = "import sys; from trvae_cli.backend import keep_freed_memory; print(keep_freed_memory({}))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):   # no such name off glibc
        glibc = False
    expected = sys.platform.startswith("linux") and glibc
    assert proc.stdout.strip() == str(expected)
