"""Batch-job behaviour: checkpoints, --resume equal to an uninterrupted run, SIGTERM, JSON-lines logs."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_ok, assert_user_error, invoke, dense

ARGS = ["--condition", "condition", "--cell-type-key", "cell_type", "--exclude", "NK:stimulated",
        "--hidden", "16", "--mmd-dim", "8", "--latent-dim", "4", "--batch-size", "64", "--dropout", "0.1",
        "--lr-patience", "2", "--early-stopping-patience", "50", "--seed", "3",
        "--no-jit"]   # XLA compile time would dominate these tiny runs; resuming does not depend on it


def _weights(model_dir):
    from trvae_cli.model_dir import load_model

    _, model = load_model(model_dir)
    return [np.asarray(w) for w in model.get_weights()]


def _assert_same_model(a, b):
    for wa, wb in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)
    ha = (Path(a) / "history.csv").read_text().splitlines()
    hb = (Path(b) / "history.csv").read_text().splitlines()
    strip = lambda lines: [",".join(c for i, c in enumerate(l.split(",")) if i not in drop) for l in lines]  # noqa: E731
    header = ha[0].split(",")
    drop = {header.index("seconds")}
    assert strip(ha) == strip(hb)                       # every loss of every epoch, seconds aside


@pytest.mark.parametrize("mode", [(), ("--backed",)], ids=["memory", "backed"])
def test_checkpoint_then_resume_equals_the_uninterrupted_run(tiny_h5ad, tmp_path, mode):
    from trvae_cli.engine.checkpoint import read_checkpoint

    uninterrupted = tmp_path / "full"
    assert_ok(invoke("train", tiny_h5ad, *ARGS, *mode, "--epochs", "4", "--out", uninterrupted, "-q"))

    out = tmp_path / "m"
    # a real SIGTERM through the real handler, sent by the process to itself right after epoch 2
    # (deterministic, unlike racing a fast epoch from outside)
    child = ("import os, signal, sys\n"
             "from trvae_cli.engine import checkpoint as C\n"
             "orig = C.Checkpointer.on_epoch_end\n"
             "def hook(self, epoch, logs=None):\n"
             "    orig(self, epoch, logs)\n"
             "    if epoch + 1 == 2:\n"
             "        os.kill(os.getpid(), signal.SIGTERM)\n"
             "C.Checkpointer.on_epoch_end = hook\n"
             "from trvae_cli.cli import main\n"
             "main(args=sys.argv[1:], prog_name='trvae')\n")
    cmd = [sys.executable, "-c", child, "train", str(tiny_h5ad), *ARGS, *mode, "--epochs", "4",
           "--out", str(out), "--checkpoint-every", "1", "--log-format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    rest = proc.stderr
    assert proc.returncode == 75, rest
    lines = [json.loads(l) for l in rest.splitlines() if l.startswith("{")]
    stop = next(e for e in lines if e["event"] == "interrupted")
    assert stop["signal"] == "SIGTERM" and stop["epochs_done"] == 2
    assert [e["epoch"] for e in lines if e["event"] == "checkpoint"][:2] == [1, 2]
    assert "error: SIGTERM: stopped after epoch" in rest and "--resume" in rest
    assert not (out / "model.keras").exists()           # no half-finished model
    ckpt = read_checkpoint(out)
    assert ckpt["state"]["epochs_done"] == stop["epochs_done"] < 4

    resumed = invoke("train", tiny_h5ad, *ARGS, *mode, "--epochs", "4", "--out", out, "--resume", "-q")
    assert_ok(resumed)
    _assert_same_model(out, uninterrupted)
    assert not (out / "checkpoint").exists()           # the finished directory does not keep it
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["result"]["epochs_run"] == 4 and "--resume" not in cfg["command"]


def test_resume_refuses_other_settings_and_missing_checkpoints(tiny_h5ad, tmp_path):
    out = tmp_path / "m"
    assert_user_error(invoke("train", tiny_h5ad, *ARGS, "--epochs", "2", "--out", out, "--resume", "-q"),
                      "no checkpoint")
    # leave a checkpoint behind as a killed run would, then resume with another seed
    from trvae_cli.engine.checkpoint import checkpoint_path

    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "trvae_cli.cli", "train", str(tiny_h5ad), *ARGS,
                             "--epochs", "50", "--out", str(tmp_path / "k"), "--checkpoint-every", "1", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not (checkpoint_path(tmp_path / "k") / "state.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()                                          # SIGKILL: no chance to clean up
    proc.wait()
    other = [a if a != "3" else "4" for a in ARGS]
    assert_user_error(invoke("train", tiny_h5ad, *other, "--epochs", "50", "--out", tmp_path / "k", "--resume", "-q"),
                      "other settings", "seed")


def test_json_log_lines_and_threads(tiny_h5ad, tmp_path):
    result = invoke("train", tiny_h5ad, *ARGS, "--epochs", "3", "--out", tmp_path / "m", "--log-format", "json",
                    "--threads", "1")
    assert_ok(result)
    events = [json.loads(l) for l in result.stderr.splitlines() if l.startswith("{")]
    assert [e["event"] for e in events] == ["phase", "phase", "phase", "start", "epoch", "epoch", "epoch", "end",
                                            "phase", "result"]
    assert [e["phase"] for e in events if e["event"] == "phase"] == ["reading", "building", "training", "saving"]
    events = [e for e in events if e["event"] != "phase"]
    start, end = events[0], events[4]
    assert (start["cells"], start["genes"], start["conditions"]) == (1206, 40, ["control", "stimulated", "inhibited"])
    assert start["held_out"] == ["NK:stimulated"] and start["n_train"] + start["n_validation"] + start[
        "cells_excluded"] == 1206
    assert end["epochs_run"] == 3 and end["epochs"] == 3 and end["text"].startswith("trained 3 of 3")
    assert {"best_epoch", "stopped_early", "best", "monitor"} <= set(end)
    assert [e["epoch"] for e in events[1:4]] == [1, 2, 3]
    assert events[1]["eta_seconds"] > 0 and events[3]["eta_seconds"] == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert events[-1]["weights_sha256"] == config["result"]["weights_sha256"] and events[-1]["written"] is True
    assert all({"loss", "val_loss", "kl", "mmd", "seconds", "learning_rate", "time"} <= set(e) for e in events[1:4])
    assert "--threads 1" in json.loads((tmp_path / "m" / "config.json").read_text())["command"]


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_and_transforms(tiny_h5ad, tmp_path, precision):
    import anndata as ad

    out = tmp_path / "m"
    assert_ok(invoke("train", tiny_h5ad, *ARGS, "--epochs", "1", "--out", out, "--precision", precision, "-q"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["precision"] == precision
    import csv

    rows = list(csv.DictReader(open(out / "history.csv")))
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    from trvae_cli.model_dir import load_model

    _, model = load_model(out)
    assert model.encoder.layers[-1].dtype_policy.compute_dtype in ("bfloat16", "float16")
    assert all(w.dtype == "float32" for w in model.weights if "kernel" in w.path)   # weights stay float32
    pred = tmp_path / "p.h5ad"
    assert_ok(invoke("transform", "--model", out, "--from", "control", "--to", "stimulated", "--cell-type", "NK",
                     "--out", pred, "-q"))
    assert np.isfinite(dense(ad.read_h5ad(pred).X)).all()


def test_variable_copies_hold_the_values_of_their_last_take():
    from trvae_cli.backend import keras_module
    from trvae_cli.engine.checkpoint import VariableCopies

    keras = keras_module()
    variables = [keras.Variable(np.arange(6, dtype=np.float32).reshape(2, 3)), keras.Variable(np.float32(2.0))]
    copies = VariableCopies()
    copies.take(variables)
    variables[0].assign(np.zeros((2, 3), np.float32))         # training goes on after the snapshot
    variables[1].assign(np.float32(-1.0))
    first = copies.arrays()
    np.testing.assert_array_equal(first[0], np.arange(6).reshape(2, 3))
    assert first[1] == 2.0
    copies.take(variables)                                      # the next epoch end
    np.testing.assert_array_equal(copies.arrays()[0], np.zeros((2, 3)))
    assert copies.arrays()[1] == -1.0
    first[0][0, 0] = 99.0                                       # the arrays given out are copies
    assert copies.arrays()[0][0, 0] == 0.0


def test_resume_refuses_a_checkpoint_of_another_batch_scheme():
    """A checkpoint from before the even batches (no ``sampler_scheme``) would resume with other batches."""
    from trvae_cli.data.batching import SAMPLER_SCHEME
    from trvae_cli.engine.checkpoint import check_same_run
    from trvae_cli.errors import TrvaeError

    current = {"settings": {"seed": 3, "batch_size": 64}, "n_train": 100, "sampler_scheme": SAMPLER_SCHEME}
    check_same_run(json.loads(json.dumps(current)), current)          # the same run resumes
    old = {k: v for k, v in current.items() if k != "sampler_scheme"}
    for saved in (old, {**current, "sampler_scheme": SAMPLER_SCHEME - 1}):
        with pytest.raises(TrvaeError, match="drew its batches differently"):
            check_same_run(saved, current)
