"""The summary, verdict and reports of a ``trvae validate`` run (see :mod:`trvae_cli.validate`):
mean ± sd over the folds, how often each decode beats the references, the decode chosen, and
``validation.json`` / ``.csv`` / ``.md`` / ``.png`` (written all together or not at all)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .evaluation import IDENTITY, MEAN_SHIFT, POINT_METRICS, R2_METRICS

REFERENCES = (IDENTITY, MEAN_SHIFT)
SUMMARY_METRICS = ("r2_mean_degs", "r2_var_degs", "r2_mean_all", "r2_var_all", "change_pearson_all",
                   "change_pearson_degs")
#: (metric, what it is, of what): the three lines of the verdict per decode.
VERDICT_METRICS = (("r2_mean_degs", "R²", "DEG means"), ("r2_var_degs", "R²", "DEG variances"),
                   ("change_pearson_all", "r of change", "all genes"))
CRITERION = ("mean over the folds of the average of the R² of DEG means and of DEG variances "
             "(subsample means); ties: counterfactual")


def fold_value(fold: Mapping, method: str, metric: str) -> float:
    """One figure of one method in a fold's record: an R²'s subsample mean, or the point figure (NaN if absent)."""
    for r in fold["evaluation"]["results"]:
        if r["label"] == method:
            v = r["metrics"].get(metric)
            v = v.get("mean") if isinstance(v, dict) else v
            return float("nan") if v is None else float(v)
    return float("nan")


def _stats(values: Sequence[float]) -> dict:
    arr = np.asarray(values, float)
    ok = arr[np.isfinite(arr)]
    return {"mean": float(ok.mean()) if ok.size else None,
            "sd": float(ok.std(ddof=1)) if ok.size > 1 else None,
            "n": int(ok.size), "values": [float(v) if np.isfinite(v) else None for v in arr]}


def summarize(folds: Sequence[Mapping], decodes: Sequence[str]) -> dict:
    """Per method and metric: mean and sd (ddof 1) over the folds; per decode how often it beats each
    reference; the score of each decode and the one chosen (:data:`CRITERION`); the verdict lines."""
    summary: dict = {}
    for method in [*decodes, *REFERENCES]:
        summary[method] = {}
        for metric in SUMMARY_METRICS:
            values = [fold_value(f, method, metric) for f in folds]
            entry = _stats(values)
            if method in decodes:
                for ref, key in ((MEAN_SHIFT, "mean_shift"), (IDENTITY, "identity")):
                    pairs = [(v, fold_value(f, ref, metric)) for v, f in zip(values, folds)]
                    pairs = [(v, r) for v, r in pairs if np.isfinite(v) and np.isfinite(r)]
                    entry[f"beats_{key}"] = int(sum(v > r for v, r in pairs))
                    entry[f"compared_{key}"] = len(pairs)
            summary[method][metric] = entry
    scores = {}
    for d in decodes:
        per_fold = [(fold_value(f, d, "r2_mean_degs") + fold_value(f, d, "r2_var_degs")) / 2 for f in folds]
        scores[d] = _stats(per_fold)["mean"]
    ranked = [d for d in decodes if scores[d] is not None]
    if ranked:
        best = max(scores[d] for d in ranked)
        tied = [d for d in ranked if scores[d] >= best - 1e-12]
        chosen = "counterfactual" if "counterfactual" in tied else tied[0]
    else:
        chosen = None
    k = len(folds)
    verdict = []
    for d in decodes:
        for metric, what, of in VERDICT_METRICS:
            e = summary[d][metric]
            if e["mean"] is None:
                verdict.append(f"{d}: expected {what} on an unseen cell type ({of}): not defined on any fold")
                continue
            spread = f" ± {e['sd']:.3f}" if e["sd"] is not None else ""
            n = f"over {e['n']} cell type{'s' if e['n'] != 1 else ''}"
            beats = (f"; beats the mean shift on {e['beats_mean_shift']} of {e['compared_mean_shift']}"
                     if e["compared_mean_shift"] else "; no mean shift to compare with")
            verdict.append(f"{d}: expected {what} on an unseen cell type ({of}): {e['mean']:.3f}{spread} {n}{beats}")
    if chosen is not None:
        verdict.append(f"best decode across the folds: {chosen} (mean over {k} folds of the average of DEG-mean and "
                       "DEG-var R²: " + ", ".join(f"{d} {scores[d]:.3f}" for d in ranked) + ")")
    return {"summary": summary, "verdict": verdict,
            "chosen_decode": {"chosen": chosen, "by": "validation", "criterion": CRITERION,
                              "scores": scores, "folds": k}}


def fold_entry(record: Mapping) -> dict:
    ev = record["evaluation"]
    return {"cell_type": record["cell_type"], **record["result"], "train_wall_seconds": record["train_wall_seconds"],
            "seconds": record["seconds"], "n_real_source": ev["task"]["n_real_source"],
            "n_real_target": ev["task"]["n_real_target"], "degs": ev["degs"], "notes": ev["notes"],
            "methods": {r["label"]: {"kind": r["kind"], "n_cells": r["n_cells"], "metrics": r["metrics"]}
                        for r in ev["results"]}}


CSV_COLUMNS = ["cell_type", "method", "kind", "n_cells", "n_real_target"]
for _m in R2_METRICS:
    CSV_COLUMNS += [_m, f"{_m}_sd", f"{_m}_full"]
CSV_COLUMNS += [*POINT_METRICS, "train_seconds", "epochs_run", "best_epoch"]


def _csv_text(report: dict) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for fold in report["folds"]:
        for label, m in fold["methods"].items():
            row = {"cell_type": fold["cell_type"], "method": label, "kind": m["kind"], "n_cells": m["n_cells"],
                   "n_real_target": fold["n_real_target"]}
            for name, v in m["metrics"].items():
                if isinstance(v, dict):
                    row[name], row[f"{name}_sd"], row[f"{name}_full"] = v["mean"], v["sd"], v["full"]
                else:
                    row[name] = v
            if m["kind"] == "prediction":
                row.update({k: fold.get(k) for k in ("train_seconds", "epochs_run", "best_epoch")})
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def _markdown(report: dict) -> str:
    s, methods = report["settings"], [*REFERENCES, *report["settings"]["decodes"]]
    n_degs = s["n_degs"]
    lines = [f"# Leave-one-cell-type-out validation: {s['from']} → {s['to']}", "",
             f"Data `{Path(s['data']).name}` (obs `{s['condition_key']}`, `{s['cell_type_key']}`); "
             f"{len(report['folds'])} folds, one per cell type with cells in both conditions; each model trained "
             f"without that cell type's {s['to']} cells. R²: mean over {s['n_subsamples']} subsamples (evaluate); "
             "± is the sd over the folds.", "", "## Verdict", ""]
    lines += [f"- {v}" for v in report["verdict"]]
    lines.append("")
    for metric, title in (("r2_mean_degs", f"R² of DEG means (top {n_degs})"),
                          ("r2_var_degs", f"R² of DEG variances (top {n_degs})"),
                          ("change_pearson_all", "r of change, all genes"), ("r2_mean_all", "R² of means, all genes"),
                          ("r2_var_all", "R² of variances, all genes")):
        lines += [f"## {title}", "", "| cell type | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for fold in report["folds"]:
            cells = []
            for m in methods:
                v = fold["methods"].get(m, {}).get("metrics", {}).get(metric)
                cells.append(_fmt(v.get("mean") if isinstance(v, dict) else v))
            lines.append(f"| {fold['cell_type']} | " + " | ".join(cells) + " |")
        agg = []
        for m in methods:
            e = report["summary"][m][metric]
            spread = f" ± {e['sd']:.3f}" if e["sd"] is not None else ""
            agg.append("—" if e["mean"] is None else _fmt(e["mean"]) + spread)
        lines += ["| **mean ± sd** | " + " | ".join(agg) + " |", ""]
    if report["cell_types"]["skipped"]:
        lines += ["Skipped: " + "; ".join(f"{t}: {why}" for t, why in report["cell_types"]["skipped"].items()), ""]
    return "\n".join(lines)


def validation_figure(report: dict):
    """R² of DEG means and DEG variances per fold: each decode (filled) against identity and mean
    shift (open, grey); a line at each decode's mean over the folds. A matplotlib Figure (headless)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .plotting.figures import PALETTE

    folds = [f["cell_type"] for f in report["folds"]]
    decodes = report["settings"]["decodes"]
    methods = [*REFERENCES, *decodes]
    styles = {IDENTITY: dict(marker="o", mfc="white", color="#7f7f7f"),
              MEAN_SHIFT: dict(marker="s", mfc="white", color="#444444")}
    for i, d in enumerate(decodes):
        styles[d] = dict(marker="D^v"[i % 3], color=PALETTE[i % len(PALETTE)])
    fig = Figure(figsize=(max(6.0, 1.6 + 1.1 * len(folds)) * 1.0, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(len(folds))
    width = 0.7 / len(methods)
    panels = (("r2_mean_degs", "R² of DEG means"), ("r2_var_degs", "R² of DEG variances"))
    for ax, (metric, title) in zip(axes, panels):
        for j, m in enumerate(methods):
            ys = np.array([entry_value(f, m, metric) for f in report["folds"]], float)
            sds = np.array([entry_value(f, m, metric, "sd") for f in report["folds"]], float)
            ax.errorbar(x - 0.35 + width * (j + 0.5), ys, yerr=np.nan_to_num(sds), ls="none", ms=6, capsize=2,
                        label=m, **styles[m])
            mean = report["summary"][m][metric]["mean"]
            if m in decodes and mean is not None:
                ax.axhline(mean, color=styles[m]["color"], lw=0.8, ls="--", alpha=0.7)
        ax.set_xticks(x, folds, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", lw=0.4, alpha=0.5)
        ax.set_xlabel("held-out cell type", fontsize=8)
    axes[0].set_ylabel("R² (mean ± sd over subsamples)")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="outside right center", frameon=False)
    s = report["settings"]
    fig.suptitle(f"each cell type predicted by a model that never saw its {s['to']} cells ({s['from']} → {s['to']}); "
                 "dashed: mean over folds", fontsize=9)
    return fig


def entry_value(fold_entry: Mapping, method: str, metric: str, part: str = "mean") -> float:
    v = fold_entry["methods"].get(method, {}).get("metrics", {}).get(metric)
    v = v.get(part) if isinstance(v, dict) else (v if part == "mean" else None)
    return float("nan") if v is None else float(v)


def write_reports(out: Path, report: dict) -> list[Path]:
    """validation.json, .csv, .md and .png: all of them or none."""
    from .outputs import write_files
    from .report import report_json

    fig = validation_figure(report)
    texts = {"validation.json": report_json(report), "validation.csv": _csv_text(report),
             "validation.md": _markdown(report)}

    def text_writer(text):
        return lambda tmp: tmp.write_text(text)

    writers = {out / name: text_writer(text) for name, text in texts.items()}
    writers[out / "validation.png"] = lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight",
                                                              metadata={"Software": "trvae"})
    return write_files(writers)
