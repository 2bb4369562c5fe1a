"""The library functions behind ``trvae plot ...``: read the inputs, build a figure, write it.

Each returns the matplotlib ``Figure`` (and writes it when ``out`` is given), so a
notebook can show or restyle it.

Examples
--------
>>> from trvae_cli.plotting import plot_regression
>>> fig = plot_regression("model/control_to_stimulated_NK.h5ad", out="nk_mean.png")   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import metrics as M
from ..errors import TrvaeError
from ..evaluation import R2_METRICS, prepare
from .figures import (
    compare_figure, embedding_figure, figure_format, history_figure, image_grid_figure, regression_figure, save_figure,
    violin_figure,
)


def _check_out(out, force: bool, *inputs, containers=()) -> Path | None:
    """The figure's path: a known format, not an input (it may lie inside a ``containers`` folder,
    a model directory say), replacing only a file (with --force)."""
    if out is None:
        return None
    from ..outputs import check_target, is_plain_file

    figure_format(out)
    return check_target(out, force, what="figure", inputs=[i for i in inputs if i is not None],
                        containers=containers, marker=is_plain_file)


def _finish(fig, out: Path | None):
    if out is not None:
        save_figure(fig, out)
    return fig


def _task_title(task) -> str:
    what = f"{task.cell_type}: " if task.cell_type else ""
    return f"{what}{task.source} → {task.target}"


def plot_regression(pred: str | Path, out: str | Path | None = None, *, variance: bool = False, n_degs: int = 100,
                    n_label: int = 10, force: bool = False, **task):
    """Per-gene mean (or variance) of real target cells vs predicted cells, DEGs highlighted.

    ``task``: ``real``, ``condition_key``, ``source``, ``target``, ``cell_type_key``,
    ``cell_type``, ``layer`` (each defaults to what the prediction records).

    Examples
    --------
    >>> fig = plot_regression("nk_model/control_to_stimulated_NK.h5ad", variance=True)  # doctest: +SKIP
    """
    out = _check_out(out, force, pred, task.get("real"))
    prep = prepare([pred], n_degs=n_degs, references=False, **task)
    cand = prep.candidates[0]
    stat = M.gene_variances if variance else M.gene_means
    real, predicted = stat(prep.target), stat(cand.x)
    degs = prep.degs(n_degs)
    name = "variance" if variance else "mean"
    quantity = "expression variance" if variance else "mean expression"
    t = prep.task
    fig = regression_figure(
        real, predicted, prep.genes, degs, r2_all=M.r2(real, predicted), r2_degs=M.r2(real[degs], predicted[degs]),
        n_label=min(n_label, n_degs), statistic=name,
        title=f"{_task_title(t)}, per-gene {name} ({cand.label})",
        xlabel=f"real {t.target}: {quantity}", ylabel=f"predicted {t.target}: {quantity}")
    return _finish(fig, out)


def plot_gene(gene: str, preds: Sequence[str | Path], out: str | Path | None = None, *, labels: Sequence[str] = (),
              force: bool = False, **task):
    """Violins of one gene in the real source cells, the real target cells and each prediction.

    Examples
    --------
    >>> fig = plot_gene("ISG15", ["nk_model/control_to_stimulated_NK.h5ad"], out="isg15.png")  # doctest: +SKIP
    """
    out = _check_out(out, force, *preds, task.get("real"))
    prep = prepare(preds, labels=labels, references=False, **task)
    if gene not in prep.genes:
        raise TrvaeError(f"gene {gene!r} is not among the prediction's {len(prep.genes)} genes")
    j = prep.genes.index(gene)

    def column(x):
        col = x[:, j]
        return np.asarray(col.toarray() if hasattr(col, "toarray") else col, float).ravel()

    t = prep.task
    groups = {f"real {t.source}": column(prep.source), f"real {t.target}": column(prep.target)}
    for c in prep.candidates:
        groups[c.label] = column(c.x)
    return _finish(violin_figure(groups, title=f"{gene}, {_task_title(t)}", ylabel=f"{gene} expression"), out)


def umap_coordinates(x: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """2-D UMAP of ``x`` with scanpy (neighbours graph, then ``tl.umap``), seeded."""
    import warnings

    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(obsm={"rep": np.asarray(x, np.float32)}, obs={"i": np.arange(len(x)).astype(str)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.neighbors(a, use_rep="rep", n_neighbors=min(n_neighbors, len(x) - 1), random_state=seed)
        sc.tl.umap(a, random_state=seed)
    return np.asarray(a.obsm["X_umap"])


def plot_latent(model_dir: str | Path, out: str | Path | None = None, *, data: str | Path | None = None,
                color: Sequence[str] | None = None, max_cells: int | None = None, seed: int = 0,
                force: bool = False):
    """UMAPs of the latent z and of the MMD layer, coloured by condition and cell type (Fig. 2).

    One row per space, one column per ``color`` key (default: the model's condition key and,
    when it has one, its cell-type key).

    Examples
    --------
    >>> fig = plot_latent("nk_model", max_cells=2000)                                  # doctest: +SKIP
    """
    from ..api import embed

    out = _check_out(out, force, data, containers=[model_dir])
    emb = embed(model_dir, data, max_cells=max_cells, seed=seed)
    info = emb.uns["trvae"]
    keys = list(color) if color else [info["condition_key"]] + ([info["cell_type_key"]] if info["cell_type_key"] else [])
    for key in keys:
        if key not in emb.obs:
            raise TrvaeError(f"cannot colour by {key!r}: no such obs column")
    if emb.n_obs < 3:
        raise TrvaeError(f"{emb.n_obs} cells: too few for a UMAP")
    panels = []
    for rep, name in (("X_trvae", "latent z"), ("X_trvae_mmd", "MMD layer")):
        coords = umap_coordinates(emb.obsm[rep], seed)
        emb.obsm[rep + "_umap"] = coords
        for key in keys:
            panels.append((f"{name} ({emb.obsm[rep].shape[1]} dims), by {key}", coords, emb.obs[key].values, key))
    fig = embedding_figure(panels, ncols=len(keys))
    fig.suptitle(f"{Path(model_dir).name}: {emb.n_obs} cells", fontsize=10)
    return _finish(fig, out)


HISTORY_TERMS = ("loss", "reconstruction", "kl", "mmd")


def plot_history(model_dir: str | Path, out: str | Path | None = None, *, force: bool = False):
    """Loss curves of a trained model, one panel per term, training vs validation.

    Examples
    --------
    >>> fig = plot_history("nk_model")                                                # doctest: +SKIP
    """
    from ..model_dir import HISTORY_FILE, read_config

    out = _check_out(out, force, containers=[model_dir])
    cfg = read_config(model_dir)
    path = Path(model_dir) / HISTORY_FILE
    if not path.exists():
        raise TrvaeError(f"{path} not found")
    try:
        with open(path, newline="") as fh:
            rows = [{k: float(v) if v not in ("", None) else None for k, v in r.items() if k is not None}
                    for r in csv.DictReader(fh)]
    except (ValueError, TypeError, csv.Error, UnicodeDecodeError) as exc:
        raise TrvaeError(f"{path} is not a trvae history (a CSV of numbers per epoch): {exc}") from None
    if not rows:
        raise TrvaeError(f"{path} has no epochs")
    terms = [t for t in HISTORY_TERMS if t in rows[0]]
    if cfg.get("training", {}).get("mmd_on") == "none" and "mmd" in terms:
        terms.remove("mmd")
    if "learning_rate" in rows[0]:
        terms.append("learning_rate")
    res = cfg.get("result", {})
    fig = history_figure(rows, terms, best_epoch=res.get("best_epoch"),
                         title=f"{Path(model_dir).name}: {res.get('epochs_run', len(rows))} epochs, "
                               f"best {res.get('best_epoch')}, {res.get('train_seconds', '?')} s")
    return _finish(fig, out)


COMPARE_NAMES = {"r2_mean_all": "mean, all genes", "r2_mean_degs": "mean, top DEGs",
                 "r2_var_all": "variance, all genes", "r2_var_degs": "variance, top DEGs"}


def read_report(path: str | Path) -> dict:
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrvaeError(f"evaluation file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise TrvaeError(f"unreadable evaluation file {path}: {exc}") from None
    if not isinstance(report, dict) or report.get("format") != "trvae-evaluation":
        raise TrvaeError(f"not a trvae evaluate --json file: {path}")
    return report


def plot_compare(reports: Sequence[str | Path], out: str | Path | None = None, *,
                 metrics: Sequence[str] = R2_METRICS, references: bool = True, force: bool = False):
    """Bars of R² (mean ± sd over subsamples) for every prediction of one or more evaluations.

    References (identity, mean shift) are drawn once, hatched. Evaluations of different tasks
    (cell types, conditions) get the task in their labels.

    Examples
    --------
    >>> fig = plot_compare(["nk_eval.json", "cd4t_eval.json"], out="compare.pdf")      # doctest: +SKIP
    """
    out = _check_out(out, force, *reports)
    if not reports:
        raise TrvaeError("give at least one evaluation file")
    loaded = [read_report(p) for p in reports]
    tasks = {(r["task"]["cell_type"], r["task"]["from"], r["task"]["to"]) for r in loaded}
    labels, kinds, values, errors = [], [], [], []
    for report in loaded:
        t = report["task"]
        for res in report["results"]:
            if res["kind"] == "reference" and (not references or (len(tasks) == 1 and res["label"] in labels)):
                continue
            label = res["label"] if len(tasks) == 1 else f"{res['label']} ({t['cell_type'] or t['to']})"
            labels.append(label)
            kinds.append(res["kind"])
            values.append([res["metrics"][m]["mean"] if res["metrics"].get(m) else np.nan for m in metrics])
            errors.append([res["metrics"][m]["sd"] if res["metrics"].get(m) else np.nan for m in metrics])
    title = ""
    if len(tasks) == 1:
        ct, src, dst = next(iter(tasks))
        s = loaded[0]["settings"]
        title = (f"{ct + ': ' if ct else ''}{src} → {dst} (top {s['n_degs']} DEGs; "
                 f"mean ± sd over {s['n_subsamples']} subsamples)")
    fig = compare_figure(labels, [(m, COMPARE_NAMES.get(m, m)) for m in metrics], np.array(values, float),
                         np.array(errors, float), kinds=kinds, title=title)
    return _finish(fig, out)


def plot_images(pred_dir: str | Path, out: str | Path | None = None, *, truth: str | Path | None = None,
                n: int = 10, force: bool = False):
    """A grid of source / transformed / ground-truth images (the last when ``truth`` is given).

    ``pred_dir`` is what ``trvae transform`` wrote for images; ``truth`` is a folder in
    which the true target image of each source has the transformed image's relative path
    (for the sample digits: the data folder itself). ``n`` images, evenly spread.

    Examples
    --------
    >>> fig = plot_images("thick_2s", truth="sample_data/digits", n=8)                  # doctest: +SKIP
    """
    from ..data.images import read_image
    from ..sources.images import ARRAYS_FILE, META_FILE

    out = _check_out(out, force, truth, containers=[pred_dir])
    pred_dir = Path(pred_dir)
    arrays_path = pred_dir / ARRAYS_FILE
    if not arrays_path.exists():
        raise TrvaeError(f"{pred_dir} is not an image transform output (no {ARRAYS_FILE})")
    meta = json.loads((pred_dir / META_FILE).read_text()) if (pred_dir / META_FILE).exists() else {}
    with np.load(arrays_path) as z:
        images, sources, relpaths = z["images"], z["sources"], z["relpaths"]
    pick = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int))
    size, channels = images.shape[1:3], images.shape[3]

    def read(path):
        path = Path(path)
        if not path.exists():
            raise TrvaeError(f"image not found: {path}")
        return read_image(path, size, channels)

    rows = [(meta.get("from", meta.get("source", "source")), np.stack([read(sources[i]) for i in pick])),
            (f"→ {meta.get('to', meta.get('target', 'target'))}", images[pick])]
    if truth is not None:
        rows.append(("truth", np.stack([read(Path(truth) / relpaths[i]) for i in pick])))
    title = f"{meta.get('from', meta.get('source', '?'))} → {meta.get('to', meta.get('target', '?'))}"
    if meta.get("domain"):
        title += f", domain {meta['domain']}"
    fig = image_grid_figure(rows, titles=[Path(str(relpaths[i])).stem for i in pick], title=title)
    return _finish(fig, out)
