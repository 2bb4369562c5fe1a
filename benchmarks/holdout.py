"""Hold out each cell type in turn: train every preset at every seed, transform, evaluate.

    python benchmarks/holdout.py                                   # Kang, all cell types, 4 presets, seeds 0-2
    python benchmarks/holdout.py --cell-types NK --presets trvae --seeds 0,1,2 --out runs/nk.csv -- --beta 2

For every (preset, held-out cell type, seed) it runs ``trvae train --preset P --exclude
CT:TARGET --seed S`` and ``trvae transform`` (each in a fresh process, exactly as a user
would), then scores the prediction with ``trvae evaluate`` (seeded with S; the identity and
mean-shift references get rows of their own). Each finished run appends one row to the CSV
at once, so an interrupted benchmark resumes where it stopped when run again with the same
arguments. Everything after ``--`` is passed to every ``trvae train``.

Outputs, next to the CSV (``--out``):
  OUT.csv          one row per (preset, cell type, seed): every evaluate figure, train seconds, epochs
  OUT.meta.json    arguments, machine, versions (a resumed run must match them)
  OUT.md           the summary table: mean ± sd over seeds of the R² figures
  OUT_heatmap.png  cell type x preset, R² of top-DEG means and variances (like the paper's Fig. 5f)
  OUT_compare_<CT>.png  R² bars with sd over seeds for each cell type (like Fig. 5e)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kang_pbmc_valid.h5ad"
PRESETS = ("trvae", "mmd-cvae", "cvae", "scgen")
REFERENCES = ("identity", "mean shift")
SUMMARY = (("r2_mean_degs", "R² mean DEGs"), ("r2_var_degs", "R² var DEGs"),
           ("r2_mean_all", "R² mean all"), ("r2_var_all", "R² var all"))


def parse(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--condition-key", default="condition")
    p.add_argument("--cell-type-key", default="cell_type")
    p.add_argument("--from", dest="source", default="control")
    p.add_argument("--to", dest="target", default="stimulated")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated (default: %(default)s)")
    p.add_argument("--cell-types", default="", help="comma-separated (default: every cell type)")
    p.add_argument("--first", default="NK", help="cell type run first, all presets and seeds (default: NK)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--decode", default="counterfactual,counterfactual:log1p,mean",
                   help="comma-separated transform --decode modes, MODE[:RESIDUAL_SCALE][@DRAWS], a row for each: "
                        "the first is named PRESET, the others 'PRESET (MODE)' (default: %(default)s)")
    p.add_argument("--n-degs", type=int, default=100)
    p.add_argument("--n-subsamples", type=int, default=100)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kang_holdout.csv"))
    p.add_argument("--work-dir", default=str(ROOT / "runs" / "holdout"), help="models and predictions")
    p.add_argument("--keep-models", action="store_true", help="keep each model directory (default: deleted)")
    p.add_argument("--summary-only", action="store_true", help="only rebuild the table and figures from the CSV")
    args = p.parse_args(argv)
    args.train_args = train_args
    return args


def run_plan(cell_types, presets, seeds, first):
    """The held-out task first for every preset and seed, then seed by seed over the other types."""
    plan = [(p, first, s) for s in seeds for p in presets] if first in cell_types else []
    plan += [(p, ct, s) for s in seeds for ct in cell_types if ct != first for p in presets]
    return plan


def decode_label(preset: str, decode: str, decodes: str) -> str:
    """The first of the ``--decode`` modes is the preset's own row; the others are named after their mode."""
    return preset if decode == decodes.split(",")[0] else f"{preset} ({decode})"


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def append_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Append ``rows`` (fsync'd); a file that exists keeps its own header (one written before a column
    was added gets the rows without it, still aligned)."""
    new = not path.exists()
    if not new:
        with open(path, newline="") as fh:
            columns = next(csv.reader(fh), None) or columns
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


def flat_metrics(result: dict) -> dict:
    out = {"n_cells": result["n_cells"]}
    for name, v in result["metrics"].items():
        if isinstance(v, dict):
            out[name], out[f"{name}_sd"], out[f"{name}_full"] = v["mean"], v["sd"], v["full"]
        else:
            out[name] = v
    return out


def trvae(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trvae_cli.cli", *map(str, args)], capture_output=True, text=True)


def train_held_out(args, preset: str, cell_type: str, seed: int, model: Path) -> None:
    """``trvae train --preset P --exclude CT:TARGET --seed S`` into ``model`` (a fresh process), with
    ``args.train_args`` after; RuntimeError with trvae's last line when it fails."""
    res = trvae("train", args.data, "--condition", args.condition_key, "--cell-type-key", args.cell_type_key,
                "--exclude", f"{cell_type}:{args.target}", "--preset", preset, "--seed", seed, "--out", model,
                "--force", "-q", *args.train_args)
    if res.returncode:
        raise RuntimeError(f"train failed: {res.stderr.strip().splitlines()[-1:]}")


def transform_held_out(args, model: Path, cell_type: str, decode: str, seed: int, path: Path) -> None:
    """``trvae transform`` of the held-out cell type's source cells to ``path``; ``decode`` is a
    ``--decode`` mode, optionally ``:SCALE`` (``--residual-scale``) and ``@DRAWS`` (``--draws``)."""
    spec, _, draws = decode.partition("@")
    mode, _, scale = spec.partition(":")
    res = trvae("transform", "--model", model, "--from", args.source, "--to", args.target, "--cell-type",
                cell_type, "--decode", mode, *(("--residual-scale", scale) if scale else ()),
                *(("--draws", draws) if draws else ()), "--seed", seed, "--out", path, "--force", "-q")
    if res.returncode:
        raise RuntimeError(f"transform failed: {res.stderr.strip().splitlines()[-1:]}")


def one_run(args, preset, cell_type, seed, work: Path) -> list[dict]:
    """Train, transform, evaluate one combination; returns its CSV rows (model and, per seed, references)."""
    from trvae_cli.evaluation import evaluate

    tag = f"{preset}_{cell_type}_s{seed}".replace(" ", "_").replace("/", "_")
    model, pred = work / tag, work / f"{tag}.h5ad"
    t0 = time.perf_counter()
    train_held_out(args, preset, cell_type, seed, model)
    wall = time.perf_counter() - t0
    preds, labels = [], []
    for decode in args.decode.split(","):
        path = pred.with_name(f"{tag}_{decode.replace(':', '_').replace('@', '_x')}.h5ad")
        transform_held_out(args, model, cell_type, decode, seed, path)
        preds.append(path)
        labels.append(decode_label(preset, decode, args.decode))
    cfg = json.loads((model / "config.json").read_text())
    report = evaluate(preds, labels=labels, n_degs=args.n_degs, n_subsamples=args.n_subsamples, seed=seed)
    (work / f"{tag}.eval.json").write_text(json.dumps(report, default=lambda o: None))
    rows = []
    for r in report["results"]:
        row = {"preset": r["label"], "kind": r["kind"], "cell_type": cell_type, "seed": seed, **flat_metrics(r)}
        if r["kind"] == "prediction":
            row.update(train_seconds=cfg["result"]["train_seconds"], train_wall_seconds=round(wall, 1),
                       epochs=cfg["result"]["epochs_run"], best_epoch=cfg["result"]["best_epoch"])
        rows.append(row)
    if not args.keep_models:
        shutil.rmtree(model, ignore_errors=True)
        for path in preds:
            path.unlink(missing_ok=True)
    return rows


COLUMNS = ["preset", "kind", "cell_type", "seed", "n_cells"]
for _m in ("r2_mean_degs", "r2_var_degs", "r2_mean_all", "r2_var_all"):
    COLUMNS += [_m, f"{_m}_sd", f"{_m}_full"]
COLUMNS += ["change_pearson_degs", "change_pearson_all", "deg_recovery", "mmd_pca", "edistance_pca",
            "edistance_ratio", "train_seconds", "train_wall_seconds", "epochs", "best_epoch", "change_scale_degs"]


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows): timings
    from two machines of the same core count differed by 2x (``benchmarks/README.md``, eighth session)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    from trvae_cli.evaluation import analysis_versions

    info = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
            "machine": platform.machine(), "cpu": cpu_model(), "cpus": os.cpu_count(), **analysis_versions()}
    for pkg in ("tensorflow", "keras"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:  # pragma: no cover
            info[pkg] = None
    return info


# --------------------------------------------------------------------------- summary


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return np.nan


def aggregate(rows: list[dict]) -> dict:
    """{(preset, cell type): {metric: (mean over seeds, sd over seeds, n seeds)}}."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["preset"], r["cell_type"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {}
        for m in [c for c in COLUMNS[5:] if not c.endswith(("_sd", "_full"))]:
            vals = np.array([_num(r.get(m)) for r in rs])
            vals = vals[np.isfinite(vals)]
            out[key][m] = (float(vals.mean()) if len(vals) else np.nan,
                           float(vals.std(ddof=1)) if len(vals) > 1 else np.nan, len(vals))
    return out


def order_presets(presets_seen):
    """References, then each known preset followed by its other decode modes ('trvae (mean)'), then the rest."""
    ordered = [p for p in REFERENCES if p in presets_seen]
    for p in PRESETS:
        ordered += [p] if p in presets_seen else []
        ordered += sorted(q for q in presets_seen if q.startswith(f"{p} ("))
    return ordered + sorted(p for p in presets_seen if p not in ordered)


def summary_markdown(agg: dict, cell_types: list[str], presets: list[str]) -> str:
    lines = []
    for metric, title in SUMMARY:
        lines += [f"**{title}** (mean ± sd over seeds; n seeds)", "",
                  "| cell type | " + " | ".join(presets) + " |", "|---" * (len(presets) + 1) + "|"]
        for ct in cell_types:
            cells = []
            best = max((agg.get((p, ct), {}).get(metric, (np.nan,))[0] for p in presets), key=lambda v: -1 if np.isnan(v) else v)
            for p in presets:
                m, sd, n = agg.get((p, ct), {}).get(metric, (np.nan, np.nan, 0))
                if not n:
                    cells.append("")
                    continue
                text = f"{m:.3f}" + (f" ± {sd:.3f}" if np.isfinite(sd) else "") + (f" ({n})" if n != 3 else "")
                cells.append(f"**{text}**" if m == best else text)
            lines.append(f"| {ct} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def figures(agg: dict, cell_types: list[str], presets: list[str], stem: Path) -> list[Path]:
    from trvae_cli.plotting.figures import compare_figure, heatmap_figure, save_figure

    written = []
    mats = [np.array([[agg.get((p, ct), {}).get(m, (np.nan,))[0] for p in presets] for ct in cell_types])
            for m, _ in SUMMARY[:2]]
    fig = heatmap_figure(mats, cell_types, presets, [t for _, t in SUMMARY[:2]],
                         title="held-out cell type: mean over seeds")
    written.append(save_figure(fig, stem.with_name(stem.name + "_heatmap.png")))
    metrics = [(m, t) for m, t in SUMMARY]
    for ct in cell_types:
        present = [p for p in presets if (p, ct) in agg]
        if not present:
            continue
        values = np.array([[agg[(p, ct)][m][0] for m, _ in metrics] for p in present])
        errors = np.array([[agg[(p, ct)][m][1] for m, _ in metrics] for p in present])
        kinds = ["reference" if p in REFERENCES else "prediction" for p in present]
        fig = compare_figure(present, metrics, values, errors, kinds=kinds,
                             title=f"{ct} held out: mean ± sd over seeds")
        written.append(save_figure(fig, stem.with_name(f"{stem.name}_compare_{ct}.png")))
    return written


def summarize(out: Path, cell_types_order: list[str] | None = None) -> str:
    rows = read_rows(out)
    if not rows:
        return "no results yet"
    agg = aggregate(rows)
    seen_ct = list(dict.fromkeys(r["cell_type"] for r in rows))
    cell_types = [c for c in (cell_types_order or []) if c in seen_ct] + [c for c in seen_ct if c not in (cell_types_order or [])]
    presets = order_presets({r["preset"] for r in rows})
    md = summary_markdown(agg, cell_types, presets)
    out.with_suffix(".md").write_text(md)
    figures(agg, cell_types, presets, out.with_suffix(""))
    return md


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.summary_only:
        print(summarize(out))
        return 0

    import anndata as ad

    if not Path(args.data).is_file():
        sys.exit(f"error: data file not found: {args.data}")
    adata = ad.read_h5ad(args.data, backed="r")
    all_types = list(adata.obs[args.cell_type_key].astype(str).unique())
    cell_types = [c for c in args.cell_types.split(",") if c] or all_types
    presets = [p for p in args.presets.split(",") if p]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    unknown = [c for c in cell_types if c not in all_types]
    if unknown:
        sys.exit(f"error: unknown cell types {unknown}; the data has {all_types}")

    meta_path = out.with_suffix(".meta.json")
    # the data file by name and size, not path: a fresh clone elsewhere can resume the committed CSV
    settings = {"data": Path(args.data).name, "data_bytes": Path(args.data).stat().st_size,
                "condition_key": args.condition_key, "cell_type_key": args.cell_type_key, "from": args.source, "to": args.target,
                "n_degs": args.n_degs, "n_subsamples": args.n_subsamples, "decode": args.decode,
                "train_args": args.train_args}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["settings"] != settings:
            sys.exit(f"error: {out} was made with other settings ({meta['settings']}); choose another --out")
    else:
        meta = {"settings": settings, "machine": machine(),
                "command": shlex.join([sys.executable, *sys.argv])}
        meta_path.write_text(json.dumps(meta, indent=2))

    done = {(r["preset"], r["cell_type"], int(r["seed"])) for r in read_rows(out)}
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    plan = [job for job in run_plan(cell_types, presets, seeds, args.first) if job not in done]
    print(f"{len(plan)} runs to do ({len(done)} rows already in {out})", file=sys.stderr)
    for i, (preset, ct, seed) in enumerate(plan, 1):
        t0 = time.perf_counter()
        try:
            rows = one_run(args, preset, ct, seed, work)
        except RuntimeError as exc:
            print(f"[{i}/{len(plan)}] {preset} {ct} seed {seed}: FAILED {exc}", file=sys.stderr)
            continue
        done_now = {(r["preset"], r["cell_type"], int(r["seed"])) for r in read_rows(out)}
        append_rows(out, [r for r in rows if (r["preset"], r["cell_type"], int(r["seed"])) not in done_now], COLUMNS)
        m = next(r for r in rows if r["preset"] == preset)
        print(f"[{i}/{len(plan)}] {preset:9s} {ct:12s} seed {seed}: R² mean DEGs {m['r2_mean_degs']:.3f}, "
              f"var DEGs {m['r2_var_degs']:.3f} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(summarize(out, cell_types))
    return 0


if __name__ == "__main__":
    sys.exit(main())
