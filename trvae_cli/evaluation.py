"""``trvae evaluate``: score predicted cells against real ones, the way the trVAE paper does.

For one task (cells of ``cell_type`` moved from condition ``source`` to ``target``) the
real target cells are the truth, the real source cells the starting point. Each
prediction, and two references computed from the real data alone, gets:

- R² (``linregress(real, pred).rvalue ** 2``) of per-gene means and variances, for all
  genes and for the top-N DEGs (wilcoxon, real target vs real source), on the full sets
  and as mean ± sd over random subsamples (without replacement) of the predicted and
  real cells, as in the paper's Fig. 5-6;
- Pearson r of the predicted vs the real change of each gene's mean (on DEGs and all genes);
- MMD² (the training kernel) and the energy distance to the real target cells, in the
  PCA space of the real source and target cells;
- DEG recovery: the fraction of the real top-N DEGs that the prediction (ranked the same
  way against the real source cells) also puts in its top N.

The references: *identity* (the real source cells, "did nothing") and *mean shift* (the
source cells plus the mean target - source difference of the other cell types, clipped
at 0). A method that does not beat the mean shift is not worth training.

Examples
--------
>>> from trvae_cli.evaluation import evaluate
>>> from trvae_cli.report import report_frame
>>> report = evaluate(["model/control_to_stimulated_NK.h5ad"])     # doctest: +SKIP
>>> report_frame(report)                                            # doctest: +SKIP
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from . import metrics as M
from .data import anndata_io as io
from .errors import TrvaeError

FORMAT = "trvae-evaluation"
FORMAT_VERSION = 1
R2_METRICS = ("r2_mean_all", "r2_mean_degs", "r2_var_all", "r2_var_degs")
POINT_METRICS = ("change_pearson_degs", "change_pearson_all", "change_scale_degs", "mmd_pca", "edistance_pca",
                 "edistance_ratio", "deg_recovery")
IDENTITY, MEAN_SHIFT = "identity", "mean shift"


@dataclass
class Task:
    """What is scored: which real cells are the source, which the truth."""

    real: Path
    condition_key: str
    source: str
    target: str
    cell_type_key: str | None = None
    cell_type: str | None = None
    layer: str | None = None


@dataclass
class Candidate:
    label: str
    kind: str            # "prediction" | "reference"
    x: object            # cells x genes (dense or sparse), columns in the evaluation's gene order
    path: str | None = None
    note: str | None = None
    stream: int = 0
    in_sample: bool | None = None   # the real target cells were in its model's training data      # which random stream draws its subsamples (stable when others are added)


def provenance(adata) -> dict:
    """What ``trvae transform`` recorded in ``uns["trvae"]`` (empty for other predictions)."""
    info = adata.uns.get("trvae", {}) if hasattr(adata, "uns") else {}

    def plain(v):
        if isinstance(v, np.ndarray) and v.ndim:
            return v.tolist()
        return v.item() if hasattr(v, "item") else v

    return {k: plain(v) for k, v in dict(info).items()}


def resolve_task(pred_infos: Sequence[dict], real=None, condition_key=None, source=None, target=None,
                 cell_type_key=None, cell_type=None, layer=None) -> Task:
    """Fill what was not given from the first prediction's provenance; check the others agree."""
    first = pred_infos[0] if pred_infos else {}

    def pick(given, key, flag, required=True):
        if given is not None:
            return given
        value = first.get(key) or None
        if value is None and required:
            raise TrvaeError(f"{flag} not given and the prediction does not record it (it was not made by "
                             "trvae transform); pass it explicitly")
        return value

    task = Task(
        real=Path(pick(real, "data", "--real")),
        condition_key=pick(condition_key, "condition_key", "--condition"),
        source=pick(source, "from", "--from"),
        target=pick(target, "to", "--to"),
        cell_type_key=pick(cell_type_key, "cell_type_key", "--cell-type-key", required=False),
        cell_type=pick(cell_type, "cell_type", "--cell-type", required=False),
        layer=pick(layer, "layer", "--layer", required=False),
    )
    if task.source == task.target:
        raise TrvaeError(f"--from and --to are both {task.source!r}")
    for i, info in enumerate(pred_infos):
        for key, value, flag in (("from", task.source, "--from"), ("to", task.target, "--to")):
            recorded = info.get(key)
            if recorded and recorded != value:
                raise TrvaeError(f"prediction {i + 1} was transformed with {flag} {recorded!r}, "
                                 f"but this evaluation is for {flag} {value!r}")
        recorded_ct = info.get("cell_type")
        if recorded_ct and task.cell_type and recorded_ct != task.cell_type:
            raise TrvaeError(f"prediction {i + 1} holds {recorded_ct!r} cells, "
                             f"but this evaluation is for --cell-type {task.cell_type!r}")
    if task.cell_type is not None and not task.cell_type_key:
        raise TrvaeError("--cell-type needs --cell-type-key (the obs column of cell types)")
    return task


def _need_cells(n: int, what: str) -> None:
    if n < 2:
        raise TrvaeError(f"{what} has {n} cell{'s' if n != 1 else ''}; at least 2 are needed")


def _unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def default_label(path: Path, info: dict) -> str:
    """The model directory's name for a trvae prediction (plus its decode mode unless the default), else the file name."""
    from .config import DECODE_MODES

    model = info.get("model")
    if model:
        name = Path(model).name
        return f"{name} ({info['decode']})" if info.get("decode") not in (None, DECODE_MODES[0]) else name
    return path.stem


def load_predictions(paths: Sequence[str | Path], labels: Sequence[str] = ()) -> list[tuple[str, Path, object, dict]]:
    """(label, path, AnnData, provenance) for each prediction file."""
    if not paths:
        raise TrvaeError("give at least one --pred")
    if len(labels) > len(paths):
        raise TrvaeError(f"{len(labels)} --label for {len(paths)} --pred")
    out = []
    for i, p in enumerate(paths):
        p = Path(p)
        adata = io.read_h5ad(p)
        info = provenance(adata)
        label = labels[i] if i < len(labels) else default_label(p, info)
        out.append((label, p, adata, info))
    names = _unique_labels([o[0] for o in out])
    return [(n, *o[1:]) for n, o in zip(names, out)]


def in_sample(info: dict, task: "Task") -> bool | None:
    """Whether the real target cells ``task`` scores against were in the training data of the model
    that made a prediction (recorded in ``info``): True, False (held out with ``--exclude``), or None
    when it cannot be told (not a trvae prediction, the model gone, trained on other data)."""
    import json

    model = info.get("model")
    if not model or not (Path(model) / "config.json").is_file():
        return None
    try:
        data = json.loads((Path(model) / "config.json").read_text()).get("data", {})
    except (OSError, ValueError):
        return None
    trained_on = data.get("path")
    if not trained_on or Path(trained_on).resolve() != Path(task.real).resolve():
        return None
    if data.get("condition_key") not in (None, task.condition_key):
        return None
    excluded = {tuple(str(e).split(":", 1)) for e in data.get("exclude") or []}
    if task.cell_type is not None:
        if data.get("cell_type_key") not in (None, task.cell_type_key):
            return None
        return (task.cell_type, task.target) not in excluded
    return not any(condition == task.target for _, condition in excluded)


def _select(series, value) -> np.ndarray:
    return series.astype(str).values == value


def _real_groups(task: Task, gene_names: Sequence[str]):
    """Real source cells, real target cells, (other-type source, other-type target) and columns."""
    adata = io.read_h5ad(task.real)
    cond = io.require_obs_key(adata, task.condition_key, "condition")
    io.require_values(cond, [task.source, task.target], task.condition_key)
    in_type = np.ones(adata.n_obs, bool)
    if task.cell_type is not None:
        ct = io.require_obs_key(adata, task.cell_type_key, "cell-type")
        io.require_values(ct, [task.cell_type], task.cell_type_key)
        in_type = _select(ct, task.cell_type)
    columns = io.gene_indexer(adata.var_names, gene_names, data_name=str(task.real),
                              genes_name="the prediction's", prefix="gene set mismatch: ")
    matrix = io.get_matrix(adata, task.layer)
    is_src, is_dst = _select(cond, task.source), _select(cond, task.target)
    where = f" {task.cell_type_key}={task.cell_type!r}" if task.cell_type is not None else ""

    def rows(mask):
        x = matrix[np.flatnonzero(mask)]
        x = x[:, columns] if columns is not None else x
        return x.tocsr() if sp.issparse(x) else np.asarray(x)

    source, target = rows(in_type & is_src), rows(in_type & is_dst)
    _need_cells(source.shape[0], f"the real {task.condition_key}={task.source!r}{where} group")
    _need_cells(target.shape[0], f"the real {task.condition_key}={task.target!r}{where} group")
    name = "X" if task.layer is None else f"layer {task.layer!r}"
    io.check_finite(source, f"{name} of --real")
    io.check_finite(target, f"{name} of --real")
    others = None
    if task.cell_type is not None and (~in_type & is_src).any() and (~in_type & is_dst).any():
        others = (rows(~in_type & is_src), rows(~in_type & is_dst))
        for part in others:          # the mean shift is made of them
            io.check_finite(part, f"{name} of --real (the other cell types)")
    return source, target, others


def _prediction_matrix(label, adata, gene_names, task: Task):
    if [str(g) for g in adata.var_names] != list(gene_names):
        if sorted(map(str, adata.var_names)) != sorted(gene_names):
            raise TrvaeError(f"gene set mismatch: prediction {label!r} has different genes from the first prediction")
        adata = adata[:, list(gene_names)]
    keep = np.ones(adata.n_obs, bool)
    if task.cell_type is not None and task.cell_type_key in adata.obs:
        keep = _select(adata.obs[task.cell_type_key], task.cell_type)
    x = adata.X[np.flatnonzero(keep)] if not keep.all() else adata.X
    _need_cells(x.shape[0], f"prediction {label!r}" + (f" ({task.cell_type})" if task.cell_type else ""))
    io.check_finite(x, f"X of prediction {label!r}")
    return x.tocsr() if sp.issparse(x) else np.asarray(x)


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _pca(source, target, n_pcs: int, seed: int):
    """A PCA fitted on the real source and target cells (the shared space of the distances)."""
    from sklearn.decomposition import PCA

    fit_on = np.vstack([_dense(source), _dense(target)]).astype(np.float64)
    n = int(min(n_pcs, fit_on.shape[0] - 1, fit_on.shape[1]))
    return PCA(n_components=n, svd_solver="full", random_state=seed).fit(fit_on)


def summarise(values: np.ndarray, full: float) -> dict:
    """Mean ± sd over subsamples and the full-set value of one figure (what reports and titles show)."""
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "full": float(full), "n_subsamples": int(len(values))}


def score_candidate(c: Candidate, *, source, target, degs, real_idx, rng, fraction, n_subsamples,
                    pca, target_pcs, n_degs) -> dict:
    """Every figure of one prediction (or reference) against the real target cells."""
    pred = c.x
    pred_idx = M.subsample_indices(pred.shape[0], fraction, n_subsamples, rng)
    subs = M.subsampled_r2(target, pred, degs, real_idx, pred_idx)
    full_all, full_degs = M.r2_scores(target, pred), M.r2_scores(target, pred, degs)
    out: dict = {
        "r2_mean_all": summarise(subs["r2_mean_all"], full_all["r2_mean"]),
        "r2_mean_degs": summarise(subs["r2_mean_degs"], full_degs["r2_mean"]),
        "r2_var_all": summarise(subs["r2_var_all"], full_all["r2_var"]),
        "r2_var_degs": summarise(subs["r2_var_degs"], full_degs["r2_var"]),
    }
    src_mean, real_mean, pred_mean = M.gene_means(source), M.gene_means(target), M.gene_means(pred)
    out["change_pearson_degs"] = M.change_pearson(pred_mean[degs], real_mean[degs], src_mean[degs])
    out["change_pearson_all"] = M.change_pearson(pred_mean, real_mean, src_mean)
    out["change_scale_degs"] = M.change_scale(pred_mean[degs], real_mean[degs], src_mean[degs])
    pred_pcs = pca.transform(_dense(pred).astype(np.float64))
    out["mmd_pca"] = M.mmd(pred_pcs, target_pcs)
    out["edistance_pca"] = M.energy_distance(pred_pcs, target_pcs)
    if pred is source:
        out["deg_recovery"] = float("nan")   # the identity reference: the source has no DEGs against itself
    else:
        found = M.rank_degs(pred, source, np.arange(pred.shape[1]).astype(str), n_degs)
        out["deg_recovery"] = M.overlap_fraction(degs, found)
    return out


@dataclass
class Prepared:
    """Validated inputs of an evaluation: the task, the genes, the real groups, the candidates."""

    task: Task
    genes: list[str]
    source: object
    target: object
    candidates: list[Candidate]
    skipped: dict
    n_degs: int | None = None     # the top DEGs scored: --n-degs, at most the genes there are
    notes: list = field(default_factory=list)

    def degs(self, n: int) -> np.ndarray:
        """Column indices of the real top-``n`` DEGs (target vs source)."""
        return M.rank_degs(self.target, self.source, self.genes, n)


def degs_within(n_degs: int, n_genes: int) -> tuple[int, str | None]:
    """(the top DEGs to score, a note or None): ``n_degs``, at most the ``n_genes`` there are (a small
    panel at the default 100 scores every gene)."""
    if n_degs < 1:
        raise TrvaeError(f"--n-degs must be >= 1, got {n_degs}")
    if n_degs > n_genes:
        return n_genes, f"--n-degs {n_degs} is more than the {n_genes} genes: scoring the top {n_genes}"
    return n_degs, None


def prepare(preds: Sequence[str | Path], real=None, *, labels: Sequence[str] = (), condition_key=None,
            source=None, target=None, cell_type_key=None, cell_type=None, layer=None, n_degs: int | None = None,
            references: bool = True) -> Prepared:
    """Read and check the predictions and the real data (shared by evaluate and the plots)."""
    loaded = load_predictions(preds, labels)
    task = resolve_task([info for *_, info in loaded], real, condition_key, source, target,
                        cell_type_key, cell_type, layer)
    genes = [str(g) for g in loaded[0][2].var_names]
    io.require_unique_genes(genes, str(loaded[0][1]))
    notes = []
    if n_degs is not None:
        n_degs, note = degs_within(n_degs, len(genes))
        notes += [note] if note else []
    candidates = [Candidate(label, "prediction", _prediction_matrix(label, adata, genes, task), str(path),
                            stream=3 + i, in_sample=in_sample(info, task))
                  for i, (label, path, adata, info) in enumerate(loaded)]
    src, dst, others = _real_groups(task, genes)

    skipped = {}
    if references:
        ref = [Candidate(IDENTITY, "reference", src, note=f"the real {task.source} cells, unchanged", stream=1)]
        if others is not None:
            ref.append(Candidate(MEAN_SHIFT, "reference", M.mean_shift_prediction(src, *others),
                                 note=f"{task.source} cells + mean {task.target} - {task.source} of the other "
                                      "cell types, clipped at 0", stream=2))
        else:
            skipped[MEAN_SHIFT] = ("needs --cell-type (held-out cells) and other cell types in both conditions")
        candidates = ref + candidates

    return Prepared(task, genes, src, dst, candidates, skipped, n_degs, notes)


def evaluate(
    preds: Sequence[str | Path],
    real: str | Path | None = None,
    *,
    labels: Sequence[str] = (),
    condition_key: str | None = None,
    source: str | None = None,
    target: str | None = None,
    cell_type_key: str | None = None,
    cell_type: str | None = None,
    layer: str | None = None,
    n_degs: int = 100,
    n_subsamples: int = 100,
    subsample_fraction: float = 0.8,
    n_pcs: int = 50,
    seed: int = 0,
    references: bool = True,
    command: str | None = None,
) -> dict:
    """Score predictions (``.h5ad`` files) against the real cells; returns the report dict.

    Whatever a prediction's ``uns["trvae"]`` records (data file, condition key, from, to,
    cell type, layer) fills the arguments left as ``None``. The report is what
    ``--json`` writes: settings, versions, the DEGs and, per prediction and reference,
    every figure (R² as ``{"mean", "sd", "full", "n_subsamples"}``).

    Examples
    --------
    >>> report = evaluate(["nk_model/control_to_stimulated_NK.h5ad"], n_subsamples=20)   # doctest: +SKIP
    >>> report["results"][-1]["metrics"]["r2_mean_degs"]["mean"]                         # doctest: +SKIP
    """
    if n_subsamples < 1:
        raise TrvaeError(f"--n-subsamples must be >= 1, got {n_subsamples}")
    if not 0.0 < subsample_fraction <= 1.0:
        raise TrvaeError(f"--subsample-fraction must be in (0, 1], got {subsample_fraction}")
    if n_pcs < 1:
        raise TrvaeError(f"--n-pcs must be >= 1, got {n_pcs}")
    prep = prepare(preds, real, labels=labels, condition_key=condition_key, source=source, target=target,
                   cell_type_key=cell_type_key, cell_type=cell_type, layer=layer, n_degs=n_degs,
                   references=references)
    task, genes, candidates, src, dst = prep.task, prep.genes, prep.candidates, prep.source, prep.target
    skipped, n_degs = prep.skipped, prep.n_degs

    degs = M.rank_degs(dst, src, genes, n_degs)
    real_idx = M.subsample_indices(dst.shape[0], subsample_fraction, n_subsamples, np.random.default_rng([seed, 0]))
    pca = _pca(src, dst, n_pcs, seed)
    target_pcs = pca.transform(_dense(dst).astype(np.float64))
    source_e = M.energy_distance(pca.transform(_dense(src).astype(np.float64)), target_pcs)

    results = []
    for c in candidates:
        rng = np.random.default_rng([seed, c.stream])
        figures = score_candidate(c, source=src, target=dst, degs=degs, real_idx=real_idx, rng=rng,
                                  fraction=subsample_fraction, n_subsamples=n_subsamples, pca=pca,
                                  target_pcs=target_pcs, n_degs=n_degs)
        figures["edistance_ratio"] = figures["edistance_pca"] / source_e if source_e > 0 else float("nan")
        results.append({"label": c.label, "kind": c.kind, "path": c.path, "n_cells": int(c.x.shape[0]),
                        "note": c.note, "in_sample": c.in_sample, "metrics": figures})
    what = f"{task.cell_type + ' ' if task.cell_type else ''}{task.target} cells"
    notes = prep.notes + [f"{c.label}: the real {what} scored here were in its model's training data (not held "
                          f"out with --exclude), so its R² is in-sample, not a prediction of unseen cells"
                          for c in candidates if c.in_sample]

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or f"trvae_cli.evaluation.evaluate({[str(p) for p in preds]!r}, ...)",
        "task": {
            "real": str(task.real.resolve()), "condition_key": task.condition_key, "from": task.source,
            "to": task.target, "cell_type_key": task.cell_type_key, "cell_type": task.cell_type,
            "layer": task.layer, "n_real_source": int(src.shape[0]), "n_real_target": int(dst.shape[0]),
            "n_genes": len(genes),
        },
        "settings": {
            "n_degs": n_degs, "n_subsamples": n_subsamples, "subsample_fraction": subsample_fraction,
            "subsampling": "without replacement, predicted and real cells drawn independently",
            "n_pcs": int(pca.n_components_), "seed": seed,
            "r2": "scipy.stats.linregress(real, pred).rvalue ** 2 of per-gene means / variances (ddof 0)",
            "degs": "scanpy rank_genes_groups wilcoxon, real target vs real source, top n by score",
            "mmd": "biased MMD^2, 19-scale RBF kernel of training, in the PCA space of real source + target",
            "edistance": "Euclidean energy distance (V-statistic), same PCA space; ratio = / source's",
        },
        "degs": [genes[i] for i in degs],
        "skipped": skipped,
        "notes": notes,
        "results": results,
        "versions": analysis_versions(),
    }


def analysis_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"trvae": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "anndata", "scanpy", "scikit-learn", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = None
    return out
