"""Which training settings to use on a data set, from their validations: ``trvae compare``.

Each folder is a ``trvae validate`` result (or a model's ``validation/``) of the same data, task and
folds, trained with other settings (``--condition-injection hidden``, another ``--dropout``, ...).
A setting is scored as a new cell type would be served by it: on each fold, the criterion of
``trvae validate`` (the average of the DEG-mean and DEG-variance R²) of the decode that the
validation's own rule gives that fold *from the other folds* (``rule_per_fold``: the data set's
choice without the fold, or the nearest fold's best where that rule won). Those are the figures the
decode rule itself is judged by, so no setting is credited with a choice made on the cell type it
is scored on. (A validation of fewer than 3 folds has no such per-fold choice; its one chosen
decode is used, and the report says so.)

Every setting is compared with the **first** folder, the baseline (normally the defaults), fold by
fold: the mean of the paired differences, its standard error over the folds (sd / sqrt(k), ddof 1),
how many folds each side wins, and a two-sided sign test (``scipy.stats.binomtest``). The
recommendation is the best-scoring setting only when it beats the baseline by more than twice that
standard error; otherwise the baseline stays: on Kang, one seed per fold ranked
``--condition-injection hidden`` first, three seeds ranked it second (``benchmarks/README.md``,
tenth session), so a small lead on the folds is not a reason to change settings.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import TrvaeError
from .validation_report import DATA_SET_RULE, NEAREST_RULE, entry_value

FORMAT = "trvae-comparison"
FORMAT_VERSION = 1
REPORT_NAMES = ("comparison.json", "comparison.md", "comparison.csv", "comparison.png")
#: what must be equal for two validations to be compared (their training settings are what differs)
SAME_TASK = ("data", "data_bytes", "condition_key", "cell_type_key", "from", "to", "exclude", "layer", "backed",
             "n_degs", "n_subsamples")
#: a setting is recommended over the baseline only when its mean paired lead exceeds this many standard errors
SE_MULTIPLE = 2.0
CRITERION = ("per fold, the average of the R² of DEG means and of DEG variances of the decode the validation's "
             "rule gives that fold from the other folds; mean over the folds")


def read_validation(path: str | Path) -> dict:
    """A validation folder's ``validation.json`` (a ``trvae validate`` folder or ``MODEL/validation``)."""
    from .validate import FORMAT as VALIDATION_FORMAT
    from .validate import validation_path

    path = Path(path)
    if validation_path(path).is_file() and not (path / "validation.json").is_file():
        path = validation_path(path).parent     # a model directory of `trvae train --validate`
    file = path / "validation.json"
    if not file.is_file():
        raise TrvaeError(f"no validation result in {path} (expected {file}, from trvae validate)")
    try:
        report = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise TrvaeError(f"{file} is unreadable: {exc}") from None
    if not isinstance(report, dict) or report.get("format") != VALIDATION_FORMAT or not report.get("folds"):
        raise TrvaeError(f"{file} is not a trvae validation result")
    return {**report, "path": str(path)}


def fold_decodes(report: dict) -> tuple[dict[str, str], str]:
    """Each fold's decode as a new cell type would get it (``{cell type: decode}``) and how it was chosen."""
    c = report["chosen_decode"]
    rule = c.get("rule", DATA_SET_RULE)
    per_fold = c.get("rule_per_fold") or {}
    folds = [f["cell_type"] for f in report["folds"]]
    if all(t in per_fold and per_fold[t].get(rule) for t in folds):
        how = ("the nearest validated cell type's best decode" if rule == NEAREST_RULE
               else "the best decode over the other folds")
        return {t: per_fold[t][rule] for t in folds}, how
    return {t: c["chosen"] for t in folds}, "the validation's one chosen decode (fewer than 3 folds: no per-fold choice)"


def setting_scores(report: dict) -> dict:
    """Per fold (in the validation's order): the decode a new cell type would get, its criterion, its
    DEG-mean and DEG-variance R² and all-gene r of change; their means; the validation's cost."""
    decodes, how = fold_decodes(report)
    rows = []
    for f in report["folds"]:
        d = decodes[f["cell_type"]]
        means, variances = entry_value(f, d, "r2_mean_degs"), entry_value(f, d, "r2_var_degs")
        rows.append({"cell_type": f["cell_type"], "decode": d, "criterion": (means + variances) / 2,
                     "r2_mean_degs": means, "r2_var_degs": variances,
                     "change_pearson_all": entry_value(f, d, "change_pearson_all"),
                     "epochs_run": f.get("epochs_run"), "train_wall_seconds": f.get("train_wall_seconds")})

    def mean(key):
        vals = np.array([r[key] for r in rows], float)
        return float(np.nanmean(vals)) if np.isfinite(vals).any() else None

    epochs = [r["epochs_run"] for r in rows if r["epochs_run"] is not None]
    return {"folds": rows, "decodes_by": how, "score": mean("criterion"), "r2_mean_degs": mean("r2_mean_degs"),
            "r2_var_degs": mean("r2_var_degs"), "change_pearson_all": mean("change_pearson_all"),
            "epochs": float(np.mean(epochs)) if epochs else None,
            "train_seconds": float(sum(r["train_wall_seconds"] or 0.0 for r in rows))}


def paired(base: Sequence[float], other: Sequence[float]) -> dict:
    """``other`` against ``base`` fold by fold: mean difference, its standard error, folds won and lost,
    and the two-sided sign-test p-value (ties and undefined folds left out)."""
    from scipy.stats import binomtest

    d = np.asarray(other, float) - np.asarray(base, float)
    d = d[np.isfinite(d)]
    k = int(d.size)
    sd = float(d.std(ddof=1)) if k > 1 else None
    se = sd / math.sqrt(k) if sd is not None else None
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    p = float(binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else None
    return {"mean": float(d.mean()) if k else None, "sd": sd, "se": se, "n": k, "wins": wins, "losses": losses,
            "sign_test_p": p}


def _task(report: dict) -> dict:
    s = report["settings"]
    return {k: s.get(k) for k in SAME_TASK}


def _seeds(report: dict) -> list:
    """The seeds a validation trained each fold at (``--seeds``, else its one ``--seed``)."""
    s = report["settings"]
    return list(s.get("seeds") or [s.get("seed", (report.get("training") or {}).get("seed"))])


def setting_differences(base: dict, other: dict) -> list[str]:
    """``key: base -> other`` for every training setting (and the seeds) that differ."""
    from .validate import unseeded

    a, b = unseeded(base.get("training")) or {}, unseeded(other.get("training")) or {}
    out = [f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in [*a, *(k for k in b if k not in a)]
           if a.get(k) != b.get(k)]
    seeds_a, seeds_b = _seeds(base), _seeds(other)
    if seeds_a != seeds_b:
        out.append(f"seeds: {json.dumps(seeds_a)} -> {json.dumps(seeds_b)}")
    return out


def _label(report: dict, i: int) -> str:
    return f"#{i} {Path(report['path']).name or report['path']}"


def compare(paths: Sequence[str | Path], out: str | Path | None = None, *, force: bool = False,
            command: str | None = None) -> dict:
    """Compare the validations in ``paths`` (the first is the baseline); returns the report, also written
    to ``out`` (``comparison.json``, ``.md``, ``.csv``, ``.png``) when given. Its ``verdict`` is a list of lines.

    Examples
    --------
    >>> report = compare(["val_defaults", "val_hidden"])                    # doctest: +SKIP
    >>> report["recommended"]["label"], report["verdict"][-1]                # doctest: +SKIP
    """
    if len(paths) < 2:
        raise TrvaeError("compare needs at least two validation folders (the first is the baseline)")
    reports = [read_validation(p) for p in paths]
    resolved = [Path(r["path"]).resolve() for r in reports]
    if len(set(resolved)) != len(resolved):
        raise TrvaeError("the same validation folder is given twice")
    base = reports[0]
    base_folds = [f["cell_type"] for f in base["folds"]]
    for r in reports[1:]:
        diff = [k for k in SAME_TASK if _task(r).get(k) != _task(base).get(k)]
        if diff:
            raise TrvaeError(f"{r['path']} validated another task than {base['path']} (differs in "
                             f"{', '.join(diff)}): only validations of the same data and --from/--to compare")
        folds = [f["cell_type"] for f in r["folds"]]
        if sorted(folds) != sorted(base_folds):
            raise TrvaeError(f"{r['path']} has other folds than {base['path']} ({', '.join(folds)} against "
                             f"{', '.join(base_folds)}): validate the same --cell-types")
    if out is not None:
        from .outputs import check_target

        out = check_target(out, force, what="comparison folder", inputs=[base["settings"]["data"], *resolved],
                           marker=is_comparison_dir)
    scored = [setting_scores(r) for r in reports]
    order = {t: i for i, t in enumerate(base_folds)}
    for s in scored:
        s["folds"].sort(key=lambda row: order[row["cell_type"]])
    settings = []
    for i, (r, s) in enumerate(zip(reports, scored)):
        entry = {"label": _label(r, i), "path": r["path"], "training": r.get("training"),
                 "seeds": _seeds(r),
                 "differences": setting_differences(base, r) if i else [], **s}
        if i:
            entry["against_baseline"] = paired([row["criterion"] for row in scored[0]["folds"]],
                                               [row["criterion"] for row in s["folds"]])
        settings.append(entry)
    recommended = _recommend(settings)
    report = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
              "task": _task(base), "folds": base_folds, "criterion": CRITERION, "se_multiple": SE_MULTIPLE,
              "settings": settings, "recommended": recommended}
    report["verdict"] = _verdict(report)
    from .evaluation import analysis_versions

    report["versions"] = {**analysis_versions(),
                          "validations": {s["label"]: (r.get("versions") or {}).get("trvae") for s, r in
                                          zip(settings, reports)}}
    if out is not None:
        report["outputs"] = [str(p) for p in _write(Path(out), report)]
    return report


def _recommend(settings: list[dict]) -> dict:
    """The setting to train with (its label, folder and training settings) and why."""
    base = settings[0]

    def pick(s, why):
        return {"label": s["label"], "path": s["path"], "training": s["training"], "why": why}

    ranked = [s for s in settings if s["score"] is not None]
    best = max(ranked, key=lambda s: s["score"]) if ranked else base
    if best is base:
        return pick(base, "the baseline scores highest")
    lead = best["against_baseline"]
    if lead["mean"] is None:
        return pick(base, f"no fold scores both the baseline and {best['label']}")
    if lead["se"] is not None and lead["mean"] > SE_MULTIPLE * lead["se"]:
        return pick(best, f"it leads the baseline by {lead['mean']:+.3f}, more than {SE_MULTIPLE:g} standard errors "
                          f"({lead['se']:.3f}) over {lead['n']} folds")
    se = f"{lead['se']:.3f}" if lead["se"] is not None else "undefined"
    return pick(base, f"the best setting, {best['label']}, leads it by {lead['mean']:+.3f}, within {SE_MULTIPLE:g} "
                      f"standard errors ({se}) over {lead['n']} folds: not distinguishable on these folds")


def _f(v, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def judgement(lead: dict) -> str:
    """A paired comparison in words: beyond :data:`SE_MULTIPLE` standard errors either way, or not."""
    if lead["mean"] is None or lead["se"] is None:
        return "not comparable"
    if abs(lead["mean"]) > SE_MULTIPLE * lead["se"]:
        return f"{'better' if lead['mean'] > 0 else 'worse'} beyond {SE_MULTIPLE:g} se"
    return "not distinguishable"


def _verdict(report: dict) -> list[str]:
    k = len(report["folds"])
    lines = []
    for s in report["settings"]:
        what = "baseline" if not s["differences"] else "; ".join(s["differences"])
        line = (f"{s['label']} ({what}): score {_f(s['score'])} over {k} folds (DEG means {_f(s['r2_mean_degs'])}, "
                f"DEG variances {_f(s['r2_var_degs'])}, r of change {_f(s['change_pearson_all'])}; "
                f"{_f(s['epochs'], 0)} epochs, {_f(s['train_seconds'], 0)} s of training)")
        if "against_baseline" in s:
            a = s["against_baseline"]
            p = f", sign test p = {a['sign_test_p']:.2f}" if a["sign_test_p"] is not None else ""
            se = f" ± {a['se']:.3f}" if a["se"] is not None else ""
            diff = "—" if a["mean"] is None else f"{a['mean']:+.3f}"
            line += (f"; against the baseline {diff}{se} (se), better on {a['wins']} of {a['n']} folds{p}: "
                     f"{judgement(a)}")
        lines.append(line)
    rec = report["recommended"]
    lines.append(f"recommended: {rec['label']}: {rec['why']}")
    return lines


def is_comparison_dir(path: Path) -> bool:
    """A folder ``trvae compare --out`` wrote (it holds a ``comparison.json`` of this format)."""
    try:
        return json.loads((Path(path) / "comparison.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _markdown(report: dict) -> str:
    t = report["task"]
    lines = [f"# Settings compared on their validations: {t['from']} → {t['to']}", "",
             f"Data `{Path(t['data']).name}`; {len(report['folds'])} folds. Score: {report['criterion']}. "
             "Each setting is paired with the baseline (the first) fold by fold.", "", "## Verdict", ""]
    lines += [f"- {v}" for v in report["verdict"]]
    lines += ["", "## Score per fold (decode used)", "",
              "| cell type | " + " | ".join(s["label"] for s in report["settings"]) + " |",
              "|---" * (len(report["settings"]) + 1) + "|"]
    for i, fold in enumerate(report["folds"]):
        cells = [f"{_f(s['folds'][i]['criterion'])} ({s['folds'][i]['decode']})" for s in report["settings"]]
        lines.append(f"| {fold} | " + " | ".join(cells) + " |")
    lines += ["| **mean** | " + " | ".join(_f(s["score"]) for s in report["settings"]) + " |", ""]
    for s in report["settings"]:
        lines.append(f"- {s['label']}: `{s['path']}`; decodes: {s['decodes_by']}")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("setting", "path", "cell_type", "decode", "criterion", "r2_mean_degs", "r2_var_degs",
               "change_pearson_all", "epochs_run", "train_wall_seconds")


def _csv(report: dict) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for s in report["settings"]:
        for row in s["folds"]:
            writer.writerow({"setting": s["label"], "path": s["path"],
                             **{k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS[2:]}})
    return buf.getvalue()


def comparison_figure(report: dict):
    """Each setting's score per fold (the decode its rule gives the fold from the other folds), one line per
    setting, the baseline in black; the legend gives each mean. A matplotlib Figure (headless)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .plotting.figures import PALETTE

    folds = report["folds"]
    fig = Figure(figsize=(max(6.0, 1.8 + 0.9 * len(folds)), 3.4 + 0.18 * len(report["settings"])),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(folds))
    for i, s in enumerate(report["settings"]):
        ys = np.array([np.nan if r["criterion"] is None else r["criterion"] for r in s["folds"]], float)
        color = "black" if i == 0 else PALETTE[(i - 1) % len(PALETTE)]
        what = "baseline" if i == 0 else "; ".join(s["differences"]) or "the same settings"
        ax.plot(x, ys, marker="o" if i == 0 else "D^vs<>"[(i - 1) % 6], color=color, lw=1.6 if i == 0 else 1.0,
                ms=5, label=f"{s['label']} ({what}): {_f(s['score'])}")
    ax.set_xticks(x, folds, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("(R² DEG means + R² DEG vars) / 2", fontsize=8)
    ax.set_xlabel("held-out cell type", fontsize=8)
    ax.grid(axis="y", lw=0.4, alpha=0.5)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, frameon=False, loc="outside lower center")
    t = report["task"]
    fig.suptitle(f"each setting scored on the folds of its validation ({t['from']} → {t['to']}); "
                 f"recommended: {report['recommended']['label']}", fontsize=9)
    return fig


def _write(out: Path, report: dict) -> list[Path]:
    """comparison.json, .md, .csv and .png into ``out``: all of them or none (a new folder, or ours replaced)."""
    from .outputs import write_files
    from .report import report_json

    out.mkdir(parents=True, exist_ok=True)
    texts = {"comparison.json": report_json(report), "comparison.md": _markdown(report), "comparison.csv": _csv(report)}
    writers = {out / name: (lambda text: lambda tmp: tmp.write_text(text))(text) for name, text in texts.items()}
    fig = comparison_figure(report)
    writers[out / "comparison.png"] = lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight",
                                                              metadata={"Software": "trvae"})
    return write_files(writers)
