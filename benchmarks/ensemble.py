"""Would an ensemble over seeds help? K models per held-out cell type, their predictions averaged.

    python benchmarks/ensemble.py --cell-types CD14+Mono,FCGR3A+Mono --seeds 0,1,2 --out runs/ensemble.csv -- --threads 1

For each held-out cell type it trains one model per seed (``trvae train --exclude CT:TARGET --seed
S``, a fresh process each, as ``holdout.py`` does), transforms the held-out cell type's source
cells with each model (``--decode counterfactual`` and ``mean``), and then scores with
``trvae evaluate`` (top-100 DEGs, ``--n-subsamples`` subsamples, seeded with 0, so that every
row meets the same DEGs and subsamples):

* each model's prediction alone (``single sS``);
* the cell-by-cell mean of the K predictions (``ensemble mean of K``): every cell's K
  predictions, one per model, averaged;
* the K predictions pooled (``ensemble pool of K``): K times the cells, each model's own.

Nothing here is an option of the tool yet: this measures whether one should be. Each finished
(cell type, seed) keeps its predictions under ``--work-dir``, so a rerun continues. Rows go to
``--out`` (CSV, one per (cell type, prediction)); everything after ``--`` goes to every ``trvae train``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from holdout import flat_metrics, train_held_out, transform_held_out  # noqa: E402  (this folder's own helpers)

DECODES = ("counterfactual", "mean")


def predictions(args, cell_type: str, seed: int, work: Path) -> dict[str, Path]:
    """The model of (cell type, seed) trained, and its predictions by decode (reused when present)."""
    tag = f"{cell_type}_s{seed}".replace("/", "_")
    paths = {d: work / f"{tag}_{d}.h5ad" for d in DECODES}
    if not all(p.exists() for p in paths.values()):
        model = work / tag
        train_held_out(args, "trvae", cell_type, seed, model)
        for decode, path in paths.items():
            transform_held_out(args, model, cell_type, decode, seed, path)
    return paths


def combined(paths: list[Path], how: str, out: Path) -> Path:
    """The K predictions averaged cell by cell (``mean``) or stacked (``pool``), with the first one's
    var and uns (its task record, which evaluate reads)."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    preds = [ad.read_h5ad(p) for p in paths]
    xs = [np.asarray(p.X.toarray() if hasattr(p.X, "toarray") else p.X, np.float64) for p in preds]
    first = preds[0]
    if how == "mean":
        if any(list(p.obs_names) != list(first.obs_names) for p in preds[1:]):
            raise ValueError("a cell-by-cell mean needs the models' predictions of the same cells, in one order")
        x, obs = np.mean(xs, axis=0), first.obs.copy()
    else:
        x, obs = np.concatenate(xs), pd.concat([p.obs for p in preds])
    result = ad.AnnData(x.astype(np.float32), obs=obs, var=first.var.copy())
    result.obs_names_make_unique()
    result.uns["trvae"] = first.uns["trvae"]
    result.write_h5ad(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kang_pbmc_valid.h5ad"))
    p.add_argument("--condition-key", default="condition")
    p.add_argument("--cell-type-key", default="cell_type")
    p.add_argument("--from", dest="source", default="control")
    p.add_argument("--to", dest="target", default="stimulated")
    p.add_argument("--cell-types", default="CD14+Mono,FCGR3A+Mono")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n-degs", type=int, default=100)
    p.add_argument("--n-subsamples", type=int, default=30)
    p.add_argument("--out", default=str(ROOT / "runs" / "ensemble.csv"))
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "ensemble"))
    p.add_argument("train_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    args.train_args = [a for a in args.train_args if a != "--"]
    if not Path(args.data).is_file():
        sys.exit(f"error: data file not found: {args.data}")
    from trvae_cli.evaluation import evaluate

    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for cell_type in args.cell_types.split(","):
        try:
            by_seed = {s: predictions(args, cell_type, s, work) for s in seeds}
        except RuntimeError as exc:
            sys.exit(f"error: {cell_type}: {exc}")
        for decode in DECODES:
            singles = [by_seed[s][decode] for s in seeds]
            tag = f"{cell_type}_{decode}_{'-'.join(map(str, seeds))}".replace("/", "_")
            paths = singles + [combined(singles, how, work / f"{tag}_{how}.h5ad") for how in ("mean", "pool")]
            labels = [f"single s{s}" for s in seeds] + [f"ensemble {how} of {len(seeds)}" for how in ("mean", "pool")]
            report = evaluate(paths, labels=labels, n_degs=args.n_degs, n_subsamples=args.n_subsamples, seed=0)
            for r in report["results"]:
                if r["kind"] == "prediction":
                    rows.append({"cell_type": cell_type, "decode": decode, "prediction": r["label"], **flat_metrics(r)})
            for r in rows[-len(labels):]:
                print(f"{cell_type:12s} {decode:15s} {r['prediction']:18s} R² DEG means {r['r2_mean_degs_full']:.3f} "
                      f"vars {r['r2_var_degs_full']:.3f}  r of change, all {r['change_pearson_all']:.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out.with_suffix(".meta.json")).write_text(json.dumps({"argv": sys.argv, "seeds": seeds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
