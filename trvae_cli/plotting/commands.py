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
from ..errors import TrvaeError, note
from ..evaluation import R2_METRICS, prepare, provenance
from ..evaluation import summarise   # evaluate's mean ± sd of subsampled figures
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


def _recorded(pred: str | Path) -> dict:
    """The prediction's ``uns["trvae"]`` record, read without its matrix."""
    import anndata as ad

    adata = ad.read_h5ad(pred, backed="r")
    try:
        return provenance(adata)
    finally:
        adata.file.close()


def expression_scale(record: dict, layer: str | None) -> str:
    """What the values are, for axis labels: the matrix (X or the layer) and, where the
    prediction's record says so, its scale. ``residual_scale`` "counts" means transform found
    X to be log1p of normalised counts; "log1p" that it treated X as log1p values; "linear",
    none (mean or sample decoding) or no record at all leave the matrix's name alone."""
    matrix = f"layer {layer}" if layer else "X"
    scale = record.get("residual_scale") or ""
    if scale == "counts":
        return f"{matrix}, log1p-normalised counts"
    if scale == "log1p":
        return f"{matrix}, log1p scale"
    return matrix


def subsample_r2(prep, cand, degs: np.ndarray, *, n_subsamples: int, fraction: float, seed: int) -> dict:
    """R² over subsamples drawn exactly as :func:`trvae_cli.evaluation.evaluate` draws them (the
    real cells' stream ``[seed, 0]``, the candidate's ``[seed, stream]``): the same numbers as
    its report for this prediction. One array per ``R2_METRICS`` key."""
    real_idx = M.subsample_indices(prep.target.shape[0], fraction, n_subsamples, np.random.default_rng([seed, 0]))
    pred_idx = M.subsample_indices(cand.x.shape[0], fraction, n_subsamples,
                                   np.random.default_rng([seed, cand.stream]))
    return M.subsampled_r2(prep.target, cand.x, degs, real_idx, pred_idx)


def plot_regression(pred: str | Path, out: str | Path | None = None, *, variance: bool = False, n_degs: int = 100,
                    n_label: int = 10, n_subsamples: int = 100, subsample_fraction: float = 0.8, seed: int = 0,
                    force: bool = False, **task):
    """Per-gene mean (or variance) of real target cells vs predicted cells, DEGs highlighted.

    The points are the statistics of all cells. The R² in the title follows ``trvae evaluate``
    (same defaults): the mean ± sd over ``n_subsamples`` subsamples of ``subsample_fraction``
    of the cells, drawn as evaluate draws them; ``n_subsamples=0``: R² of the full sets.

    ``task``: ``real``, ``condition_key``, ``source``, ``target``, ``cell_type_key``,
    ``cell_type``, ``layer`` (each defaults to what the prediction records).

    Examples
    --------
    >>> fig = plot_regression("nk_model/control_to_stimulated_NK.h5ad", variance=True)  # doctest: +SKIP
    """
    if n_subsamples < 0:
        raise TrvaeError(f"--n-subsamples must be >= 0, got {n_subsamples}")
    if not 0.0 < subsample_fraction <= 1.0:
        raise TrvaeError(f"--subsample-fraction must be in (0, 1], got {subsample_fraction}")
    out = _check_out(out, force, pred, task.get("real"))
    prep = prepare([pred], n_degs=n_degs, references=False, **task)
    for message in prep.notes:      # e.g. --n-degs above the gene count, as evaluate says it
        note(message)
    cand = prep.candidates[0]
    stat = M.gene_variances if variance else M.gene_means
    real, predicted = stat(prep.target), stat(cand.x)
    degs = prep.degs(prep.n_degs)
    name = "variance" if variance else "mean"
    key = "var" if variance else "mean"
    full_all, full_degs = M.r2(real, predicted), M.r2(real[degs], predicted[degs])
    if n_subsamples:
        subs = subsample_r2(prep, cand, degs, n_subsamples=n_subsamples, fraction=subsample_fraction, seed=seed)
        r2_all, r2_degs = summarise(subs[f"r2_{key}_all"], full_all), summarise(subs[f"r2_{key}_degs"], full_degs)
        r2 = dict(r2_all=r2_all["mean"], r2_degs=r2_degs["mean"], r2_sd=(r2_all["sd"], r2_degs["sd"]),
                  r2_basis=f"mean ± sd over {n_subsamples} subsamples of {subsample_fraction:.0%} of the cells, "
                           "as trvae evaluate")
    else:
        r2 = dict(r2_all=full_all, r2_degs=full_degs, r2_basis="full sets of cells")
    t = prep.task
    scale = expression_scale(_recorded(pred), t.layer)
    quantity = f"{'expression variance' if variance else 'mean expression'} ({scale})"
    fig = regression_figure(
        real, predicted, prep.genes, degs, **r2, n_label=min(n_label, prep.n_degs), statistic=name,
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
    ylabel = f"{gene} expression ({expression_scale(_recorded(preds[0]), t.layer)})"
    return _finish(violin_figure(groups, title=f"{gene}, {_task_title(t)}", ylabel=ylabel), out)


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


def held_out_mask(obs, exclude: Sequence[str], group_key: str | None, condition_key: str) -> np.ndarray:
    """Which rows of ``obs`` are cells the model's ``--exclude GROUP:CONDITION`` kept out of
    training (all False when the data lack the columns)."""
    from ..data.anndata_io import parse_exclusions

    mask = np.zeros(len(obs), bool)
    if not exclude or not group_key or group_key not in obs or condition_key not in obs:
        return mask
    groups, conditions = obs[group_key].astype(str).values, obs[condition_key].astype(str).values
    for group, condition in parse_exclusions(exclude):
        mask |= (groups == group) & (conditions == condition)
    return mask


def held_out_text(exclude: Sequence[str]) -> str:
    """``held out from training (NK, stimulated)`` for ``["NK:stimulated"]``."""
    from ..data.anndata_io import parse_exclusions

    return "held out from training (" + "; ".join(f"{g}, {c}" for g, c in parse_exclusions(exclude)) + ")"


def plot_latent(model_dir: str | Path = "trvae_model", out: str | Path | None = None, *,
                data: str | Path | None = None, color: Sequence[str] | None = None, max_cells: int | None = None,
                seed: int = 0, force: bool = False):
    """UMAPs of the latent z and of the MMD layer, coloured by condition and cell type (Fig. 2).

    One row per space, one column per ``color`` key (default: the model's condition key and,
    when it has one, its cell-type key). Cells of the groups the model was trained without
    (``train --exclude``) get a black ring and a legend entry, when the data hold them.

    Examples
    --------
    >>> fig = plot_latent("nk_model", max_cells=2000)                                  # doctest: +SKIP
    """
    from ..api import embed
    from ..model_dir import read_config
    from ..sources import DataSetup

    out = _check_out(out, force, data, containers=[model_dir])
    setup = DataSetup.from_config(read_config(model_dir))
    emb = embed(model_dir, data, max_cells=max_cells, seed=seed)
    info = emb.uns["trvae"]
    keys = list(color) if color else [info["condition_key"]] + ([info["cell_type_key"]] if info["cell_type_key"] else [])
    for key in keys:
        if key not in emb.obs:
            raise TrvaeError(f"cannot colour by {key!r}: no such obs column")
    if emb.n_obs < 3:
        raise TrvaeError(f"{emb.n_obs} cells: too few for a UMAP")
    held = held_out_mask(emb.obs, setup.exclude, info["cell_type_key"], info["condition_key"])
    panels = []
    for rep, name in (("X_trvae", "latent z"), ("X_trvae_mmd", "MMD layer")):
        coords = umap_coordinates(emb.obsm[rep], seed)
        emb.obsm[rep + "_umap"] = coords
        for key in keys:
            panels.append((f"{name} ({emb.obsm[rep].shape[1]} dims), by {key}", coords, emb.obs[key].values, key))
    highlight = (held, f"{held_out_text(setup.exclude)}: {int(held.sum())} cells") if held.any() else None
    fig = embedding_figure(panels, ncols=len(keys), highlight=highlight)
    title = f"{Path(model_dir).name}: {emb.n_obs} cells"
    if setup.exclude and not held.any():
        title += f"; none {held_out_text(setup.exclude)}"
    fig.suptitle(title, fontsize=10)
    return _finish(fig, out)


#: the columns of history.csv drawn, with a readable panel title and y-axis label each
HISTORY_TERMS = {
    "loss": ("total loss{weights}", "η·recon. + α·KL + β·MMD"),
    "reconstruction": ("reconstruction error", "½ squared error, {kind}"),
    "kl": ("KL divergence", "KL(q(z|x) ‖ N(0, I)) per latent dim"),
    "mmd": ("MMD", "MMD between conditions{mmd_on}"),
    "learning_rate": ("learning rate", "learning rate"),
}
RECONSTRUCTION_KINDS = {"mse": "mean over genes", "sse": "sum over genes"}


def history_labels(cfg: dict) -> tuple[dict, dict]:
    """(panel titles, y-axis labels) of the history terms, the model's loss settings filled in."""
    model = cfg.get("model", {})
    weights = [f"{sym}={model[key]:g}" for sym, key in (("η", "eta"), ("α", "alpha"), ("β", "beta"))
               if isinstance(model.get(key), (int, float))]
    kind = model.get("reconstruction") or "mse"
    mmd_on = model.get("mmd_on") or cfg.get("training", {}).get("mmd_on")
    fill = {"weights": f" ({', '.join(weights)})" if weights else "", "kind": RECONSTRUCTION_KINDS.get(kind, kind),
            "mmd_on": f" ({mmd_on} layer)" if mmd_on and mmd_on != "none" else ""}
    names = {term: name.format(**fill) for term, (name, _) in HISTORY_TERMS.items()}
    ylabels = {term: label.format(**fill) for term, (_, label) in HISTORY_TERMS.items()}
    return names, ylabels


def plot_history(model_dir: str | Path = "trvae_model", out: str | Path | None = None, *, force: bool = False):
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
    res = cfg.get("result", {})
    names, ylabels = history_labels(cfg)
    fig = history_figure(rows, terms, best_epoch=res.get("best_epoch"), names=names, ylabels=ylabels,
                         title=f"{Path(model_dir).name}: {res.get('epochs_run', len(rows))} epochs, "
                               f"best {res.get('best_epoch')}, {res.get('train_seconds', '?')} s")
    return _finish(fig, out)


#: metric -> (panel, bar group): one panel per gene set, so each title says which genes it scores
COMPARE_NAMES = {"r2_mean_all": ("all genes", "mean"), "r2_var_all": ("all genes", "variance"),
                 "r2_mean_degs": ("top-{n} DEGs", "mean"), "r2_var_degs": ("top-{n} DEGs", "variance")}


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
    settings = [r["settings"] for r in loaded]
    n_degs = sorted({int(st["n_degs"]) for st in settings})
    n = "/".join(map(str, n_degs))
    order = sorted(metrics, key=lambda m: list(COMPARE_NAMES).index(m) if m in COMPARE_NAMES else len(COMPARE_NAMES))
    columns = [list(metrics).index(m) for m in order]
    groups = [COMPARE_NAMES[m][0].format(n=n) if m in COMPARE_NAMES else "" for m in order]
    names = [(m, COMPARE_NAMES[m][1] if m in COMPARE_NAMES else m) for m in order]
    basis = {(st["n_subsamples"], st["subsample_fraction"]) for st in settings}
    title = "R², mean ± sd"
    if len(basis) == 1:
        k, fraction = next(iter(basis))
        title += f" over {k} subsamples of {fraction:.0%} of the cells"
    if len(tasks) == 1:
        ct, src, dst = next(iter(tasks))
        title = f"{ct + ': ' if ct else ''}{src} → {dst}\n{title}"
    fig = compare_figure(labels, names, np.array(values, float)[:, columns], np.array(errors, float)[:, columns],
                         kinds=kinds, groups=groups, title=title)
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
