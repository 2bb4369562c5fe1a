"""Data-parallel training: the replica split of a batch, and two real workers with TF_CONFIG."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_user_error, invoke
from trvae_cli.data.batching import replica_order

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "perturbation.h5ad"


@pytest.mark.parametrize("n, replicas", [(512, 2), (513, 2), (64, 4), (7, 3), (5, 1)])
def test_replica_order_gives_every_slice_its_share_of_each_condition(n, replicas):
    rng = np.random.default_rng(n)
    labels = np.sort(rng.integers(0, 3, n))             # a batch sorted by row, conditions in blocks
    order = replica_order(labels, replicas)
    assert sorted(order.tolist()) == list(range(n))      # a permutation
    # tf.distribute's split: contiguous slices, sizes differing by one, the larger first
    sizes = [len(a) for a in np.array_split(np.arange(n), replicas)]
    starts = np.cumsum([0, *sizes])
    for r in range(replicas):
        part = labels[order][starts[r]:starts[r + 1]]
        for k in np.unique(labels):
            expected = np.sum(labels == k) / replicas
            assert abs(np.sum(part == k) - expected) <= 1, (r, k)


def test_replica_order_is_the_identity_for_one_replica():
    labels = np.array([1, 0, 1, 0])
    np.testing.assert_array_equal(replica_order(labels, 1), np.arange(4))


def test_multiworker_without_a_cluster_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for name in ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    result = invoke("train", SAMPLE, "--condition-key", "condition", "--strategy", "multiworker",
                    "--epochs", "1", "--out", tmp_path / "m", "-q")
    assert_user_error(result, "TF_CONFIG", "srun")
    assert not (tmp_path / "m").exists()


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_train_one_epoch_and_end_with_identical_weights(tmp_path):
    """Two processes on 127.0.0.1, MultiWorkerMirroredStrategy from TF_CONFIG: gradients and
    BatchNorm statistics are all-reduced, so both end with the same weights; only the chief
    writes the model directory."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "trvae_cli.cli", "train", str(SAMPLE), "--condition-key", "condition",
               "--cell-type-key", "cell_type", "--exclude", "NK:stimulated", "--epochs", "1",
               "--hidden", "32", "--mmd-dim", "16", "--latent-dim", "4", "--batch-size", "64",
               "--strategy", "multiworker", "--threads", "1", "--log-format", "json",
               "--out", str(tmp_path / f"worker{index}")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two workers did not finish within 240 s")
        assert p.returncode == 0, err[-3000:]
        outputs.append((out, err))

    results = []
    for out, err in outputs:
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        results.append(next(e for e in events if e["event"] == "result"))
        assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1]
        assert next(e for e in events if e["event"] == "epoch")["mmd"] > 0   # each replica saw both conditions
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    assert [r["written"] for r in results] == [True, False]

    chief = tmp_path / "worker0"
    assert outputs[0][0].strip() == str(chief)
    assert outputs[1][0].strip() == "" and not (tmp_path / "worker1").exists()
    config = json.loads((chief / "config.json").read_text())
    assert config["distribution"] == {"strategy": "multiworker", "replicas": 2, "workers": 2}
    assert config["result"]["weights_sha256"] == results[0]["weights_sha256"]
    assert config["training"]["jit"] is False           # XLA cannot compile CPU collectives

    from trvae_cli.engine.fit import weights_digest
    from trvae_cli.model_dir import load_model

    _, model = load_model(chief)
    assert weights_digest(model) == results[0]["weights_sha256"]   # what was saved is what was trained
