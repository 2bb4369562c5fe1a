"""Figure builders: arrays in, a matplotlib ``Figure`` out.

They use ``matplotlib.figure.Figure`` directly (no pyplot, no global state, no display),
so they work headless and in notebooks alike; :func:`save_figure` writes one to disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import TrvaeError

FORMATS = ("png", "pdf", "svg")
GREY, DEG_COLOUR, TOP_COLOUR = "#9a9a9a", "#1f77b4", "#d62728"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")


def figure_format(path: str | Path) -> str:
    """png, pdf or svg, from the file extension."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise TrvaeError(f"cannot tell the image format of {path}: use a .png, .pdf or .svg file name")
    return ext


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` (format from the extension) through the staged writer: never half-written."""
    from ..outputs import staged

    path = Path(path)
    fmt = figure_format(path)
    with staged(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight",
                    metadata={"Software": "trvae"} if fmt == "png" else None)
    return path


def _figure(width: float, height: float):
    """A pyplot-free figure on an Agg canvas (headless; it has a renderer for text placement)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _label_points(ax, xs: np.ndarray, ys: np.ndarray, names: Sequence[str], colour: str) -> list:
    """Text labels at the points, moved apart by adjustText (no two overlap), with leader lines."""
    from adjustText import adjust_text

    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    texts = [ax.text(x, y, str(name), fontsize=7, color=colour) for x, y, name in zip(xs, ys, names)]
    if texts:
        adjust_text(texts, x=xs, y=ys, ax=ax, expand=(1.15, 1.3), iter_lim=1000,
                    arrowprops=dict(arrowstyle="-", color=colour, lw=0.5))
    return texts


def regression_figure(real: np.ndarray, pred: np.ndarray, genes: Sequence[str], degs: np.ndarray, *,
                      r2_all: float, r2_degs: float, r2_sd: tuple[float, float] | None = None,
                      r2_basis: str = "full sets of cells", statistic: str = "mean", n_label: int = 10,
                      title: str = "", xlabel: str = "real", ylabel: str = "predicted"):
    """Per-gene ``statistic`` of real (x) vs predicted (y) cells, as in the paper's Fig. 5b-c.

    Every gene is a grey point, the top DEGs are blue, the first ``n_label`` DEGs red and
    labelled (placed by adjustText so that no two labels overlap); the line is the
    least-squares fit over all genes. The title gives R² (± ``r2_sd`` when given) and
    ``r2_basis``, what it was computed on.
    """
    from scipy import stats

    fig = _figure(5.6, 5.4)
    ax = fig.add_subplot()
    degs = np.asarray(degs, int)
    top = degs[:n_label]
    rest = np.setdiff1d(np.arange(len(real)), degs)
    ax.scatter(real[rest], pred[rest], s=6, c=GREY, alpha=0.6, linewidths=0, label="other genes", rasterized=True)
    ax.scatter(real[degs[n_label:]], pred[degs[n_label:]], s=10, c=DEG_COLOUR, alpha=0.8, linewidths=0,
               label=f"top-{len(degs)} DEGs" if len(degs) > n_label else None)
    ax.scatter(real[top], pred[top], s=18, c=TOP_COLOUR, linewidths=0, label=f"top-{len(top)} DEGs (labelled)")
    fit = stats.linregress(real, pred)
    lo, hi = float(min(real.min(), pred.min())), float(max(real.max(), pred.max()))
    xs = np.array([lo, hi])
    ax.plot(xs, fit.intercept + fit.slope * xs, color="black", lw=1, label=f"fit (slope {fit.slope:.2f})")
    ax.plot(xs, xs, color="black", lw=0.6, ls=":", label="y = x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    sd_all, sd_degs = ("", "") if r2_sd is None else (f" ± {r2_sd[0]:.3f}", f" ± {r2_sd[1]:.3f}")
    ax.set_title(f"{title}\nR² all genes = {r2_all:.3f}{sd_all}, top {len(degs)} DEGs = {r2_degs:.3f}{sd_degs}\n"
                 f"({r2_basis})".strip(), fontsize=9)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    _label_points(ax, real[top], pred[top], [genes[i] for i in top], TOP_COLOUR)
    return fig


def violin_figure(groups: Mapping[str, np.ndarray], *, title: str = "", ylabel: str = "expression"):
    """One violin per group (real source, real target, each prediction), as in Fig. 5d."""
    fig = _figure(max(3.5, 1.3 * len(groups) + 1.5), 4.2)
    ax = fig.add_subplot()
    names = list(groups)
    data = [np.asarray(groups[n], float) for n in names]
    parts = ax.violinplot(data, showmeans=True, showextrema=False)
    for body, colour in zip(parts["bodies"], PALETTE):
        body.set_facecolor(colour)
        body.set_alpha(0.55)
    parts["cmeans"].set(color="black", linewidth=1.4, label="mean")
    rng = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=3, c="black", alpha=0.35, linewidths=0,
                   rasterized=True, label="cells" if i == 1 else None)
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n={len(d)})" for n, d in zip(names, data)], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=2)
    ax.set_title(title, fontsize=10)
    return fig


def embedding_figure(panels: Sequence[tuple[str, np.ndarray, Sequence[str], str]], ncols: int = 2, *,
                     highlight: tuple[np.ndarray, str] | None = None):
    """Scatter panels ``(title, coords (n, 2), labels, legend title)``, coloured by label.

    ``highlight``: ``(boolean mask over the cells, legend text)``; those cells get a black
    ring in every panel, and the text an entry in a legend for the figure, below the panels
    (e.g. the cells held out from training).
    """
    import pandas as pd

    nrows = int(np.ceil(len(panels) / ncols))
    fig = _figure(5.2 * ncols, 4.4 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, coords, labels, legend) in zip(axes, panels):
        cats = pd.Categorical(np.asarray(labels, dtype=str))
        order = np.random.default_rng(0).permutation(len(coords))   # no category painted over the others
        colours = np.array([PALETTE[i % len(PALETTE)] for i in range(len(cats.categories))])
        ax.scatter(coords[order, 0], coords[order, 1], s=4, c=colours[cats.codes[order]], linewidths=0,
                   rasterized=True)
        for i, cat in enumerate(cats.categories):
            ax.scatter([], [], s=20, c=colours[i], label=str(cat))
        ax.legend(title=legend, fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False, markerscale=1)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        if highlight is not None and np.any(highlight[0]):
            mask = np.asarray(highlight[0], bool)
            ring = ax.scatter(coords[mask, 0], coords[mask, 1], s=16, facecolors="none", edgecolors="black",
                              linewidths=0.5)
    for ax in axes[len(panels):]:
        ax.remove()
    if highlight is not None and np.any(highlight[0]):
        fig.legend([ring], [highlight[1]], loc="outside lower center", fontsize=8, frameon=False)
    return fig


def history_figure(rows: Sequence[Mapping[str, float]], terms: Sequence[str], *, best_epoch: int | None = None,
                   names: Mapping[str, str] | None = None, ylabels: Mapping[str, str] | None = None,
                   title: str = ""):
    """One panel per loss term: training and validation per epoch, best epoch marked.

    ``names`` / ``ylabels``: panel title / y-axis label of each term (default: the term).
    One legend for the whole figure, below the panels.
    """
    names, ylabels = names or {}, ylabels or {}
    ncols = min(len(terms), 2)
    nrows = int(np.ceil(len(terms) / ncols))
    fig = _figure(4.6 * ncols, 3.0 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    epochs = np.array([r["epoch"] for r in rows], float)

    def column(key):
        return np.array([r.get(key, np.nan) if r.get(key) not in ("", None) else np.nan for r in rows], float)

    for ax, term in zip(axes, terms):
        train, val = column(term), column(f"val_{term}")
        ax.plot(epochs, train, lw=1.2, color=PALETTE[0], label="training")
        if np.isfinite(val).any():
            ax.plot(epochs, val, lw=1.2, color=PALETTE[1], label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="black", lw=0.8, ls=":", label=f"best epoch ({best_epoch})")
        positive = np.concatenate([train[np.isfinite(train)], val[np.isfinite(val)]])
        if len(positive) and positive.min() > 0 and positive.max() / positive.min() > 50:
            ax.set_yscale("log")
        ax.set_title(names.get(term, term), fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabels.get(term, term), fontsize=8)
    for ax in axes[len(terms):]:
        ax.remove()
    handles = {}
    for ax in axes[:len(terms)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def compare_figure(labels: Sequence[str], metrics: Sequence[tuple[str, str]], values: np.ndarray,
                   errors: np.ndarray, *, kinds: Sequence[str] = (), groups: Sequence[str] | None = None,
                   title: str = ""):
    """Grouped bars: one group per metric, one bar per label, ``errors`` as error bars (Fig. 5e).

    ``values`` and ``errors`` are (len(labels), len(metrics)); reference rows are hatched.
    ``groups``: a panel title per metric (e.g. "all genes", "top-100 DEGs"); the metrics of one
    group share a panel, in order of first appearance. One legend for the figure.
    """
    n, m = len(labels), len(metrics)
    values, errors = np.asarray(values, float).reshape(n, m), np.asarray(errors, float).reshape(n, m)
    groups = list(groups) if groups is not None else [""] * m
    panels = list(dict.fromkeys(groups))
    fig = _figure(max(5.0, 2.2 + m * (0.35 * n + 0.6) + 0.4 * len(panels)), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True).ravel()
    width = 0.8 / max(n, 1)
    for ax, panel in zip(axes, panels):
        cols = [j for j, g in enumerate(groups) if g == panel]
        x = np.arange(len(cols))
        for i, label in enumerate(labels):
            ref = i < len(kinds) and kinds[i] == "reference"
            ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(values[i, cols], nan=0.0), width,
                   yerr=np.nan_to_num(errors[i, cols], nan=0.0), capsize=2, color=PALETTE[i % len(PALETTE)],
                   alpha=0.45 if ref else 0.9, hatch="//" if ref else None, label=label, edgecolor="white")
        ax.set_xticks(x, [metrics[j][1] for j in cols], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(panel, fontsize=10)
        ax.grid(axis="y", lw=0.4, alpha=0.5)
        ax.set_axisbelow(True)
    axes[0].set_ylabel("R²")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="outside right center", frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def heatmap_figure(matrices: Sequence[np.ndarray], row_labels: Sequence[str], col_labels: Sequence[str],
                   panel_titles: Sequence[str], *, title: str = "", vmin: float | None = None,
                   vmax: float | None = 1.0):
    """Annotated heat maps side by side (rows x columns each), e.g. cell type x method (Fig. 5f)."""
    fig = _figure(0.9 * len(col_labels) * len(matrices) + 2.5, 0.45 * len(row_labels) + 1.8)
    axes = fig.subplots(1, len(matrices), squeeze=False).ravel()
    for ax, mat, panel in zip(axes, matrices, panel_titles):
        mat = np.asarray(mat, float)
        image = ax.imshow(np.ma.masked_invalid(mat), cmap="viridis", aspect="auto",
                          vmin=np.nanmin(mat) if vmin is None else vmin, vmax=vmax)
        lo, hi = image.get_clim()
        for (i, j), v in np.ndenumerate(mat):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > lo + 0.6 * (hi - lo) else "white")
        ax.set_xticks(range(len(col_labels)), col_labels, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
        ax.set_title(panel, fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def image_grid_figure(rows: Sequence[tuple[str, np.ndarray]], *, titles: Sequence[str] = (), title: str = ""):
    """One row of images per ``(label, (n, H, W, C) array in [0, 1])``; columns are items."""
    n_rows = len(rows)
    n_cols = max(len(images) for _, images in rows)
    fig = _figure(0.9 * n_cols + 1.2, 0.95 * n_rows + (0.4 if title else 0.1))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                img = np.clip(np.asarray(images[c], dtype=np.float32), 0.0, 1.0)
                if img.ndim == 3 and img.shape[-1] == 1:
                    ax.imshow(img[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                else:
                    ax.imshow(img, interpolation="nearest")
            if r == 0 and c < len(titles):
                ax.set_title(titles[c], fontsize=7)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
