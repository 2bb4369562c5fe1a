"""The decode-per-cell-type rule of ``trvae validate``, applied to a ``holdout.py`` table (several seeds).

    python benchmarks/decode_rules.py benchmarks/results/kang_holdout_alpha03.csv

``holdout.py`` holds each cell type out in turn at several seeds, like ``trvae validate``'s folds at
one. This reads its rows of the trvae presets (``trvae`` = counterfactual, ``trvae (mean)`` =
decoded means), averages each cell type's full-set R² over the seeds, finds each cell type's
nearest other one by the mean expression of its source-condition cells
(:func:`trvae_cli.validate.source_centroids`, :func:`trvae_cli.validation_report.nearest_folds`),
and scores the two rules with :func:`trvae_cli.validation_report.decode_rules`: one decode for the
data set against the nearest fold's best. Prints per cell type the decode each rule gives and
its R² of DEG means and variances, and both rules' means over the cell types.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DECODES = {"trvae": "counterfactual", "trvae (mean)": "mean"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", help="a holdout.py CSV")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "kang_pbmc_valid.h5ad"))
    p.add_argument("--condition-key", default="condition")
    p.add_argument("--cell-type-key", default="cell_type")
    p.add_argument("--from", dest="source", default="control")
    args = p.parse_args(argv)

    from trvae_cli.validate import source_centroids
    from trvae_cli.validation_report import DATA_SET_RULE, NEAREST_RULE, decode_rules, nearest_folds

    rows = pd.read_csv(args.table)
    rows = rows[rows.preset.isin(DECODES)]
    means = rows.groupby(["cell_type", "preset"])[["r2_mean_degs_full", "r2_var_degs_full"]].mean()
    types = sorted(rows.cell_type.unique())
    folds = []
    for t in types:   # the fold records decode_rules reads, with the seeds' mean full-set R²
        results = [{"label": DECODES[preset], "metrics": {"r2_mean_degs": {"mean": m.r2_mean_degs_full},
                                                          "r2_var_degs": {"mean": m.r2_var_degs_full}}}
                   for preset, m in means.loc[t].iterrows()]
        folds.append({"cell_type": t, "evaluation": {"results": results}})
    centroids = source_centroids(args.data, args.condition_key, args.cell_type_key, args.source, types)
    neighbours = nearest_folds(centroids["means"], types)
    r = decode_rules(folds, list(DECODES.values()), neighbours)
    preset_of = {d: p for p, d in DECODES.items()}
    print(f"{'held out':12s} {'nearest':12s} {'data set':>15s} {'nearest rule':>15s}   DEG means / vars: data set -> nearest rule")
    totals = {DATA_SET_RULE: [], NEAREST_RULE: []}
    for t in types:
        f = r["per_fold"][t]
        figures = []
        for rule in (DATA_SET_RULE, NEAREST_RULE):
            m = means.loc[(t, preset_of[f[rule]])]
            totals[rule].append((m.r2_mean_degs_full, m.r2_var_degs_full))
            figures.append(f"{m.r2_mean_degs_full:.3f} / {m.r2_var_degs_full:.3f}")
        print(f"{t:12s} {f['nearest']:12s} {f[DATA_SET_RULE]:>15s} {f[NEAREST_RULE]:>15s}   {figures[0]} -> {figures[1]}")
    for rule, v in totals.items():
        a = np.asarray(v)
        print(f"mean over {len(types)} ({rule}): DEG means {a[:, 0].mean():.3f}, DEG vars {a[:, 1].mean():.3f}; "
              f"criterion {r['scores'][rule]:.4f}")
    print(f"adopted: {r['rule']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
