"""``trvae validate``: what R² to expect on a cell type the model never saw, measured before you trust it.

Leave one cell type out at a time. For every cell type T with cells in both conditions A
(``source``) and B (``target``): train on everything but T's B cells (``--exclude T:B``), transform
T's A cells to B with each decode mode, and score each prediction with
:func:`trvae_cli.evaluation.evaluate` against T's real B cells, next to evaluate's two references
(identity: the real A cells; mean shift: A cells + the mean B - A change of the other cell types).
The spread over the folds answers "how good is a prediction of an unseen cell type?", and the
folds (never the cell type being predicted) choose the decode mode that
``trvae transform --decode auto`` uses: the best mean over the folds of the average of the
DEG-mean and DEG-variance R² (ties: counterfactual). The folds also judge a rule per cell type
(:func:`~trvae_cli.validation_report.decode_rules`): each left-out fold decoded with the best mode
of its nearest other fold (the mean expression of the source cells, ``validation_centroids.npz``)
against one choice for the data set; where that wins, ``--decode auto --cell-type T`` takes the
best mode of the validated cell type nearest to T.

Each fold runs in its own process (``python -m trvae_cli.validate``: train, transform, evaluate),
``jobs`` at once, and writes ``OUT/folds/<T>.json`` atomically when it ends, so an interrupted
validation resumes with the same command; other settings are refused (one line naming what
differs) unless ``force`` starts over. Cost: one training per fold.

Layout of ``OUT``::

    validation.json   settings, versions, per fold every evaluate figure of every method,
                      the summary over folds, the verdict, chosen_decode
    validation.csv    one row per fold x method
    validation.md     the tables and the verdict
    validation.png    R² of DEG means and variances per fold: each decode vs identity and mean shift
    validation_centroids.npz  each fold's source cells' mean expression (cell_types, var_names, means)
    folds/            settings.json (what the folds are computed with), <T>.json per finished fold
    logs/<T>.log      each fold's own output (training progress, its error if it failed)
    models/<T>/       a fold's model and predictions, deleted once scored unless keep_models

Examples
--------
>>> from trvae_cli.validate import validate
>>> report = validate("kang.h5ad", "condition", "cell_type", "control", "stimulated", "kang_validation",
...                   settings={"epochs": 50})                                       # doctest: +SKIP
>>> print("\\n".join(report["verdict"]))                                              # doctest: +SKIP
>>> report["chosen_decode"]["chosen"]                                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .config import SCORED_DECODES, RunOptions, TrainSettings, resolve_settings
from .errors import Interrupted, TrvaeError
from .validation_report import (CENTROIDS, CRITERION, DATA_SET_RULE, EXPECTED_METRICS, NEAREST_RULE, REFERENCES,
                                entry_value, fold_entry, fold_value, merge_seeds, nearest_folds, read_centroids,
                                summarize, write_reports)

FORMAT = "trvae-validation"
FOLD_FORMAT = "trvae-validation-fold"
SETTINGS_FORMAT = "trvae-validation-settings"
FORMAT_VERSION = 1
#: The decode modes a validation can score (``auto`` is what it decides).
DECODES = SCORED_DECODES
DEFAULT_DECODES = ("counterfactual", "mean")
VALIDATION_DIR = "validation"      # MODEL_DIR/validation/ after ``trvae train --validate``
REPORT_NAMES = ("validation.json", "validation.csv", "validation.md", "validation.png", "validation_centroids.npz")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:     # pragma: no cover  (macOS)
        return os.cpu_count() or 1


def _file_name(cell_type: str) -> str:
    from .sources.base import safe_name

    return safe_name(cell_type)


# --------------------------------------------------------------------------- the folds

@dataclass
class Plan:
    """The folds (cell types with cells in both conditions), the cell types skipped and why, and
    the cells of each cell type in each condition."""

    folds: list[str]
    skipped: dict[str, str]
    counts: dict[str, dict[str, int]]
    n_genes: int


def plan_folds(data, condition_key: str, cell_type_key: str, source: str, target: str,
               cell_types: Sequence[str] | None = None) -> Plan:
    """Which cell types can be held out (read from obs only; X stays on disk).

    A fold needs at least 2 cells of its cell type in each condition (evaluate scores 2 or more),
    and the other cell types must hold cells of both conditions: at least 2 cell types must
    qualify. ``cell_types`` restricts the folds to those named.
    """
    from .data import anndata_io as io
    from .data.backed import read_backed

    adata, _ = read_backed(data)
    try:
        cond = io.require_obs_key(adata, condition_key, "condition")
        ct = io.require_obs_key(adata, cell_type_key, "cell-type")
        types = io.ordered_labels(adata, cell_type_key)
        n_genes = int(adata.n_vars)
    finally:
        if getattr(adata, "file", None) is not None:
            adata.file.close()
    if source == target:
        raise TrvaeError(f"--from and --to are both {source!r}")
    io.require_values(cond, [source, target], condition_key)
    if cell_types:
        io.require_values(ct, list(cell_types), cell_type_key)
        if len(set(cell_types)) != len(cell_types):
            raise TrvaeError(f"--cell-types lists a cell type twice: {', '.join(cell_types)}")
    cond_v, ct_v = cond.values, ct.values
    counts = {t: {c: int(np.sum((ct_v == t) & (cond_v == c))) for c in (source, target)} for t in types}
    usable, skipped = [], {}
    for t in types:
        missing = [c for c in (source, target) if counts[t][c] == 0]
        few = [c for c in (source, target) if counts[t][c] == 1]
        if missing:
            skipped[t] = f"no {' and no '.join(missing)} cells"
        elif few:
            skipped[t] = f"only 1 {few[0]} cell (evaluate needs 2)"
        else:
            usable.append(t)
    if len(usable) < 2:
        raise TrvaeError(f"leaving one cell type out needs at least 2 cell types with cells in both {source} and "
                         f"{target}; obs[{cell_type_key!r}] has {len(usable)}"
                         + (f" ({', '.join(usable)})" if usable else ""))
    if cell_types:
        folds = [t for t in cell_types if t in usable]
        skipped = {t: why for t, why in skipped.items() if t in cell_types}
        if not folds:
            raise TrvaeError(f"none of --cell-types {', '.join(cell_types)} has cells in both {source} and "
                             f"{target}: " + "; ".join(f"{t}: {why}" for t, why in skipped.items()))
    else:
        folds = usable
    names = [_file_name(t) for t in folds]
    if len(set(names)) != len(names):
        raise TrvaeError(f"cell types {', '.join(folds)} do not have distinct file names; rename them")
    return Plan(folds, skipped, counts, n_genes)


def fold_path(out: Path, cell_type: str) -> Path:
    return Path(out) / "folds" / f"{_file_name(cell_type)}.json"


def run_fold(spec: Mapping) -> dict:
    """One fold, in this process: train without the cell type's target cells, transform its source
    cells with each decode, evaluate, write the fold's JSON atomically; returns the record."""
    from . import api
    from .evaluation import evaluate
    from .outputs import staged
    from .report import _clean

    t0 = time.perf_counter()
    cell_type, model_dir = spec["cell_type"], Path(spec["model_dir"])
    api.train(spec["data"], spec["condition_key"], model_dir, cell_type_key=spec["cell_type_key"],
              exclude=spec["exclude"], layer=spec["layer"], backed=spec["backed"], settings=spec["settings"],
              preset=spec["preset"], options=RunOptions(progress="text", threads=spec["threads"], force=True,
                                                       command=spec["command"]))
    train_wall = time.perf_counter() - t0
    cfg = json.loads((model_dir / "config.json").read_text())
    preds = []
    for decode in spec["decodes"]:
        path = model_dir / f"{_file_name(cell_type)}_{decode}.h5ad"
        api.transform(model_dir, spec["data"], source=spec["source"], target=spec["target"], out=path,
                      cell_type=cell_type, condition_key=spec["condition_key"], cell_type_key=spec["cell_type_key"],
                      decode=decode, seed=spec["seed"], force=True, backed=spec["backed"],
                      command=f"{spec['command']} (fold {cell_type}: transform --decode {decode})")
        preds.append(path)
    t1 = time.perf_counter()
    report = evaluate(preds, labels=list(spec["decodes"]), n_degs=spec["n_degs"], n_subsamples=spec["n_subsamples"],
                      seed=spec["seed"], command=f"{spec['command']} (fold {cell_type}: evaluate)")
    held_out = [r["label"] for r in report["results"] if r["kind"] == "prediction" and r["in_sample"] is not False]
    if held_out:      # a fold that saw its own target cells would score nothing unseen
        raise TrvaeError(f"fold {cell_type}: the model's training data held the scored cells ({held_out})")
    record = {
        "format": FOLD_FORMAT, "format_version": FORMAT_VERSION, "cell_type": cell_type, "seed": int(spec["seed"]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": spec["compared"], "training": cfg["training"],
        "train_wall_seconds": round(train_wall, 2), "evaluate_seconds": round(time.perf_counter() - t1, 2),
        "seconds": round(time.perf_counter() - t0, 2), "threads": spec["threads"],
        "result": {k: cfg["result"].get(k) for k in ("epochs_run", "best_epoch", "train_seconds")},
        "model_versions": cfg.get("versions", {}),
        "evaluation": {k: report[k] for k in ("task", "settings", "degs", "skipped", "notes", "results", "versions")},
    }
    with staged(Path(spec["fold_file"])) as tmp:
        tmp.write_text(json.dumps(_clean(record), indent=2))
    if not spec["keep_models"]:
        shutil.rmtree(model_dir, ignore_errors=True)
    return record


def _fold_main(argv: Sequence[str]) -> int:
    """``python -m trvae_cli.validate SPEC_JSON``: one fold (what :func:`validate` starts)."""
    from .outputs import io_error

    spec = json.loads(argv[0])
    try:
        run_fold(spec)
    except TrvaeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"error: {io_error(exc)}", file=sys.stderr)
        return 74
    return 0


# --------------------------------------------------------------------------- the folder

def is_validation_dir(path: Path) -> bool:
    """A folder ``trvae validate`` writes (it holds ``folds/settings.json``)."""
    marker = Path(path) / "folds" / "settings.json"
    try:
        return marker.is_file() and json.loads(marker.read_text()).get("format") == SETTINGS_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in [*old, *(k for k in new if k not in old)]:
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]} {json.dumps(old)} (recorded) vs {json.dumps(new)} (now)"]


def _prepare_out(out: Path, compared: dict, force: bool) -> None:
    """Make ``out`` ready: new, or resumed (same settings), or started over (``force``, ours only)."""
    from .outputs import staged

    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise TrvaeError(f"output {out} is a file, not a validation folder: choose another --out")
        if is_validation_dir(out):
            if force:
                for name in ("folds", "logs", "models", *REPORT_NAMES):
                    if (out / name).is_dir():
                        shutil.rmtree(out / name, ignore_errors=True)
                    else:
                        (out / name).unlink(missing_ok=True)
            else:
                recorded = json.loads((out / "folds" / "settings.json").read_text())["settings"]
                diff = _differences(recorded, compared)
                if diff:
                    raise TrvaeError(f"{out} holds a validation with other settings ({'; '.join(diff)}): run it "
                                     "with the same settings to resume, --force to start over, or choose another --out")
        elif any(out.iterdir()):
            raise TrvaeError(f"validation folder {out} is a folder trvae did not write: choose another --out")
    for name in ("folds", "logs", "models"):
        (out / name).mkdir(parents=True, exist_ok=True)
    marker = out / "folds" / "settings.json"
    if not marker.is_file():
        with staged(marker) as tmp:
            tmp.write_text(json.dumps({"format": SETTINGS_FORMAT, "format_version": FORMAT_VERSION,
                                       "settings": compared}, indent=2))


def _finished(out: Path, units: Mapping[str, tuple[str, int]], compared: dict) -> dict[str, dict]:
    """The fold runs (``units``: {name: (cell type, seed)}) whose JSON is complete and was computed with
    these settings."""
    done = {}
    for key, (t, seed) in units.items():
        path = fold_path(out, key)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (record.get("format") == FOLD_FORMAT and record.get("cell_type") == t
                and record.get("seed", seed) == seed and not _differences(record.get("settings"), compared)):
            # (_differences reads a setting the record lacks as None: folds recorded before a setting
            # was added, at its None default, still count)
            done[key] = record
    return done


def fold_units(folds: Sequence[str], seeds: Sequence[int]) -> dict[str, tuple[str, int]]:
    """{name: (cell type, seed)} of every training a validation runs: the cell type's own name with one
    seed (the folder of a one-seed validation is as before), ``T.seedS`` with several."""
    if len(seeds) == 1:
        return {t: (t, int(seeds[0])) for t in folds}
    return {f"{t}.seed{s}": (t, int(s)) for t in folds for s in seeds}


# --------------------------------------------------------------------------- running the folds

def fold_command(spec: dict) -> list[str]:
    """A fold's process. ``-P``: ``-m`` would put the working directory first on ``sys.path``, so a
    ``trvae_cli`` folder there (another checkout) would train the folds instead of this code."""
    return [sys.executable, "-P", "-m", "trvae_cli.validate", json.dumps(spec)]


def _fold_env(threads: int) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                 "TF_NUM_INTEROP_THREADS"):
        env[name] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    root = str(Path(__file__).resolve().parents[1])      # the package, installed or not
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["no output"])[-1]


def _run_folds(pending: list[str], specs: dict[str, dict], out: Path, jobs: int, threads: int,
               on_done: Callable[[str, dict], None]) -> dict[str, str]:
    """Run the pending fold runs, ``jobs`` processes at once; {name: why} for those that failed.
    SIGTERM / SIGINT stop the running folds (finished ones stay) and raise :class:`Interrupted`."""
    from .engine.signals import Signals

    env = _fold_env(threads)
    queue, running, failed = list(pending), {}, {}
    with Signals() as signals:
        try:
            while queue or running:
                if signals.received:
                    raise Interrupted(f"{signals.received}: stopped; the finished folds are kept in {out / 'folds'}: "
                                      "run the same command again to resume")
                while queue and len(running) < jobs:
                    t = queue.pop(0)
                    log_path = out / "logs" / f"{_file_name(t)}.log"
                    with open(log_path, "w") as log:
                        proc = subprocess.Popen(fold_command(specs[t]), stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, env=env)
                    running[proc] = (t, log_path)
                for proc in [p for p in running if p.poll() is not None]:
                    t, log_path = running.pop(proc)
                    record = _finished(out, {t: (specs[t]["cell_type"], specs[t]["seed"])},
                                       specs[t]["compared"]).get(t)
                    if proc.returncode == 0 and record is not None:
                        on_done(t, record)
                    else:
                        failed[t] = f"{_last_line(log_path)} (exit {proc.returncode}; log: {log_path})"
                time.sleep(0.2)
        finally:
            for proc in running:
                proc.terminate()
            for proc in running:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return failed


# --------------------------------------------------------------------------- the entry points

def _resolve(settings, preset) -> TrainSettings:
    if isinstance(settings, TrainSettings):
        return resolve_settings(settings)
    return resolve_settings(preset=preset, given=settings)


def validate(
    data,
    condition_key: str,
    cell_type_key: str,
    source: str,
    target: str,
    out: str | Path = "trvae_validation",
    *,
    cell_types: Sequence[str] | None = None,
    decodes: Sequence[str] = DEFAULT_DECODES,
    jobs: int | None = None,
    threads: int | None = None,
    settings: TrainSettings | Mapping | None = None,
    preset: str | None = None,
    exclude: Sequence[str] = (),
    layer: str | None = None,
    backed: bool = False,
    n_degs: int = 100,
    n_subsamples: int = 100,
    seeds: Sequence[int] | None = None,
    keep_models: bool = False,
    force: bool = False,
    log: Callable[[str], None] | None = _say,
    command: str | None = None,
) -> dict:
    """Leave each cell type out in turn, predict it, score it; write ``out`` and return the report.

    Parameters
    ----------
    data, condition_key, cell_type_key
        An ``.h5ad`` path (the folds read it in their own processes) and its obs columns.
    source, target
        The conditions A and B: every fold predicts one cell type's B cells from its A cells.
    out
        The validation folder (see the module's layout). An existing one resumes when its settings
        are these, is refused otherwise; ``force`` starts it over (only a folder trvae wrote).
    cell_types
        Hold out only these (default: every cell type with cells in both conditions).
    decodes
        The ``trvae transform --decode`` modes to score (each becomes a method of every fold).
    jobs, threads
        Folds at once (default: one per 2 cores) and CPU threads of each (default: the cores
        split evenly between the jobs).
    settings, preset, layer, backed
        As :func:`trvae_cli.api.train`; the same for every fold. ``exclude``: also left out of
        every fold's training (what the final model will not see either).
    n_degs, n_subsamples
        :func:`trvae_cli.evaluation.evaluate`'s (``n_degs`` is capped at the number of genes).
    seeds
        Train every fold once per seed and average each of its figures over them before the summary
        (default: the settings' one seed). A fold's figures move by a seed's noise (on Kang, ± 0.07 on
        CD14+Mono's DEG variances), which one seed per fold cannot average out; each seed costs
        another training per fold.
    keep_models
        Keep ``out/models/<T>/`` (each fold's model and predictions) instead of deleting it.
    log
        Where the human lines go (default: stderr); None says nothing.

    Returns
    -------
    The report written to ``out/validation.json``: ``settings``, ``cell_types`` (folds, skipped
    and why), ``folds`` (per fold and method every evaluate figure), ``summary`` (per method and
    metric: mean, sd over folds, per-fold values, how often each decode beats each reference),
    ``verdict`` (the lines said on stderr), ``chosen_decode``; and ``outputs``, the files written.
    """
    from .data.anndata_io import check_h5ad_path
    from .outputs import check_target, claim
    from .sources import looks_like_images

    say = log or (lambda line: None)
    if not isinstance(data, (str, Path)):
        raise TrvaeError("validate needs an .h5ad path: each fold reads the data in its own process")
    if looks_like_images(data):
        raise TrvaeError("validate holds out cell types of .h5ad cells; image input is not supported")
    check_h5ad_path(data)
    decodes = list(decodes)
    bad = [d for d in decodes if d not in DECODES]
    if not decodes or bad or len(set(decodes)) != len(decodes):
        raise TrvaeError(f"--decodes must list distinct modes of {', '.join(DECODES)}, got {','.join(decodes)!r}")
    for name, value in (("--jobs", jobs), ("--threads", threads)):
        if value is not None and value < 1:
            raise TrvaeError(f"{name} must be >= 1, got {value}")
    if n_subsamples < 1 or n_degs < 1:
        raise TrvaeError("--n-degs and --n-subsamples must be >= 1")
    resolved = _resolve(settings, preset)
    seeds = [int(s) for s in seeds] if seeds else [int(resolved.seed)]
    if len(set(seeds)) != len(seeds) or any(not 0 <= s < 2**32 for s in seeds):
        raise TrvaeError(f"--seeds must be distinct integers in [0, 2**32), got {','.join(map(str, seeds))}")
    plan = plan_folds(data, condition_key, cell_type_key, source, target, cell_types)
    units = fold_units(plan.folds, seeds)
    names = [_file_name(u) for u in units]
    if len(set(names)) != len(names):
        raise TrvaeError(f"the fold runs {', '.join(units)} do not have distinct file names; rename the cell types")
    from .evaluation import degs_within

    n_degs, note = degs_within(n_degs, plan.n_genes)
    notes = [f"note: {note}"] if note else []       # said once the output has passed its checks, not before an error
    out = Path(out)
    check_target(out, True, what="validation folder", inputs=[data])   # never the data, nor around it
    data_path = Path(data).resolve()
    compared = {"data": str(data_path), "data_bytes": data_path.stat().st_size, "condition_key": condition_key,
                "cell_type_key": cell_type_key, "from": source, "to": target, "cell_types": plan.folds,
                "exclude": list(exclude), "layer": layer, "backed": bool(backed), "decodes": decodes,
                "n_degs": int(n_degs), "n_subsamples": int(n_subsamples), "training": resolved.to_dict()}
    if len(seeds) > 1:      # a one-seed folder keeps the settings it always had (and stays resumable)
        compared["seeds"] = seeds
    command = command or (f"trvae_cli.validate.validate({str(data)!r}, {condition_key!r}, {cell_type_key!r}, "
                          f"{source!r}, {target!r}, {str(out)!r}, ...)")
    with claim(out):
        _prepare_out(out, compared, force)
        done = _finished(out, units, compared)
        pending = [u for u in units if u not in done]
        cores = _cores()
        jobs_now = max(1, min(jobs or max(1, cores // 2), len(pending) or 1))
        threads_each = threads or max(1, cores // jobs_now)
        k = len(plan.folds)
        n_runs = len(units)
        for line in notes:
            say(line)
        for t, why in plan.skipped.items():
            say(f"skipping {t}: {why}")
        what = (f"validate trains {n_runs} model{'s' if n_runs != 1 else ''} (one per cell type with both conditions"
                + (f", at each of {len(seeds)} seeds" if len(seeds) > 1 else "") + f": {', '.join(plan.folds)})")
        at_once = f"{jobs_now} at a time, {threads_each} thread{'s' if threads_each != 1 else ''} each"
        if done:
            took = float(np.median([r["train_wall_seconds"] for r in done.values()]))
            left = len(pending) * took / jobs_now
            say(f"{what}; one training of this data took ~{took:.0f} s here; {len(done)} of {n_runs} "
                f"{'folds' if len(seeds) == 1 else 'fold runs'} already done "
                f"({', '.join(done)})" + (f": about {_duration(left)} left ({at_once})" if pending else ""))
        else:
            say(f"{what}: about {n_runs} times one `trvae train` of this data ({at_once})")
        specs = {u: {"cell_type": t, "data": str(data_path), "condition_key": condition_key,
                     "cell_type_key": cell_type_key, "source": source, "target": target,
                     "exclude": [*exclude, f"{t}:{target}"], "layer": layer, "backed": bool(backed),
                     "settings": {**resolved.to_dict(), "seed": s}, "preset": preset, "decodes": decodes,
                     "n_degs": int(n_degs), "n_subsamples": int(n_subsamples), "seed": s, "threads": threads_each,
                     "model_dir": str((out / "models" / _file_name(u)).resolve()),
                     "fold_file": str(fold_path(out, u).resolve()), "keep_models": bool(keep_models),
                     "compared": compared, "command": command}
                 for u, (t, s) in units.items() if u in pending}
        started = time.perf_counter()
        finished_now: list[str] = []

        def on_done(u: str, record: dict) -> None:
            done[u] = record
            finished_now.append(u)
            t, s = units[u]
            line = (f"[{len(done)}/{n_runs}] {t}" + (f" (seed {s})" if len(seeds) > 1 else "")
                    + f": trained in {record['train_wall_seconds']:.0f} s "
                    f"({record['result']['epochs_run']} epochs), scored: R² DEG means "
                    + ", ".join(f"{m} {fold_value(record, m, 'r2_mean_degs'):.3f}" for m in [*decodes, *REFERENCES]))
            remaining = len(pending) - len(finished_now)
            if remaining:      # at the pace of the folds finished so far
                line += f"; about {_duration((time.perf_counter() - started) / len(finished_now) * remaining)} left"
            say(line)

        failed = _run_folds(pending, specs, out, jobs_now, threads_each, on_done) if pending else {}
        if failed:
            raise TrvaeError(f"{len(failed)} of {n_runs} fold runs failed (the others are kept; the same command "
                             "retries them): " + "; ".join(f"{t}: {why}" for t, why in failed.items()))
        records = [merge_seeds([done[u] for u, (t2, _) in units.items() if t2 == t]) for t in plan.folds]
        from .evaluation import analysis_versions

        centroids = source_centroids(data_path, condition_key, cell_type_key, source, plan.folds, layer, backed)
        decided = summarize(records, decodes, nearest_folds(centroids["means"], plan.folds))
        report = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "settings": {**compared, "preset": preset or "trvae", "seed": int(resolved.seed), "seeds": seeds,
                         "jobs": jobs_now,
                         "threads": threads_each, "keep_models": bool(keep_models),
                         "r2": "evaluate's R²: squared Pearson of per-gene means / variances, mean over subsamples",
                         "sd": "over the folds, ddof 1"},
            # the folds' settings, with the seed of the model they are for (a fold seed is a replicate)
            "training": {**records[0]["training"], "seed": int(resolved.seed)},
            "cell_types": {"folds": plan.folds, "skipped": plan.skipped, "counts": plan.counts},
            "folds": [fold_entry(r) for r in records],
            **decided,
            "versions": {**records[0].get("model_versions", {}), **analysis_versions()},
        }
        written = write_reports(out, report, centroids)
        report["outputs"] = [str(p) for p in written]    # returned, not written: the folder may move (train --validate)
        if not keep_models:
            shutil.rmtree(out / "models", ignore_errors=True)
    for line in report["verdict"]:
        say(line)
    return report


def rows_mean(src, rows: np.ndarray) -> np.ndarray:
    """The mean expression of ``rows`` of a cell source (float64 sums, block by block, in its column order)."""
    return sum(block.sum(0, dtype=np.float64) for block in src.blocks(rows)) / len(rows)


def source_centroids(data, condition_key: str, cell_type_key: str, source: str, cell_types: Sequence[str],
                     layer: str | None = None, backed: bool = False) -> dict:
    """The mean expression (:func:`rows_mean`) of each cell type's ``source`` cells: where a new cell
    type's nearest validated cell type is looked up (:func:`decode_choice`)."""
    from .sources import open_source

    src = open_source(str(data), kind="cells", layer=layer, backed=backed)
    try:
        obs = src.adata.obs
        cond, ct = obs[condition_key].astype(str).values, obs[cell_type_key].astype(str).values
        means = []
        for t in cell_types:
            means.append(rows_mean(src, np.flatnonzero((cond == source) & (ct == t))))
        return {"cell_types": list(cell_types), "var_names": [str(g) for g in src.adata.var_names],
                "means": np.asarray(means, np.float64)}
    finally:
        src.close()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def side_folder(model_dir: Path) -> Path:
    """Where ``trvae train --validate`` runs the folds before the final model exists (resumable)."""
    model_dir = Path(model_dir)
    return model_dir.parent / f".{model_dir.name}.trvae-validation"


def train_with_validation(data, condition_key: str, out: str | Path, *, cell_type_key: str, source: str,
                          target: str, exclude: Sequence[str] = (), layer: str | None = None, backed: bool = False,
                          settings: Mapping | TrainSettings | None = None, preset: str | None = None,
                          options: RunOptions | None = None, cell_types: Sequence[str] | None = None,
                          decodes: Sequence[str] = DEFAULT_DECODES, jobs: int | None = None, n_degs: int = 100,
                          n_subsamples: int = 100, seeds: Sequence[int] | None = None,
                          log: Callable[[str], None] | None = _say, command: str | None = None) -> Path:
    """``trvae train --validate``: the validation folds with the same settings, then the final model
    into ``out`` as :func:`~trvae_cli.api.train` trains it, with the validation in ``out/validation/``
    (what ``trvae transform --decode auto`` reads).

    The folds run in ``.OUT.trvae-validation`` beside ``out`` (the model directory is written whole,
    at the end) and move into it once the model is saved; an interrupted run resumes them.
    ``options.force`` replaces the model directory and starts the validation over.
    """
    from . import api
    from .outputs import check_target, is_model_dir

    o = (options or RunOptions()).validate()
    out = Path(out)
    if not isinstance(data, (str, Path)) or not Path(data).exists():
        raise TrvaeError(f"data file not found: {data}" if isinstance(data, (str, Path))
                         else "--validate needs an .h5ad path")
    if condition_key is None:
        raise TrvaeError("--condition is required for .h5ad input (the obs column of the conditions)")
    if not cell_type_key or not source or not target:
        raise TrvaeError("--validate needs --cell-type-key, --from and --to (the cell types to hold out, the "
                         "conditions to predict from and to)")
    if o.resume or o.strategy != "none":
        raise TrvaeError("--validate cannot be combined with --resume or --strategy (run the validation and the "
                         "final training separately: trvae validate, then trvae train)")
    check_target(out, o.force, what="model directory", inputs=[data], marker=is_model_dir)   # before k trainings
    side = side_folder(out)
    validate(data, condition_key, cell_type_key, source, target, side, cell_types=cell_types, decodes=decodes,
             jobs=jobs, threads=o.threads, settings=settings, preset=preset, exclude=exclude, layer=layer,
             backed=backed, n_degs=n_degs, n_subsamples=n_subsamples, seeds=seeds, force=o.force, log=log,
             command=command)
    (log or (lambda line: None))(f"validation done; training the final model into {out}")
    path = api.train(data, condition_key, out, cell_type_key=cell_type_key, exclude=exclude, layer=layer,
                     backed=backed, settings=settings, preset=preset, options=o)
    if path is not None:
        os.replace(side, Path(path) / VALIDATION_DIR)
    return path


def check_attachable(validation: str | Path, settings=None, preset: str | None = None, data=None) -> dict:
    """The validation report of folder ``validation`` (``trvae validate --out``, or a model directory of
    ``train --validate``) if it validated ``data`` (a path; in-memory data are not checked) with these
    settings (the seed aside), else a one-line error naming what differs: what ``trvae train
    --validation DIR`` checks before training."""
    from .compare import read_validation

    report = read_validation(validation)
    if isinstance(data, (str, Path)):
        recorded = Path(report["settings"].get("data", ""))
        same = recorded.is_file() and Path(data).is_file() and os.path.samefile(recorded, data)
        if not same:
            raise TrvaeError(f"--validation {validation} validated another data file ({recorded}), not {data}")
    want, have = unseeded(_resolve(settings, preset).to_dict()), unseeded(report.get("training"))
    if want != have:
        diff = [f"{k}: {json.dumps((have or {}).get(k))} (validated) vs {json.dumps(want.get(k))} (now)"
                for k in [*want, *(k for k in (have or {}) if k not in want)] if (have or {}).get(k) != want.get(k)]
        raise TrvaeError(f"--validation {validation} was trained with other settings ({'; '.join(diff[:3])}"
                         + (f" and {len(diff) - 3} more" if len(diff) > 3 else "") + "): train with its settings, "
                         "or validate these")
    return report


def attach_validation(validation: str | Path, model_dir: str | Path) -> Path:
    """Copy a validation's reports and fold files into ``MODEL_DIR/validation/`` (what ``--decode auto``
    reads), whole or not at all; an existing ``validation/`` of the model is replaced."""
    from .compare import read_validation
    from .outputs import staged

    src = Path(read_validation(validation)["path"])
    dest = Path(model_dir) / VALIDATION_DIR
    with staged(dest, directory=True) as tmp:
        for name in REPORT_NAMES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        if (src / "folds").is_dir():
            shutil.copytree(src / "folds", tmp / "folds")
    return dest


def unseeded(training) -> dict | None:
    """Training settings without the seed: a validation at other seeds (``--seeds``) still applies.
    A setting at ``None`` is left out too: that is the default of a setting added later
    (``encoder_hidden``), which an older record lacks, and both mean the same network."""
    if not isinstance(training, dict):
        return None
    return {k: v for k, v in training.items() if k != "seed" and v is not None}


def validation_path(model_dir: str | Path) -> Path:
    """Where a model directory holds its validation (``trvae train --validate``)."""
    return Path(model_dir) / VALIDATION_DIR / "validation.json"


def model_validation(model_dir: str | Path, cfg: Mapping, *, source: str, target: str) -> tuple[dict | None, str]:
    """(the validation the model holds, "") when it validated this ``source`` -> ``target`` with the
    model's own training settings (the seed may differ); else (None, why not)."""
    path = validation_path(model_dir)
    if not path.is_file():
        return None, "the model holds no validation result (trvae train --validate)"
    try:
        v = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, f"{path} is unreadable"
    if not isinstance(v, dict) or v.get("format") != FORMAT or not (v.get("chosen_decode") or {}).get("chosen"):
        return None, f"{path} is not a trvae validation result"
    s = v.get("settings", {})
    if (s.get("from"), s.get("to")) != (source, target):
        return None, f"the validation predicted {s.get('from')} -> {s.get('to')}, not {source} -> {target}"
    if unseeded(v.get("training")) != unseeded(cfg.get("training")):
        return None, "the validation's training settings are not the model's"
    return v, ""


def expected_quality(report: Mapping, decode: str, *, group: str | None = None,
                     nearest: str | None = None) -> dict | None:
    """What a validation measured for ``decode`` on cell types it held out, for a transform to say how
    far to trust its prediction: per metric of :data:`EXPECTED_METRICS`, the mean and sd over the
    folds (the verdict's figures: subsample means), and how many folds; then the figures of the fold
    of ``nearest`` (the validated cell type nearest to the cells predicted, when the decode rule
    found it) and of ``group``'s own fold (when the cell type predicted was validated: held out there).
    None when the validation did not score ``decode``."""
    summary = (report.get("summary") or {}).get(decode)
    if not summary:
        return None
    out: dict = {"decode": decode, "folds": len(report.get("folds", [])),
                 "over_folds": {m: {k: float(summary[m][k]) for k in ("mean", "sd") if summary[m].get(k) is not None}
                                for m in EXPECTED_METRICS if isinstance(summary.get(m), dict)}}
    folds = {f["cell_type"]: f for f in report.get("folds", [])}
    for key, cell_type in (("nearest", nearest), ("own_fold", group)):
        if cell_type in folds:
            out[key] = {"cell_type": cell_type,
                        **{m: entry_value(folds[cell_type], decode, m) for m in EXPECTED_METRICS}}
    return out


def decode_choice(model_dir: str | Path, cfg: Mapping, *, source: str, target: str, default: str,
                  group: str | None = None, group_mean: Callable[[], tuple[np.ndarray, Sequence[str]]] | None = None,
                  validation: tuple[dict | None, str] | None = None) -> dict:
    """What ``trvae transform --decode auto`` decodes with: the mode the model's validation chose
    (``MODEL_DIR/validation/validation.json``, from the held-out folds only) when it validated this
    ``source`` -> ``target`` with the model's own training settings; else ``default`` (the input
    kind's), ``"by": "default"`` with the reason.

    When the validation found that a left-out fold is better served by its nearest fold's best
    decode than by one choice for the data set (``rule``: :data:`NEAREST_RULE`), and the transform
    predicts one cell type ``group``, ``group_mean()`` (its source cells' mean expression and the gene
    names) finds the validated cell type nearest to it (never ``group`` itself), whose best decode
    is chosen (``nearest``, ``distance``; ``data_set_choice`` is what the data set's choice was).
    ``validation``: what :func:`model_validation` returned for this task, when the caller has it."""
    v, reason = validation or model_validation(model_dir, cfg, source=source, target=target)
    if v is None:
        return {"chosen": default, "by": "default", "scores": {}, "folds": 0, "reason": reason}
    path = validation_path(model_dir)
    c = v["chosen_decode"]
    choice = {"chosen": c["chosen"], "by": "validation", "scores": {k: float(x) for k, x in c["scores"].items()
                                                                     if x is not None},
              "folds": int(c["folds"]), "criterion": c.get("criterion", CRITERION), "validation": str(path.resolve()),
              "rule": c.get("rule", DATA_SET_RULE)}
    if choice["rule"] != NEAREST_RULE:
        return choice
    choice["rule_scores"] = {k: float(x) for k, x in (c.get("rule_scores") or {}).items() if x is not None}

    def data_set(reason: str) -> dict:
        return {**choice, "rule": DATA_SET_RULE, "rule_reason": reason}

    if group is None or group_mean is None:
        return data_set("no single cell type is predicted (--cell-type): the data set's choice")
    centroids = read_centroids(path.parent / CENTROIDS)
    if centroids is None:
        return data_set(f"{path.parent / CENTROIDS} is missing or unreadable: the data set's choice")
    mean, genes = group_mean()
    at = {g: i for i, g in enumerate(centroids["var_names"])}
    if any(g not in at for g in genes):
        return data_set("the validation's genes are not the model's: the data set's choice")
    folds = centroids["means"][:, [at[g] for g in genes]]
    distance = np.sqrt(((folds - np.asarray(mean, np.float64)[None, :]) ** 2).sum(1))
    names = centroids["cell_types"]
    distance[[i for i, t in enumerate(names) if t == group]] = np.inf    # a fold's own answer is never used
    best = (c.get("fold_best") or {})
    i = int(np.argmin(distance))
    if not np.isfinite(distance[i]) or not best.get(names[i]):
        return data_set("no other validated cell type to compare with: the data set's choice")
    return {**choice, "chosen": best[names[i]], "data_set_choice": c["chosen"], "nearest": names[i],
            "distance": float(distance[i])}


if __name__ == "__main__":     # a fold's own process: started and ended as the trvae program is
    from . import backend

    backend.lean_imports = True
    backend.exit_now(_fold_main(sys.argv[1:]))
