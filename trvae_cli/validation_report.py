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
                   "change_pearson_degs", "change_scale_degs")
#: figures where higher is not better (1 is right): no "beats the references" count
SIZE_METRICS = ("change_scale_degs",)
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


def _criterion(fold: Mapping, decode: str) -> float:
    return (fold_value(fold, decode, "r2_mean_degs") + fold_value(fold, decode, "r2_var_degs")) / 2


def _best(scores: Mapping[str, float], decodes: Sequence[str]) -> str | None:
    """The decode of the highest finite score; ties: counterfactual, else the first listed."""
    ranked = [d for d in decodes if scores.get(d) is not None and np.isfinite(scores[d])]
    if not ranked:
        return None
    best = max(scores[d] for d in ranked)
    tied = [d for d in ranked if scores[d] >= best - 1e-12]
    return "counterfactual" if "counterfactual" in tied else tied[0]


#: The per-cell-type rule, as recorded and said.
NEAREST_RULE = "nearest validated cell type"
DATA_SET_RULE = "data set"


def decode_rules(folds: Sequence[Mapping], decodes: Sequence[str], neighbours: Mapping[str, str] | None) -> dict:
    """Which rule should choose a new cell type's decode, judged on the folds themselves.

    Each fold T is predicted, leaving T out, by two rules: *data set*, the best decode over the other
    folds (what one choice for the whole data set gives a cell type it has not seen), and *nearest*,
    the best decode of the fold whose source cells' mean expression is nearest to T's
    (``neighbours[T]``, another fold). A rule's score is the mean over the folds of the criterion
    (the average of DEG-mean and DEG-var R²) of the decode it gave each. The nearest rule is adopted
    only when it scores strictly higher; with 2 folds the two rules coincide.
    """
    names = [str(f.get("cell_type", i)) for i, f in enumerate(folds)]
    own = {t: {d: _criterion(f, d) for d in decodes} for t, f in zip(names, folds)}
    fold_best = {t: _best(own[t], decodes) for t in names}
    result = {"fold_best": fold_best, "rule": DATA_SET_RULE, "scores": {}, "per_fold": {}}
    if not neighbours or len(names) < 3 or any(neighbours.get(t) not in own or neighbours[t] == t for t in names):
        return result
    per_fold, totals = {}, {DATA_SET_RULE: [], NEAREST_RULE: []}
    for t in names:
        others = [u for u in names if u != t]
        pooled = {d: float(np.nanmean([own[u][d] for u in others])) for d in decodes}
        by_set, by_nearest = _best(pooled, decodes), fold_best[neighbours[t]]
        per_fold[t] = {"nearest": neighbours[t], DATA_SET_RULE: by_set, NEAREST_RULE: by_nearest}
        for rule, d in ((DATA_SET_RULE, by_set), (NEAREST_RULE, by_nearest)):
            totals[rule].append(own[t][d] if d is not None else float("nan"))
    scores = {rule: float(np.nanmean(v)) if np.isfinite(v).any() else None for rule, v in totals.items()}
    result.update(per_fold=per_fold, scores=scores)
    if None not in scores.values() and scores[NEAREST_RULE] > scores[DATA_SET_RULE] + 1e-12:
        result["rule"] = NEAREST_RULE
    return result


def _size_line(decode: str, summary: Mapping) -> list[str]:
    """The verdict's line on how big the predicted change is (top DEGs, 1 = the real size), next to the
    mean shift's; none when no fold defines it (older fold files lack the figure)."""
    e, ref = summary[decode]["change_scale_degs"], summary[MEAN_SHIFT]["change_scale_degs"]
    if e["mean"] is None:
        return []
    spread = f" ± {e['sd']:.2f}" if e["sd"] is not None else ""
    shift = f"; the mean shift's {ref['mean']:.2f}" if ref["mean"] is not None else ""
    return [f"{decode}: expected size of the change on an unseen cell type (top DEGs, 1 = the real size): "
            f"{e['mean']:.2f}{spread} over {e['n']} cell type{'s' if e['n'] != 1 else ''}{shift}"]


def summarize(folds: Sequence[Mapping], decodes: Sequence[str], neighbours: Mapping[str, str] | None = None) -> dict:
    """Per method and metric: mean and sd (ddof 1) over the folds; per decode how often it beats each
    reference; the score of each decode and the one chosen (:data:`CRITERION`); which rule chooses a
    new cell type's decode (:func:`decode_rules`, given each fold's nearest other fold); the verdict."""
    summary: dict = {}
    for method in [*decodes, *REFERENCES]:
        summary[method] = {}
        for metric in SUMMARY_METRICS:
            values = [fold_value(f, method, metric) for f in folds]
            entry = _stats(values)
            if method in decodes and metric not in SIZE_METRICS:
                for ref, key in ((MEAN_SHIFT, "mean_shift"), (IDENTITY, "identity")):
                    pairs = [(v, fold_value(f, ref, metric)) for v, f in zip(values, folds)]
                    pairs = [(v, r) for v, r in pairs if np.isfinite(v) and np.isfinite(r)]
                    entry[f"beats_{key}"] = int(sum(v > r for v, r in pairs))
                    entry[f"compared_{key}"] = len(pairs)
            summary[method][metric] = entry
    scores = {d: _stats([_criterion(f, d) for f in folds])["mean"] for d in decodes}
    ranked = [d for d in decodes if scores[d] is not None]
    chosen = _best(scores, decodes)
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
        verdict.extend(_size_line(d, summary))
    if chosen is not None:
        verdict.append(f"best decode across the folds: {chosen} (mean over {k} folds of the average of DEG-mean and "
                       "DEG-var R²: " + ", ".join(f"{d} {scores[d]:.3f}" for d in ranked) + ")")
    rules = decode_rules(folds, decodes, neighbours)
    if rules["scores"]:
        s_set, s_near = rules["scores"][DATA_SET_RULE], rules["scores"][NEAREST_RULE]
        verdict.append(
            f"choosing each left-out fold's decode from the other folds: one choice for the data set {s_set:.3f}, "
            f"the nearest fold's own best {s_near:.3f} (mean of the average of DEG-mean and DEG-var R²): "
            + ("a new cell type gets the best decode of the validated cell type nearest to it"
               if rules["rule"] == NEAREST_RULE else "one decode for every cell type"))
    return {"summary": summary, "verdict": verdict,
            "chosen_decode": {"chosen": chosen, "by": "validation", "criterion": CRITERION,
                              "scores": scores, "folds": k, "rule": rules["rule"], "fold_best": rules["fold_best"],
                              "rule_scores": rules["scores"], "rule_per_fold": rules["per_fold"]}}


def _mean(values) -> float | None:
    """:func:`_stats`' mean of values that may be None (a figure a fold's JSON left undefined)."""
    return _stats([np.nan if v is None else v for v in values])["mean"]


def merge_seeds(records: Sequence[Mapping]) -> dict:
    """One fold's record from its runs at several seeds: every figure of every method the mean over
    the seeds (an R²'s subsample mean, sd and full-set value alike, and ``seed_sd``, the sd of its
    subsample means over the seeds, ddof 1); epochs the mean; seconds the sum (the fold's cost).
    One record is returned as it is."""
    if len(records) == 1:
        return dict(records[0])
    first = records[0]
    results = []
    for r in first["evaluation"]["results"]:
        same = [next(x for x in rec["evaluation"]["results"] if x["label"] == r["label"]) for rec in records]
        metrics = {}
        for name, v in r["metrics"].items():
            vals = [s["metrics"].get(name) for s in same]
            if isinstance(v, dict):
                field = lambda k: [x.get(k) if isinstance(x, dict) else None for x in vals]   # noqa: E731
                metrics[name] = {**{k: _mean(field(k)) for k in ("mean", "sd", "full")},
                                 "n_subsamples": v.get("n_subsamples"),
                                 "seed_sd": _stats([np.nan if m is None else m for m in field("mean")])["sd"]}
            else:
                metrics[name] = _mean(vals)
        results.append({**r, "metrics": metrics})
    runs = [{"seed": rec.get("seed"), **{k: rec["result"].get(k) for k in ("epochs_run", "best_epoch", "train_seconds")},
             "train_wall_seconds": rec["train_wall_seconds"]} for rec in records]
    return {**first, "seed": None, "seeds": [rec.get("seed") for rec in records], "per_seed": runs,
            "result": {k: _mean(run[k] for run in runs) for k in ("epochs_run", "best_epoch", "train_seconds")},
            "train_wall_seconds": float(sum(rec["train_wall_seconds"] for rec in records)),
            "seconds": float(sum(rec["seconds"] for rec in records)),
            "evaluation": {**first["evaluation"], "results": results}}


def fold_entry(record: Mapping) -> dict:
    ev = record["evaluation"]
    seeds = {"seeds": record["seeds"], "per_seed": record["per_seed"]} if "seeds" in record else {}
    return {"cell_type": record["cell_type"], **record["result"], **seeds,
            "train_wall_seconds": record["train_wall_seconds"], "seconds": record["seconds"], "n_real_source": ev["task"]["n_real_source"],
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
                          ("r2_var_all", "R² of variances, all genes"),
                          ("change_scale_degs", f"Size of the change, top {n_degs} DEGs (1 = the real size)")):
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


#: the figures a transform is told to expect (:func:`trvae_cli.validate.expected_quality`): the verdict's
EXPECTED_METRICS = ("r2_mean_degs", "r2_var_degs", "change_pearson_all")


def expected_line(expected: Mapping) -> str:
    """One line of what :func:`trvae_cli.validate.expected_quality` found, for transform's stderr."""
    def figures(values: Mapping) -> str:
        return " / ".join(f"{float(values.get(m, float('nan'))):.3f}" for m in EXPECTED_METRICS)

    over = expected.get("over_folds", {})
    spread = ", ".join(f"{label} {over[m]['mean']:.3f} ± {over[m].get('sd', float('nan')):.3f}"
                       for m, label in zip(EXPECTED_METRICS, ("R² of DEG means", "of DEG variances",
                                                              "r of change (all genes)")) if m in over)
    line = (f"expected quality, from the model's validation ({expected['decode']}, over {int(expected['folds'])} "
            f"held-out cell types): {spread}")
    for key, what in (("nearest", "the validated cell type nearest to these cells"), ("own_fold", "its own fold")):
        if key in expected:
            line += f"; {expected[key]['cell_type']}, {what}: {figures(expected[key])} (DEG means / variances / change)"
    return line


CENTROIDS = "validation_centroids.npz"


def write_reports(out: Path, report: dict, centroids: Mapping | None = None) -> list[Path]:
    """validation.json, .csv, .md and .png (and ``centroids``: each fold's source cells' mean expression,
    ``cell_types`` x ``var_names``, in validation_centroids.npz): all of them or none."""
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
    if centroids is not None:
        def npz_writer(tmp):
            with open(tmp, "wb") as fh:    # a file object: np.savez would append ".npz" to the temporary name
                np.savez_compressed(fh, cell_types=np.asarray(centroids["cell_types"], dtype=str),
                                    var_names=np.asarray(centroids["var_names"], dtype=str),
                                    means=np.asarray(centroids["means"], dtype=np.float32))
        writers[out / CENTROIDS] = npz_writer
    return write_files(writers)


def read_centroids(path: Path) -> dict | None:
    """What :func:`write_reports` wrote as ``validation_centroids.npz`` (None if absent or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"cell_types": [str(t) for t in z["cell_types"]], "var_names": [str(g) for g in z["var_names"]],
                    "means": np.asarray(z["means"], np.float64)}
    except (OSError, ValueError, KeyError):
        return None


def nearest_folds(means: np.ndarray, cell_types: Sequence[str]) -> dict[str, str]:
    """Each fold's nearest other fold: Euclidean distance between their source cells' mean expression."""
    means = np.asarray(means, np.float64)
    d = np.sqrt(((means[:, None, :] - means[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return {t: cell_types[int(np.argmin(d[i]))] for i, t in enumerate(cell_types)} if len(cell_types) > 1 else {}
