"""Training and transform throughput, peak memory and achieved FLOP/s, in memory vs backed.

    python benchmarks/throughput.py                          # N = 1e4, 1e5, 1e6; memory and backed
    python benchmarks/throughput.py --cells 10000,100000 --modes backed --epochs 2

For each N it writes (once, reused afterwards) a synthetic ``.h5ad`` of N cells x 2,000 genes
with ``make_large.py`` into ``--work-dir``, then, for each mode, runs one fresh Python process
that trains the default model (``trvae_cli.api.train``; validation off, early stopping off)
for ``--epochs`` epochs and transforms the control cells of one cell type (1/16 of N). The
process reports:

* train cells/s: training cells / seconds of the last epoch (the first also compiles);
* transform cells/s;
* peak RSS of the process (``ru_maxrss``), which includes Python, TensorFlow and the data;
* achieved FLOP/s of training: cells/s x FLOPs per cell, where FLOPs per cell are
  3 x 2 x (sum of in x out over every dense kernel) -- forward 2·in·out per layer, backward
  twice that -- and its ratio to the same machine's float32 matmul peak, measured in the
  same process (best of 5 runs of a 2048 x 2048 matmul chain with the backend);
* the ceiling of that ratio: the FLOP/s of the step's own matmuls (every kernel's forward and
  both gradients at the training batch size) run alone, back to back, and its ratio to the peak.

Rows are appended to ``--out`` (CSV) and printed as a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["cells", "genes", "mode", "epochs", "train_cells", "epoch_seconds", "train_cells_per_s",
           "transform_cells", "transform_seconds", "transform_cells_per_s", "peak_rss_gb",
           "flops_per_cell", "achieved_gflops", "matmul_peak_gflops", "fraction_of_peak", "model_matmul_gflops",
           "ceiling_fraction_of_peak", "backend", "cpus", "date"]


def matmul_peak_gflops(keras, n: int = 2048, repeats: int = 5) -> float:
    import numpy as np

    ops = keras.ops
    a = ops.convert_to_tensor(np.random.default_rng(0).standard_normal((n, n)).astype("float32"))
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        c = ops.matmul(a, a)
        c = ops.matmul(c, a)
        float(ops.convert_to_numpy(ops.sum(c[:1, :1])))
        best = min(best, time.perf_counter() - t0)
    return 2 * 2 * n ** 3 / best / 1e9


def matmul_shapes(model, batch: int) -> list[tuple[int, int, int]]:
    """The (m, k, n) of every matmul of one training step: per dense kernel (in, out), the forward
    (batch, in) x (in, out), the kernel's gradient (in, batch) x (batch, out) and the input's
    gradient (batch, out) x (out, in) -- the 3 x forward that :func:`flops_per_cell` counts."""
    shapes = []
    for w in model.weights:
        if len(w.shape) == 2 and "kernel" in w.path:
            i, o = int(w.shape[0]), int(w.shape[1])
            shapes += [(batch, i, o), (i, batch, o), (batch, o, i)]
    return shapes


def model_matmul_gflops(keras, shapes, repeats: int = 5) -> float:
    """FLOP/s of the step's own matmuls alone, in one compiled function (best of ``repeats``): what training
    would reach if nothing but its matmuls took time -- the ceiling of ``fraction_of_peak`` at this
    batch size, below the 2048^3 peak because these matrices are thin (e.g. 512 x 2,000 x 128)."""
    import numpy as np

    ops = keras.ops
    rng = np.random.default_rng(0)
    pairs = [(ops.convert_to_tensor(rng.standard_normal((m, k)).astype("float32")),
              ops.convert_to_tensor(rng.standard_normal((k, n)).astype("float32"))) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)

    def all_matmuls(pairs):
        return ops.sum(ops.stack([ops.sum(ops.matmul(a, b)) for a, b in pairs]))   # every product used

    backend = keras.backend.backend()
    if backend == "tensorflow":   # compiled as training is, so that no op pays eager dispatch
        import tensorflow as tf

        all_matmuls = tf.function(all_matmuls, jit_compile=True)
    elif backend == "jax":
        import jax

        all_matmuls = jax.jit(all_matmuls)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        float(ops.convert_to_numpy(all_matmuls(pairs)))
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def flops_per_cell(model) -> float:
    """3 x forward FLOPs (2·in·out per dense kernel, encoder and decoder)."""
    forward = sum(2 * int(w.shape[0]) * int(w.shape[1]) for w in model.weights
                  if len(w.shape) == 2 and "kernel" in w.path)
    return 3.0 * forward


def worker(path: Path, mode: str, epochs: int, threads: int | None) -> dict:
    import numpy as np

    from trvae_cli import api
    from trvae_cli.backend import keras_module
    from trvae_cli.model_dir import load_model
    from trvae_cli.config import RunOptions, TrainSettings

    keras = keras_module(threads=threads)
    out = path.with_name(f"{path.stem}_{mode}_model")
    s = TrainSettings(epochs=epochs, validation_fraction=0.0, early_stopping_patience=0, lr_patience=0)
    api.train(path, "condition", out, cell_type_key="cell_type", settings=s,
              options=RunOptions(force=True, progress="none"),
              backed=mode == "backed")
    cfg = json.loads((out / "config.json").read_text())
    hist = list(csv.DictReader(open(out / "history.csv")))
    epoch_s = float(hist[-1]["seconds"])
    n_train = cfg["data"]["n_cells_train"]
    _, model = load_model(out)
    fpc = flops_per_cell(model)
    t0 = time.perf_counter()
    pred = api.transform(out, path, source="control", target="stimulated", cell_type="type0", decode="mean",
                         write=False, backed=mode == "backed")
    tr_s = time.perf_counter() - t0
    peak = matmul_peak_gflops(keras)
    ceiling = model_matmul_gflops(keras, matmul_shapes(model, cfg["training"]["batch_size"]))
    rate = n_train / epoch_s
    return {
        "cells": cfg["data"]["n_cells_train"] + cfg["data"]["n_cells_validation"], "genes": cfg["data"]["n_genes"],
        "mode": mode, "epochs": len(hist), "train_cells": n_train, "epoch_seconds": round(epoch_s, 2),
        "train_cells_per_s": round(rate), "transform_cells": pred.adata.n_obs, "transform_seconds": round(tr_s, 2),
        "transform_cells_per_s": round(pred.adata.n_obs / tr_s),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2),
        "flops_per_cell": int(fpc), "achieved_gflops": round(rate * fpc / 1e9, 2),
        "matmul_peak_gflops": round(peak, 1), "fraction_of_peak": round(rate * fpc / 1e9 / peak, 3),
        "model_matmul_gflops": round(ceiling, 1), "ceiling_fraction_of_peak": round(ceiling / peak, 3),
        "backend": keras.backend.backend(), "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", default="10000,100000,1000000")
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--modes", default="memory,backed")
    p.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is timed (N >= 1e6: 1)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "throughput"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "throughput.csv"))
    p.add_argument("--worker", nargs=3, metavar=("PATH", "MODE", "EPOCHS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        path, mode, epochs = args.worker
        print(json.dumps(worker(Path(path), mode, int(epochs), args.threads)))
        return 0

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in [int(float(c)) for c in args.cells.split(",")]:
        data = work / f"large_{n}x{args.genes}.h5ad"
        if not data.exists():
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_large.py"), str(data), "--cells", str(n),
                            "--genes", str(args.genes)], check=True)
        for mode in args.modes.split(","):
            epochs = 1 if n >= 1_000_000 else args.epochs
            cmd = [sys.executable, __file__, "--worker", str(data), mode, str(epochs)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                print(f"N={n} {mode}: FAILED\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            new = not out.exists()
            with open(out, "a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=COLUMNS)
                if new:
                    w.writeheader()
                w.writerow(row)
            print(f"N={n:>9,} {mode:6s}: train {row['train_cells_per_s']:>8,} cells/s "
                  f"({row['epoch_seconds']} s/epoch), transform {row['transform_cells_per_s']:>8,} cells/s, "
                  f"peak RSS {row['peak_rss_gb']} GB, {row['achieved_gflops']} GFLOP/s = "
                  f"{row['fraction_of_peak']:.1%} of {row['matmul_peak_gflops']} GFLOP/s matmul peak "
                  f"(the step's own matmuls alone: {row['model_matmul_gflops']} GFLOP/s = "
                  f"{row['ceiling_fraction_of_peak']:.1%})",
                  file=sys.stderr, flush=True)
    from holdout import cpu_model   # benchmarks/ is on sys.path: this file's own folder

    print(f"machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
