"""Golden runs: the weights digest and the predictions of seeded tiny runs, pinned.

Written before the orchestration layer was redesigned, so that the redesign provably changed
no result: cells in memory (counterfactual, mean and sample decodings; scGen's latent
arithmetic), cells read backed, and images (mean and counterfactual). Each digest is the
SHA-256 of float32 bytes.

Bit-for-bit equality is a property of one machine: another CPU's vector units (or another
TensorFlow / NumPy build) round differently, and two epochs of training carry that into every
weight. So the digests in ``golden.json`` are checked only where the recorded platform matches;
elsewhere the test skips and says why. ``TRVAE_WRITE_GOLDEN=1 pytest tests/test_golden.py``
records them anew for this machine (do that only on a commit whose results are known right).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_ok, invoke, write_bar_images

GOLDEN = Path(__file__).with_name("golden.json")
TINY = ["--epochs", "2", "--hidden", "16", "--mmd-dim", "8", "--latent-dim", "4", "--batch-size", "64", "-q",
        "--no-jit", "--seed", "3"]
IMAGE_TINY = ["--filters", "8,16", "--mmd-dim", "16", "--latent-dim", "4", "--batch-size", "16", "--no-jit", "-q",
              "--epochs", "2", "--seed", "3"]


def _fingerprint() -> dict:
    from importlib.metadata import version

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                model += line.split(":", 1)[1].strip() + "\n"
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu_sha256": hashlib.sha256(model.encode()).hexdigest()[:16],
        "tensorflow": version("tensorflow"), "keras": version("keras"), "numpy": version("numpy"),
    }


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a.toarray() if hasattr(a, "toarray") else a, dtype=np.float32)
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _weights(model_dir: Path) -> str:
    return json.loads((model_dir / "config.json").read_text())["result"]["weights_sha256"]


def _pred(path: Path) -> str:
    import anndata as ad

    pred = ad.read_h5ad(path)
    return _digest(pred.X, pred.obsm["X_trvae"])


@pytest.fixture(scope="module")
def golden_runs(tiny_h5ad, tmp_path_factory):
    """Every pinned figure of this machine, computed once."""
    root = tmp_path_factory.mktemp("golden")
    got = {}
    common = ["--condition", "condition", "--cell-type-key", "cell_type", "--exclude", "NK:stimulated"]
    for kind, extra in (("cells", []), ("backed", ["--backed"]), ("scgen", ["--preset", "scgen"])):
        model = root / kind
        train_extra = extra + (["--hidden", "16", "--mmd-dim", "8", "--latent-dim", "4"] if kind == "scgen" else [])
        assert_ok(invoke("train", tiny_h5ad, *common, "--out", model, *TINY, *train_extra))
        got[f"{kind}/weights"] = _weights(model)
        decodes = {"cells": ["counterfactual", "mean", "sample"], "backed": ["counterfactual"],
                   "scgen": ["mean"]}[kind]
        for decode in decodes:
            out = root / f"{kind}_{decode}.h5ad"
            args = ["--backed"] if kind == "backed" else []
            assert_ok(invoke("transform", "--model", model, "--data", tiny_h5ad, "--from", "control", "--to",
                             "stimulated", "--cell-type", "NK", "--decode", decode, "--seed", "5", "--out", out,
                             "-q", *args))
            got[f"{kind}/{decode}"] = _pred(out)

    images = write_bar_images(root / "images", 10)
    model = root / "image_model"
    assert_ok(invoke("train", images, "--exclude", "b:bold", "--out", model, *IMAGE_TINY))
    got["images/weights"] = _weights(model)
    for decode in ("mean", "counterfactual"):
        out = root / f"images_{decode}"
        assert_ok(invoke("transform", "--model", model, "--data", images, "--from", "plain", "--to", "bold",
                         "--domain", "b", "--decode", decode, "--out", out, "-q"))
        with np.load(out / "transformed.npz") as z:
            got[f"images/{decode}"] = _digest(z["images"])
    return got


def test_golden_digests(golden_runs):
    here = _fingerprint()
    if os.environ.get("TRVAE_WRITE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"platform": here, "digests": golden_runs}, indent=2, sort_keys=True) + "\n")
    recorded = json.loads(GOLDEN.read_text())
    if recorded["platform"] != here:
        pytest.skip(f"golden digests were recorded on another platform ({recorded['platform']}; this is {here}): "
                    "bit-for-bit results hold on one machine only")
    assert golden_runs == recorded["digests"]
