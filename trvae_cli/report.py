"""The evaluate report as JSON, tidy CSV rows, a pandas DataFrame and a rich table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from .evaluation import POINT_METRICS, R2_METRICS


def _clean(value):
    """NaN -> None so the JSON is valid (JSON has no NaN)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def report_json(report: dict) -> str:
    return json.dumps(_clean(report), indent=2)


CSV_COLUMNS = ("label", "kind", "cell_type", "from", "to", "metric", "value", "sd", "full", "n_cells", "path")


def tidy_rows(report: dict) -> list[dict]:
    """One row per (prediction, metric): ``value`` is the subsample mean for R², else the figure."""
    t = report["task"]
    rows = []
    for r in report["results"]:
        for name in R2_METRICS + POINT_METRICS:
            v = r["metrics"].get(name)
            base = {"label": r["label"], "kind": r["kind"], "cell_type": t["cell_type"], "from": t["from"],
                    "to": t["to"], "metric": name, "n_cells": r["n_cells"], "path": r["path"]}
            if isinstance(v, dict):
                rows.append({**base, "value": v["mean"], "sd": v["sd"], "full": v["full"]})
            else:
                rows.append({**base, "value": v, "sd": None, "full": None})
    return rows


def report_frame(report: dict):
    """The tidy rows as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame(tidy_rows(report), columns=list(CSV_COLUMNS))


def report_csv(report: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in tidy_rows(report):
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and not np.isfinite(v)) else v)
                         for k, v in row.items()})
    return buf.getvalue()


def write_texts(files: dict[Path, str]) -> None:
    """Write every file or none (:func:`trvae_cli.outputs.write_files`)."""
    from .outputs import write_files

    write_files({Path(path): (lambda tmp, text=text: tmp.write_text(text)) for path, text in files.items()})


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    if isinstance(v, dict):
        return f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}"
    return f"{v:.{digits}f}"


def table_rows(n_degs: int) -> tuple[tuple[str, str], ...]:
    """(metric key, row title) of the evaluate table, in order."""
    return (
        ("r2_mean_degs", f"R² mean, top {n_degs} DEGs"), ("r2_mean_all", "R² mean, all genes"),
        ("r2_var_degs", f"R² variance, top {n_degs} DEGs"), ("r2_var_all", "R² variance, all genes"),
        ("change_pearson_degs", f"r of change, top {n_degs} DEGs"), ("change_pearson_all", "r of change, all genes"),
        ("change_scale_degs", f"size of change, top {n_degs} DEGs (1 = real)"),
        ("deg_recovery", f"DEG recovery (top {n_degs})"), ("mmd_pca", "MMD² to real (PCA)"),
        ("edistance_pca", "E-distance to real (PCA)"), ("edistance_ratio", "E-distance / source's"),
    )


def rich_table(report: dict):
    """The report as a rich Table: one row per figure, one column per reference and prediction."""
    from rich.table import Table

    t = report["task"]
    s = report["settings"]
    what = f"{t['cell_type']}: " if t["cell_type"] else ""
    table = Table(title=f"{what}{t['from']} → {t['to']}, against {t['n_real_target']} real {t['to']} cells "
                        f"(R²: mean ± sd over {s['n_subsamples']} subsamples of {s['subsample_fraction']:g})",
                  title_justify="left")
    table.add_column("")
    for r in report["results"]:
        style = "dim" if r["kind"] == "reference" else "bold"
        flag = "\n[yellow]in-sample[/yellow]" if r.get("in_sample") else ""
        table.add_column(f"[{style}]{r['label']}[/{style}]\n{r['n_cells']} cells{flag}", justify="right")
    for key, title in table_rows(s["n_degs"]):
        table.add_row(title, *[_fmt(r["metrics"].get(key)) for r in report["results"]])
    return table
