"""Peak memory and time of ``trvae transform --backed`` on the 10⁶-cell synthetic file.

    python benchmarks/transform_memory.py                    # 10⁶ x 2,000; every control cell (~500,000)
    python benchmarks/transform_memory.py --cells 100000     # smaller
    python benchmarks/transform_memory.py --pythonpath /tmp/old   # another checkout of trvae_cli, to compare

A small model is trained on a 20,000-cell file drawn from the same gene model (same genes, same
seed: ``make_large.py``), then every control cell of the large file is transformed to
``stimulated`` with ``--backed`` (the default counterfactual decoding), as a whole process under
``/usr/bin/time -v``. Prints cells, seconds, peak RSS, the output's size and format.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GB, stderr) of ``cmd`` under /usr/bin/time -v."""
    t0 = time.perf_counter()
    # run outside the checkout: `python -m` puts the working directory first on sys.path
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd="/")
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    peak_kb = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return wall, peak_kb / 1e6 * 1.024, proc.stderr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=1_000_000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "transform_memory"))
    p.add_argument("--pythonpath", default=None, help="import trvae_cli from here (compare another checkout)")
    p.add_argument("--label", default="this checkout")
    args = p.parse_args(argv)

    import make_large

    work = Path(args.work_dir).resolve()   # the subprocesses run from / (so that --pythonpath decides what is imported)
    work.mkdir(parents=True, exist_ok=True)
    large = work / f"large_{args.cells}x{args.genes}.h5ad"
    small = work / f"small_20000x{args.genes}.h5ad"
    for path, n in ((large, args.cells), (small, 20_000)):
        if not path.exists():
            print(f"writing {path} ...", file=sys.stderr)
            make_large.write_large(path, n, args.genes, seed=0)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = args.pythonpath or str(ROOT)
    trvae = [sys.executable, "-m", "trvae_cli.cli"]
    model = work / "model"
    if not (model / "config.json").exists():
        subprocess.run([*trvae, "train", str(small), "--condition", "condition", "--cell-type-key", "cell_type",
                        "--epochs", "3", "--out", str(model), "--force", "-q"], check=True, env=env, cwd="/")
    out = work / "pred.h5ad"
    wall, peak, _ = timed([*trvae, "transform", "--model", str(model), "--data", str(large), "--from", "control",
                           "--to", "stimulated", "--backed", "--out", str(out), "--force", "-q"], env)
    import anndata as ad

    pred = ad.read_h5ad(out, backed="r")
    n, fmt = pred.n_obs, type(pred.X).__name__
    size = out.stat().st_size / 1e9
    print(f"| {args.label} | {n:,} x {pred.n_vars:,} | {wall:.0f} s | {n / wall:,.0f} cells/s | {peak:.2f} GB | "
          f"{size:.2f} GB | {fmt} |")
    pred.file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
