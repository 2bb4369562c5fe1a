"""Out-of-sample benchmark on the Kang PBMC data: train with one cell type's
stimulated cells held out, transform its control cells, score against the real ones.

    python benchmarks/kang_nk.py --cell-type NK --out runs/nk -- --epochs 300 --batch-size 128

Everything after ``--`` is passed to ``trvae train`` unchanged. Prints one JSON
line with R² (per-gene mean and variance, all genes and top-N DEGs) for the
prediction (mean and sampled decoding), the identity baseline (the control
cells themselves) and the mean-shift baseline, plus the training time.
DEGs: scanpy ``rank_genes_groups`` (wilcoxon), real stimulated vs control of the
held-out cell type, top N by score. Needs scanpy (a dependency of trvae).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kang_pbmc_valid.h5ad"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1:]
    else:
        train_args = []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--cell-type", default="NK")
    p.add_argument("--condition-key", default="condition")
    p.add_argument("--cell-type-key", default="cell_type")
    p.add_argument("--source", default="control")
    p.add_argument("--target", default="stimulated")
    p.add_argument("--n-degs", type=int, default=100)
    p.add_argument("--out", default="runs/kang")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)

    import anndata as ad
    from click.testing import CliRunner

    from trvae_cli import api
    from trvae_cli.cli import main as cli
    from trvae_cli.metrics import mean_shift_prediction, r2_scores, top_degs

    out = Path(args.out)
    model_dir = out / "model"
    cmd = [
        "train", args.data, "--condition", args.condition_key, "--cell-type-key", args.cell_type_key,
        "--exclude", f"{args.cell_type}:{args.target}", "--out", str(model_dir), "--force", *train_args,
    ]
    t0 = time.perf_counter()
    res = CliRunner().invoke(cli, cmd, catch_exceptions=False)
    train_seconds = time.perf_counter() - t0
    if res.exit_code != 0:
        print(res.output, file=sys.stderr)
        raise SystemExit(res.exit_code)

    adata = ad.read_h5ad(args.data)
    cond = adata.obs[args.condition_key].astype(str).values
    ct = adata.obs[args.cell_type_key].astype(str).values
    real = adata.X[(ct == args.cell_type) & (cond == args.target)]
    ctrl = adata.X[(ct == args.cell_type) & (cond == args.source)]
    degs = top_degs(adata, args.condition_key, args.source, args.target, args.n_degs,
                    args.cell_type_key, args.cell_type)

    def score(pred):
        all_ = r2_scores(real, pred)
        top = r2_scores(real, pred, degs)
        return {"mean_all": all_["r2_mean"], "mean_deg": top["r2_mean"],
                "var_all": all_["r2_var"], "var_deg": top["r2_var"]}

    result = {"label": args.label, "train_args": shlex.join(train_args), "cell_type": args.cell_type,
              "n_pred": int(ctrl.shape[0]), "n_real": int(real.shape[0])}
    for decode in ("mean", "sample"):
        pred = api.transform(model_dir, args.data, source=args.source, target=args.target,
                             cell_type=args.cell_type, decode=decode, write=False)
        result[f"trvae_{decode}"] = score(pred.adata.X)
    result["identity"] = score(ctrl)
    others = ct != args.cell_type
    result["mean_shift"] = score(mean_shift_prediction(
        ctrl, adata.X[others & (cond == args.source)], adata.X[others & (cond == args.target)]))
    cfg = json.loads((model_dir / "config.json").read_text())
    result["epochs_run"] = cfg["result"]["epochs_run"]
    result["best_epoch"] = cfg["result"]["best_epoch"]
    result["train_seconds"] = round(train_seconds, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
