"""Library functions behind the commands: ``train`` and ``transform``.

Every command of the CLI is one of these functions, callable from a notebook.

Examples
--------
>>> from trvae_cli import api
>>> from trvae_cli.settings import TrainSettings
>>> model_dir = api.train("sample_data/perturbation.h5ad", condition_key="condition",
...                       cell_type_key="cell_type", exclude=["B:stimulated"],
...                       out="model", settings=TrainSettings(epochs=50))      # doctest: +SKIP
>>> pred = api.transform("model", source="control", target="stimulated", cell_type="B")  # doctest: +SKIP
>>> pred.adata.X.shape, pred.path                                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .counterfactual import DECODE_MODES, RESIDUAL_SCALES, counterfactual, recover_counts
from .data import anndata_io as io
from .data.batching import dense_rows, iter_row_chunks
from .errors import TrvaeError
from .model_dir import (
    CONFIG_FILE, FORMAT, FORMAT_VERSION, HISTORY_FILE, MODEL_FILE, check_writable_target,
    load_model, publish_dir, read_config, staging_dir, write_history,
)
from .settings import CONDITION_INJECTIONS, MMD_PLACEMENTS, OUTPUT_ACTIVATIONS, PRECISIONS, TrainSettings

DEFAULT_MODEL_DIR = "trvae_model"


def weights_digest(model) -> str:
    """SHA-256 of every weight of ``model`` (float32 bytes, in order): equal digests, equal models."""
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return h.hexdigest()


def _api_call(name: str, **kwargs) -> str:
    """How a library call is recorded when no CLI command line is given."""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"trvae_cli.api.{name}({args})"


def _validation_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``labels``) of train and validation cells, stratified by condition."""
    if not 0.0 <= fraction < 1.0:
        raise TrvaeError(f"--validation-fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n_val = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) > 1:
            n_val = max(1, min(n_val, len(idx) - 1))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _validate_settings(s: TrainSettings) -> None:

    checks = [
        (s.epochs >= 1, f"--epochs must be >= 1, got {s.epochs}"),
        (s.batch_size >= 2, f"--batch-size must be >= 2, got {s.batch_size}"),
        (0.0 <= s.dropout < 1.0, f"--dropout must be in [0, 1), got {s.dropout}"),
        (s.latent_dim >= 1 and s.mmd_dim >= 1, "--latent-dim and --mmd-dim must be >= 1"),
        (all(h >= 1 for h in s.hidden), f"--hidden sizes must be >= 1, got {list(s.hidden)}"),
        (s.mmd_on in MMD_PLACEMENTS, f"--mmd-on must be one of {MMD_PLACEMENTS}"),
        (s.condition_injection in CONDITION_INJECTIONS,
         f"--condition-injection must be one of {CONDITION_INJECTIONS}"),
        (s.output_activation in OUTPUT_ACTIVATIONS, f"--output-activation must be one of {OUTPUT_ACTIVATIONS}"),
        (min(s.alpha, s.beta, s.eta) >= 0, "loss weights --alpha, --beta and --eta must be >= 0"),
        (s.learning_rate > 0, "--learning-rate must be > 0"),
        (s.precision in PRECISIONS, f"--precision must be one of {PRECISIONS}, got {s.precision!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise TrvaeError(message)


def _resolve_progress(progress: str) -> str:
    if progress == "plain":
        return "text"
    if progress == "auto":
        return "rich" if sys.stderr.isatty() else "json"
    if progress not in ("rich", "text", "json", "none"):
        raise TrvaeError(f"--log-format must be auto, rich, text or json, got {progress!r}")
    return progress


def _event_logger(progress: str) -> Callable[..., None]:
    """``log(event, **fields)``: a JSON line (json) or a short text line (text, rich) on stderr."""
    mode = _resolve_progress(progress)

    def log(event: str, **fields) -> None:
        if mode == "json":
            from .training import json_line

            print(json_line({"event": event, **fields}), file=sys.stderr, flush=True)
        elif mode in ("text", "rich") and event == "checkpoint":
            print(f"checkpoint after epoch {fields['epoch']}: {fields['path']}", file=sys.stderr, flush=True)

    return log


def _callbacks(keras, s: TrainSettings, monitor: str, progress: str, console, initial_epoch: int = 0):
    """(early stopping, every callback): timing, KL warm-up, LR schedule, early stopping, progress."""
    from .training import EpochTimer, JsonProgress, KLWarmup, PlainProgress, RichProgress

    callbacks = [EpochTimer(), KLWarmup(s.kl_warmup)]
    if s.lr_patience > 0:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=s.lr_factor, patience=s.lr_patience, min_lr=1e-6, verbose=0))
    early = keras.callbacks.EarlyStopping(
        monitor=monitor, patience=s.early_stopping_patience if s.early_stopping_patience > 0 else s.epochs,
        restore_best_weights=True, verbose=0)
    callbacks.append(early)
    progress = _resolve_progress(progress)
    if progress == "rich":
        from .console import stderr_console

        callbacks.append(RichProgress(s.epochs, console or stderr_console(), initial_epoch))
    elif progress == "text":
        callbacks.append(PlainProgress(s.epochs))
    elif progress == "json":
        callbacks.append(JsonProgress(s.epochs, initial_epoch))
    return early, callbacks


def encode_rows(model, matrix, codes: np.ndarray, n_conditions: int, columns=None, batch_size: int = 1024,
                rows: np.ndarray | None = None):
    """(z_mean, z_log_var) of every row of ``matrix`` (or of ``matrix[rows]``, read a batch at a
    time), each encoded with condition ``codes[i]``."""
    eye = np.eye(n_conditions, dtype=np.float32)
    means, log_vars = [], []
    n = matrix.shape[0] if rows is None else len(rows)
    for chunk in iter_row_chunks(n, batch_size):
        picked = chunk if rows is None else np.asarray(rows)[chunk]
        z_mean, z_log_var = model.encoder.predict_on_batch([dense_rows(matrix, picked, columns), eye[codes[chunk]]])
        means.append(np.asarray(z_mean, np.float32))
        log_vars.append(np.asarray(z_log_var, np.float32))
    if not means:
        return np.zeros((0, model.latent_dim), np.float32), np.zeros((0, model.latent_dim), np.float32)
    return np.concatenate(means), np.concatenate(log_vars)


def decode_rows(model, z: np.ndarray, codes: np.ndarray, n_conditions: int, batch_size: int = 1024):
    """(x_hat, MMD-layer activations) of every row of ``z``, each decoded with condition ``codes[i]``."""
    eye = np.eye(n_conditions, dtype=np.float32)
    x_hats, hs = [], []
    for chunk in iter_row_chunks(len(z), batch_size):
        x_hat, h = model.decoder.predict_on_batch([z[chunk], eye[codes[chunk]]])
        x_hats.append(np.asarray(x_hat, np.float32))
        hs.append(np.asarray(h, np.float32))
    if not x_hats:
        return np.zeros((0, model.n_genes), np.float32), np.zeros((0, model.mmd_dim), np.float32)
    return np.concatenate(x_hats), np.concatenate(hs)


def _open_data(data, layer: str | None, backed: bool):
    """(AnnData, matrix): in memory, or obs/var in memory and the matrix on disk (``backed``)."""
    if backed:
        from .data.backed import read_backed

        return read_backed(data, layer)
    adata = io.read_h5ad(data)
    return adata, io.get_matrix(adata, layer)


def _close_data(adata, matrix) -> None:
    if hasattr(matrix, "close"):
        matrix.close()
    if getattr(adata, "isbacked", False):
        adata.file.close()


def _selected_rows(matrix, rows: np.ndarray, backed: bool):
    """The rows to transform: a copy in memory, or a lazy view when backed."""
    if backed:
        from .data.backed import RowsView

        return RowsView(matrix, rows)
    return matrix[rows]


def _check_rows(sub, name: str, need_nonnegative: bool) -> None:
    """NaN/inf check (block by block when backed); optionally refuse negative values."""
    blocks = sub.blocks() if hasattr(sub, "blocks") else [sub]
    low = 0.0
    for block in blocks:
        io.check_finite(block, name)
        if need_nonnegative:
            low = min(low, _min_value(block))
    if low < 0:
        raise TrvaeError("the data have negative values, so they are not log1p-normalised: use "
                         "--residual-scale linear (or --decode mean) for --decode counterfactual")


def _min_value(matrix) -> float:
    """Smallest entry of a dense or sparse matrix (implicit zeros included)."""
    if getattr(matrix, "nnz", None) is not None:
        data = matrix.data
        low = float(data.min()) if data.size else 0.0
        return min(low, 0.0) if matrix.nnz < matrix.shape[0] * matrix.shape[1] else low
    return float(np.min(matrix)) if np.size(matrix) else 0.0


def train(
    data: str | Path,
    condition_key: str,
    out: str | Path = DEFAULT_MODEL_DIR,
    *,
    cell_type_key: str | None = None,
    exclude: Sequence[str] = (),
    layer: str | None = None,
    settings: TrainSettings | None = None,
    force: bool = False,
    progress: str = "auto",
    console=None,
    warn: Callable[[str], None] | None = None,
    command: str | None = None,
    preset: str | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    threads: int | None = None,
    backed: bool = False,
    strategy: str = "none",
) -> Path | None:
    """Train trVAE on an ``.h5ad`` and write a model directory; returns its path.

    Parameters
    ----------
    data
        The ``.h5ad`` file (X log-normalised, sparse or dense).
    condition_key
        obs column holding the condition of each cell.
    out
        Model directory to write (must not exist unless ``force``).
    cell_type_key, exclude
        ``exclude=["NK:stimulated"]`` drops those cells from training (out-of-sample runs).
    layer
        Use ``adata.layers[layer]`` instead of X.
    settings
        Hyperparameters (:class:`~trvae_cli.settings.TrainSettings`).
    progress
        ``"rich"`` (a progress bar), ``"text"`` (a line per epoch on stderr), ``"json"``
        (JSON lines on stderr), ``"none"``, or ``"auto"``: rich on a terminal, else json.
    checkpoint_every, resume
        Write a checkpoint into ``out/checkpoint/`` every N epochs (0: only when SIGTERM or
        SIGINT stops the run, which then raises :class:`~trvae_cli.errors.Interrupted`);
        ``resume=True`` continues the run from that checkpoint, with the result of an
        uninterrupted run (see :mod:`trvae_cli.checkpoint`).
    threads
        Cap the CPU threads of the backend (set before it is imported).
    backed
        Leave the matrix on disk and read it in blocks of rows (memory does not grow with
        the number of cells; batches are stratified by condition in proportion, see
        :class:`~trvae_cli.data.backed.ChunkPlan`).
    strategy
        ``"none"``, ``"mirrored"`` (every local GPU) or ``"multiworker"`` (one process per
        node; cluster from ``TF_CONFIG`` or Slurm): data-parallel training through
        ``tf.distribute`` (see :mod:`trvae_cli.distribute`). Only the chief writes ``out``
        and checkpoints; the other workers return ``None``.
    preset
        The name the settings came from (recorded only; build them with
        :func:`~trvae_cli.settings.preset_settings`).
    """
    s = settings or TrainSettings()
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    _validate_settings(s)
    _resolve_progress(progress)
    data = Path(data)
    out = Path(out)
    if checkpoint_every < 0:
        raise TrvaeError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    from .distribute import STRATEGIES

    if strategy not in STRATEGIES:
        raise TrvaeError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if resume:
        from .checkpoint import checkpoint_path

        if not checkpoint_path(out).is_dir():
            raise TrvaeError(f"--resume: no checkpoint in {out} (expected {checkpoint_path(out)}/)")
    else:
        check_writable_target(out, force)

    adata, matrix = _open_data(data, layer, backed)
    try:
        return _train(adata, matrix, data, condition_key, out, cell_type_key, exclude, layer, s, progress, console,
                      warn, command, preset, checkpoint_every, resume, threads, backed, strategy)
    finally:
        _close_data(adata, matrix)


def _train(adata, matrix, data, condition_key, out, cell_type_key, exclude, layer, s, progress, console, warn,
           command, preset, checkpoint_every, resume, threads, backed, strategy) -> Path | None:
    selection = io.select_training_cells(adata, condition_key, cell_type_key, exclude)
    rows = np.flatnonzero(selection.mask)
    name = "X" if layer is None else f"layer {layer!r}"
    if backed:
        from .data.backed import check_finite_backed, first_values

        check_finite_backed(matrix, name)
        counts_like = io.looks_like_counts(first_values(matrix))
    else:
        io.check_finite(matrix[rows] if len(rows) < adata.n_obs else matrix, name)
        counts_like = io.looks_like_counts(matrix)
    if counts_like:
        warn(
            "the data look like raw counts (all integers, large values); trVAE's MSE loss expects "
            "log-normalised values: normalise and log1p first, or choose a matrix with --layer"
        )

    def make_batches(positions, seed, fixed, replicas):
        from .training import BackedBatches, CellBatches

        if backed:
            return BackedBatches(matrix, rows[positions], selection.labels[positions], s.batch_size, seed=seed,
                                 fixed=fixed, replicas=replicas)
        return CellBatches(matrix, rows[positions], selection.labels[positions], s.batch_size, seed=seed,
                           fixed=fixed, balanced=s.balanced_batches, replicas=replicas)

    run_meta = {
        "data": str(data.resolve()), "shape": list(adata.shape), "condition_key": condition_key,
        "conditions": selection.conditions, "cell_type_key": cell_type_key, "exclude": list(exclude),
        "layer": layer, "backed": bool(backed),
    }
    fit = fit_model(
        TrainingInput(labels=selection.labels, n_conditions=len(selection.conditions),
                      model_args={"n_genes": adata.n_vars}, example_shape=(adata.n_vars,),
                      make_batches=make_batches, meta=run_meta),
        s, out, progress=progress, console=console, warn=warn, checkpoint_every=checkpoint_every, resume=resume,
        threads=threads, strategy=strategy)
    model, s = fit.model, fit.settings

    arithmetic = None
    if not s.conditional:
        from .arithmetic import balanced_condition_means

        z, _ = encode_rows(model, matrix, selection.labels, len(selection.conditions), rows=rows)
        types = None
        if cell_type_key:
            types = adata.obs[cell_type_key].astype(str).values[rows]
        means = balanced_condition_means(z, [selection.conditions[k] for k in selection.labels], types)
        arithmetic = {
            "method": "scGen latent arithmetic: z + mean z(target) - mean z(source), cell types weighted equally",
            "cell_type_key": cell_type_key,
            "means": {cond: [float(v) for v in means[cond]] for cond in selection.conditions if cond in means},
        }

    config = fit.config(
        command or _api_call("train", data=str(data), condition_key=condition_key, out=str(out),
                             cell_type_key=cell_type_key, exclude=list(exclude), layer=layer, settings=s),
        preset,
        {
            "path": str(data.resolve()),
            "condition_key": condition_key,
            "conditions": selection.conditions,
            "cell_type_key": cell_type_key,
            "exclude": list(exclude),
            "layer": layer,
            "backed": bool(backed),
            "n_cells_train": fit.n_train,
            "n_cells_validation": fit.n_validation,
            "n_cells_excluded": selection.n_excluded,
            "n_genes": int(adata.n_vars),
        },
    )
    config["var_names"] = [str(g) for g in adata.var_names]
    if arithmetic is not None:
        config["latent_arithmetic"] = arithmetic
    return fit.save(out, config)


@dataclass
class TrainingInput:
    """What :func:`fit_model` needs to know of the data, whatever its kind (cells or images).

    ``make_batches(positions, seed, fixed, replicas)`` returns the Keras ``PyDataset`` of
    the items at ``positions`` (indices into ``labels``); ``meta`` identifies the data for
    a checkpoint; ``example_shape`` is one item's shape (to build the model explicitly).
    """

    labels: np.ndarray
    n_conditions: int
    model_args: dict
    example_shape: tuple
    make_batches: Callable
    meta: dict


@dataclass
class FitResult:
    model: object
    settings: TrainSettings
    distribution: object
    history: list
    early: object
    monitor: str
    seconds: float
    n_train: int
    n_validation: int
    log: Callable

    def config(self, command: str, preset: str | None, data: dict) -> dict:
        """The model directory's config.json, without input-specific extras."""
        from .backend import versions

        early, rows_hist = self.early, self.history
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "model": self.model.get_config(),
            "preset": preset,
            "training": self.settings.to_dict(),
            "data": data,
            "distribution": self.distribution.describe(),
            "result": {
                "epochs_run": len(rows_hist),
                "best_epoch": int(early.best_epoch) + 1 if early.best_weights is not None else len(rows_hist),
                "best_" + self.monitor: float(early.best) if early.best_weights is not None else None,
                "train_seconds": round(self.seconds, 2),
                "weights_sha256": weights_digest(self.model),
            },
            "versions": versions(),
        }

    def save(self, out: Path, config: dict) -> Path | None:
        """Write the model directory atomically (the chief only; other workers return None)."""
        dist = self.distribution
        self.log("result", weights_sha256=config["result"]["weights_sha256"], epochs_run=len(self.history),
                 worker=dist.worker_index, written=dist.is_chief)
        if not dist.is_chief:
            return None
        staged = staging_dir(out)
        try:
            self.model.save(staged / MODEL_FILE)
            (staged / CONFIG_FILE).write_text(json.dumps(config, indent=2))
            write_history(staged / HISTORY_FILE, self.history)
            publish_dir(staged, out)
        except BaseException:
            import shutil

            shutil.rmtree(staged, ignore_errors=True)
            raise
        return out


def fit_model(inp: TrainingInput, s: TrainSettings, out: Path, *, progress="auto", console=None, warn=None,
              checkpoint_every=0, resume=False, threads=None, strategy="none") -> FitResult:
    """Build the model, train it (checkpoints, resume, signals, strategies) and return it unsaved."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    train_pos, val_pos = _validation_split(inp.labels, s.validation_fraction, s.seed)

    from .backend import keras_module, seed_everything

    keras = keras_module(threads=threads)
    from .distribute import make_distribution

    dist = make_distribution(strategy)       # before TensorFlow runs anything (multi-worker needs that)
    if dist.replicas > 1 and s.jit and not dist.has_gpu:
        warn("XLA cannot compile collective operations on the CPU: training without --jit")
        s = dataclasses.replace(s, jit=False)
    seed_everything(s.seed)
    from .checkpoint import (Checkpointer, StopOnSignals, TrainingInterrupted, check_same_run, checkpoint_path,
                             read_checkpoint, restore_batches, restore_model)
    from .errors import Interrupted
    from .model import TRVAE

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(s.precision)   # layers compute in 16 bits, variables and losses stay float32
    try:
        with dist.scope():
            model = TRVAE(n_conditions=inp.n_conditions, sync_batchnorm=dist.replicas > 1, **inp.model_args,
                          **s.model_kwargs())
            optimizer = keras.optimizers.Adam(learning_rate=s.learning_rate)
            if s.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            model.compile(optimizer=optimizer, jit_compile=bool(s.jit) and keras.backend.backend() != "torch")
            if dist.strategy is not None:    # built here, not by fit (see trvae_cli.distribute)
                model((np.zeros((2, *inp.example_shape), np.float32), np.zeros(2, np.int32)), training=False)
                model.optimizer.build(model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous_policy)

    train_batches = inp.make_batches(train_pos, s.seed, False, dist.replicas)
    val_batches = None
    monitor = "loss"
    if len(val_pos):
        val_batches = inp.make_batches(val_pos, s.seed + 1, True, dist.replicas)
        monitor = "val_loss"

    # what a checkpoint must match to be resumed: the settings and the data as selected
    run_meta = json.loads(json.dumps({
        "settings": s.to_dict(), **inp.meta, "n_train": int(len(train_pos)), "n_validation": int(len(val_pos)),
        "distribution": dist.describe(),
    }))
    ckpt, initial_epoch, history_before = None, 0, []
    if resume:
        ckpt = read_checkpoint(out)
        check_same_run(ckpt["state"]["meta"], run_meta)
        model.optimizer.build(model.trainable_variables)
        restore_model(ckpt, model)
        restore_batches(ckpt, train_batches)
        initial_epoch, history_before = ckpt["state"]["epochs_done"], ckpt["state"]["history"]

    early, callbacks = _callbacks(keras, s, monitor, progress, console, initial_epoch)
    reduce_lr = next((c for c in callbacks if isinstance(c, keras.callbacks.ReduceLROnPlateau)), None)
    log = _event_logger(progress)
    checkpointer = Checkpointer(
        checkpoint_path(out), checkpoint_every if dist.is_chief else 0, train_batches, early, reduce_lr, run_meta,
        history=history_before, restore=ckpt,
        on_write=lambda epoch, path: log("checkpoint", epoch=epoch, path=str(path)),
    )
    callbacks.append(checkpointer)           # last: its snapshot sees the other callbacks' epoch
    finished = ckpt is not None and (initial_epoch >= s.epochs or ckpt["state"]["early"]["stopped_epoch"] > 0)
    t0 = time.perf_counter()
    if not finished:
        try:
            # a multi-worker run cannot stop one worker mid-epoch without hanging the others:
            # signals keep their default action there, and --checkpoint-every is the way to resume
            with StopOnSignals(checkpointer) if dist.workers == 1 else nullcontext():
                model.fit(train_batches, validation_data=val_batches, epochs=s.epochs, initial_epoch=initial_epoch,
                          callbacks=callbacks, verbose=0, shuffle=False)
        except TrainingInterrupted as stop:
            path = checkpointer.write()
            done = checkpointer.snapshot["state"]["epochs_done"]
            log("interrupted", signal=stop.signame, epochs_done=done, checkpoint=str(path))
            raise Interrupted(f"{stop.signame}: stopped after epoch {done} of {s.epochs}; checkpoint in {path}; "
                              f"continue with the same command plus --resume") from None
    elif ckpt is not None:   # the checkpoint is of a finished run: what early stopping's end would do
        from .checkpoint import restore_callbacks

        restore_callbacks(ckpt, early, reduce_lr)
        if early.best_weights is not None:
            model.set_weights(early.best_weights)
    seconds = time.perf_counter() - t0 + (ckpt["state"]["seconds"] if ckpt is not None else 0.0)
    return FitResult(model, s, dist, checkpointer.history, early, monitor, seconds, int(len(train_pos)),
                     int(len(val_pos)), log)


@dataclass
class Prediction:
    adata: "object"   # anndata.AnnData
    path: Path | None
    defaults_used: dict


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "x"


def default_prediction_path(model_dir: Path, source: str, target: str, cell_type: str | None) -> Path:
    name = f"{_safe_name(source)}_to_{_safe_name(target)}"
    if cell_type is not None:
        name += f"_{_safe_name(cell_type)}"
    return model_dir / f"{name}.h5ad"


def transform(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    data: str | Path | None = None,
    *,
    source: str,
    target: str,
    out: str | Path | None = None,
    cell_type: str | None = None,
    condition_key: str | None = None,
    cell_type_key: str | None = None,
    decode: str = DECODE_MODES[0],
    residual_scale: str = "auto",
    seed: int = 0,
    draws: int = 1,
    batch_size: int = 1024,
    force: bool = False,
    write: bool = True,
    command: str | None = None,
    backed: bool = False,
) -> Prediction:
    """Predict how the ``source`` cells of ``data`` would look under ``target``.

    Encodes the selected source cells with the source condition, decodes with the
    target condition. ``decode="counterfactual"`` (default) keeps each cell's own
    residual and adds the model's change ``f(z, target) - f(z, source)`` (z the
    posterior mean) to it, on the ``residual_scale``: "counts" moves the cell's own
    counts (recovered from log1p-normalised data) by a Poisson coupling, seeded; "log1p" adds
    on the normalised-count scale; "linear" on the data's own; "auto" (default) is counts
    when every selected cell holds recoverable counts, else log1p. See :mod:`trvae_cli.counterfactual`;
    ``"mean"`` decodes the posterior mean of z (smooth conditional means);
    ``"sample"`` decodes one draw of q(z|x) per cell, seeded. ``draws=K`` (random decodings
    only: counts counterfactuals and samples) writes K independent draws of every cell, draw-major,
    with ``obs["trvae_draw"]``: a K-times larger sample of the same predicted distribution.
    Returns a :class:`Prediction` (the AnnData, where it was written, and which
    defaults were filled in).
    """
    if decode not in DECODE_MODES:
        raise TrvaeError(f"--decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
    if residual_scale not in RESIDUAL_SCALES:
        raise TrvaeError(f"--residual-scale must be one of {', '.join(RESIDUAL_SCALES)}, got {residual_scale!r}")
    if int(draws) != draws or draws < 1:
        raise TrvaeError(f"--draws must be a whole number >= 1, got {draws}")
    deterministic = decode == "mean" or (decode == "counterfactual" and residual_scale in ("log1p", "linear"))
    if draws > 1 and deterministic:
        raise TrvaeError(f"--draws {draws} needs random draws, and --decode {decode}"
                         f"{'' if decode == 'mean' else f' --residual-scale {residual_scale}'} has none: "
                         "use --decode sample or counterfactual with --residual-scale counts")
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    defaults: dict = {}
    dcfg = cfg["data"]
    if data is None:
        data = dcfg["path"]
        defaults["data"] = data
    if condition_key is None:
        condition_key = dcfg["condition_key"]
    if cell_type_key is None:
        cell_type_key = dcfg.get("cell_type_key")
    if out is None and write:
        out = default_prediction_path(model_dir, source, target, cell_type)
        defaults["out"] = str(out)
    out = Path(out) if out is not None else None
    if out is not None:
        check_writable_target(out, force)

    conditions = list(dcfg["conditions"])
    for label, name in ((source, "--from"), (target, "--to")):
        if label not in conditions:
            raise TrvaeError(f"{name} {label!r} is not a condition the model knows; it knows: {', '.join(conditions)}")

    adata, matrix = _open_data(data, dcfg.get("layer"), backed)
    try:
        return _transform(adata, matrix, cfg, model_dir, data, source, target, out, cell_type, condition_key,
                          cell_type_key, decode, residual_scale, seed, batch_size, command, conditions, defaults,
                          backed, int(draws))
    finally:
        _close_data(adata, matrix)


def _arithmetic(model, cfg, model_dir, z, source, target):
    """z itself for a conditional model; z + the latent delta (scGen's arithmetic) for an unconditional one."""
    if model.conditional:
        return z.astype(np.float32)
    from .arithmetic import latent_delta

    if "latent_arithmetic" not in cfg:
        raise TrvaeError(f"{model_dir} holds an unconditional model without latent means; retrain it")
    return (z + latent_delta(cfg["latent_arithmetic"]["means"], source, target)).astype(np.float32)


def _counterfactual_rows(sub, columns, f_target, f_source, scale, rngs, batch_size):
    """Counterfactuals of the rows of ``sub``, one array per generator in ``rngs`` (each block is read,
    and its counts recovered, once for all draws); returns them and the scale used ("auto" resolved on
    the first block: counts if it holds them, else log1p)."""
    outs = [np.empty_like(f_target) for _ in rngs]
    for chunk in iter_row_chunks(len(f_target), batch_size):
        x = dense_rows(sub, chunk, columns)
        counts = None
        if scale in ("auto", "counts"):
            counts = recover_counts(x)
            if counts is None and (scale == "counts" or chunk[0] > 0):
                raise TrvaeError(
                    f"cells {chunk[0]}-{chunk[-1]} of the selection hold no recoverable counts (X is "
                    "not log1p of normalised counts): use --residual-scale log1p or linear")
            if scale == "auto":
                scale = "counts" if counts is not None else "log1p"
            if scale != "counts" and len(rngs) > 1:
                raise TrvaeError(f"--draws {len(rngs)} needs random draws, and --residual-scale {scale} has none: "
                                 "use --residual-scale counts (log1p-normalised counts) or --decode sample")
        for out, rng in zip(outs, rngs):
            out[chunk] = counterfactual(x, f_target[chunk], f_source[chunk], scale, rng=rng, counts=counts)
    return outs, scale


def _transform(adata, matrix, cfg, model_dir, data, source, target, out, cell_type, condition_key, cell_type_key,
               decode, residual_scale, seed, batch_size, command, conditions, defaults, backed,
               draws=1) -> Prediction:
    dcfg = cfg["data"]
    cond = io.require_obs_key(adata, condition_key, "condition")
    io.require_values(cond, [source], condition_key)
    mask = cond.values == source
    if cell_type is not None:
        if not cell_type_key:
            raise TrvaeError("--cell-type needs a cell-type key (train with --cell-type-key or pass --cell-type-key)")
        ct = io.require_obs_key(adata, cell_type_key, "cell-type")
        io.require_values(ct, [cell_type], cell_type_key)
        mask &= ct.values == cell_type
        if not mask.any():
            raise TrvaeError(f"no cells are both {condition_key}={source!r} and {cell_type_key}={cell_type!r}")
    columns = io.gene_indexer(adata.var_names, cfg["var_names"])
    rows = np.flatnonzero(mask)
    sub = _selected_rows(matrix, rows, backed)
    _check_rows(sub, "X" if dcfg.get("layer") is None else f"layer {dcfg['layer']!r}",
                need_nonnegative=decode == "counterfactual" and residual_scale != "linear")

    from .backend import versions

    cfg, model = load_model(model_dir, cfg)
    src_idx, dst_idx = conditions.index(source), conditions.index(target)
    n = len(rows)
    z_mean, z_log_var = encode_rows(model, sub, np.full(n, src_idx), len(conditions), columns, batch_size)
    # draw 0 is what --draws 1 gives; draw d > 0 has its own stream
    rngs = [np.random.default_rng(seed if draw == 0 else [seed, draw]) for draw in range(draws)]
    if decode == "counterfactual":
        z = _arithmetic(model, cfg, model_dir, z_mean, source, target)
        f_target, _ = decode_rows(model, z, np.full(n, dst_idx), len(conditions), batch_size)
        f_source, _ = decode_rows(model, z_mean, np.full(n, src_idx), len(conditions), batch_size)
        requested = residual_scale
        x_hats, residual_scale = _counterfactual_rows(sub, columns, f_target, f_source, residual_scale, rngs,
                                                      batch_size)
        if requested == "auto":
            defaults["residual-scale"] = residual_scale
        zs = [z] * draws
    else:
        x_hats, zs = [], []
        for rng in rngs:
            z = z_mean
            if decode == "sample":
                z = z_mean + np.exp(0.5 * z_log_var) * rng.standard_normal(z_mean.shape).astype(np.float32)
            z = _arithmetic(model, cfg, model_dir, z, source, target)
            x_hats.append(decode_rows(model, z, np.full(n, dst_idx), len(conditions), batch_size)[0])
            zs.append(z)
    x_hat, z = (x_hats[0], zs[0]) if draws == 1 else (np.concatenate(x_hats), np.concatenate(zs))

    import anndata as ad
    import pandas as pd

    obs = adata.obs.iloc[rows].copy()
    if draws > 1:   # draw-major: rows d * n ... (d + 1) * n - 1 are draw d of every cell
        names = obs.index.astype(str)
        obs = pd.concat([obs] * draws)
        obs.index = pd.Index([f"{name}-{d}" for d in range(draws) for name in names])
        obs["trvae_draw"] = np.repeat(np.arange(draws), n)
    obs[condition_key] = pd.Categorical([target] * len(obs), categories=conditions)
    obs["trvae_source_condition"] = pd.Categorical([source] * len(obs), categories=conditions)
    pred = ad.AnnData(
        X=x_hat,
        obs=obs,
        var=pd.DataFrame(index=pd.Index(cfg["var_names"], name=None)),
    )
    pred.obsm["X_trvae"] = z
    pred.uns["trvae"] = {
        "model": str(model_dir.resolve()),
        "data": str(Path(data).resolve()),
        "condition_key": condition_key,
        "from": source,
        "to": target,
        "cell_type_key": cell_type_key or "",
        "cell_type": cell_type or "",
        "layer": dcfg.get("layer") or "",
        "decode": decode,
        "residual_scale": residual_scale if decode == "counterfactual" else "",
        "seed": int(seed),
        "draws": int(draws),
        "n_cells": int(len(rows)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or _api_call("transform", model_dir=str(model_dir), data=str(data), source=source,
                                         target=target, cell_type=cell_type, decode=decode,
                                         residual_scale=residual_scale, seed=seed, draws=draws),
        "versions": versions(),
    }
    if out is not None:
        write_h5ad_atomic(pred, out)
    return Prediction(pred, out, defaults)


def embed(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    data: str | Path | None = None,
    *,
    condition_key: str | None = None,
    max_cells: int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
):
    """The latent space z and the MMD layer of every cell, each encoded and decoded with its own
    condition (cells of conditions the model does not know are left out).

    Returns an AnnData (the data's obs, no X) with ``obsm["X_trvae"]`` (posterior mean of z)
    and ``obsm["X_trvae_mmd"]`` (the first decoder layer, where trVAE's MMD acts).
    ``max_cells`` keeps a random subset (seeded).
    """
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    dcfg = cfg["data"]
    data = data if data is not None else dcfg["path"]
    condition_key = condition_key or dcfg["condition_key"]
    adata, matrix = _open_data(data, dcfg.get("layer"), backed=False)
    cond = io.require_obs_key(adata, condition_key, "condition")
    conditions = list(dcfg["conditions"])
    known = np.isin(cond.astype(str).values, conditions)
    if not known.any():
        raise TrvaeError(f"no cell of {data} has a condition the model knows ({', '.join(conditions)})")
    rows = np.flatnonzero(known)
    if max_cells is not None and len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_cells, replace=False))
    columns = io.gene_indexer(adata.var_names, cfg["var_names"])
    sub = _selected_rows(matrix, rows, backed=False)
    _check_rows(sub, "X" if dcfg.get("layer") is None else f"layer {dcfg['layer']!r}", need_nonnegative=False)
    codes = np.array([conditions.index(c) for c in cond.astype(str).values[rows]])

    cfg, model = load_model(model_dir, cfg)
    z_mean, _ = encode_rows(model, sub, codes, len(conditions), columns, batch_size)
    _, h = decode_rows(model, z_mean, codes, len(conditions), batch_size)

    import anndata as ad

    out = ad.AnnData(obs=adata.obs.iloc[rows].copy())
    out.obsm["X_trvae"] = z_mean
    out.obsm["X_trvae_mmd"] = h
    out.uns["trvae"] = {"model": str(model_dir.resolve()), "data": str(Path(data).resolve()),
                        "condition_key": condition_key, "cell_type_key": dcfg.get("cell_type_key") or ""}
    return out


def write_h5ad_atomic(adata, path: Path) -> None:
    """Write to a temporary file beside ``path`` and rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
