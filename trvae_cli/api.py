"""The public API: ``train``, ``transform`` and ``embed``, on paths or on in-memory data.

Every command of the CLI is one of these functions (``evaluate`` is
:func:`trvae_cli.evaluation.evaluate`, the figures are in :mod:`trvae_cli.plotting`). Data are
an ``.h5ad`` path or an ``AnnData`` for cells, and a folder, a CSV manifest or an
``(images, conditions[, domains])`` tuple of arrays for images; the input kind decides nothing
here (see :mod:`trvae_cli.sources`).

Examples
--------
>>> import scanpy as sc                                                            # doctest: +SKIP
>>> from trvae_cli import api
>>> adata = sc.read_h5ad("sample_data/perturbation.h5ad")                         # doctest: +SKIP
>>> model_dir = api.train(adata, "condition", "model", cell_type_key="cell_type",
...                       exclude=["NK:stimulated"], settings={"epochs": 50})     # doctest: +SKIP
>>> pred = api.transform(model_dir, adata, source="control", target="stimulated",
...                      cell_type="NK", write=False)                             # doctest: +SKIP
>>> pred.adata                       # the predicted cells, an AnnData            # doctest: +SKIP
"""

from __future__ import annotations


from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .config import RunOptions, TrainSettings, resolve_settings
from .errors import TrvaeError, note
from .outputs import check_target

DEFAULT_MODEL_DIR = "trvae_model"


def _api_call(name: str, **kwargs) -> str:
    """How a library call is recorded when no CLI command line is given."""
    def show(v):
        return f"<{type(v).__name__}>" if not isinstance(v, (str, int, float, bool, list, tuple, type(None),
                                                               TrainSettings, dict)) else repr(v)
    return f"trvae_cli.api.{name}({', '.join(f'{k}={show(v)}' for k, v in kwargs.items())})"


def _data_label(data) -> object:
    return str(data) if isinstance(data, (str, Path)) else data


def train(
    data,
    condition_key: str | None = None,
    out: str | Path = DEFAULT_MODEL_DIR,
    *,
    cell_type_key: str | None = None,
    exclude: Sequence[str] = (),
    layer: str | None = None,
    backed: bool = False,
    image_size=None,
    settings: TrainSettings | Mapping | None = None,
    preset: str | None = None,
    options: RunOptions | None = None,
    validation: str | Path | None = None,
) -> Path | None:
    """Train trVAE on cells or images and write a model directory; returns its path.

    Parameters
    ----------
    data
        Cells: an ``.h5ad`` path or an ``AnnData`` (X log-normalised, sparse or dense). Images: a
        folder ``ROOT/<condition>/[<domain>/]``, a CSV manifest (``path,condition[,domain]``) or a
        tuple ``(images, conditions[, domains])`` of arrays with values in [0, 1].
    condition_key
        Cells: the obs column holding each cell's condition (images take it from the folders).
    out
        The model directory to write (it must not exist unless ``options.force``).
    cell_type_key, exclude
        ``exclude=["NK:stimulated"]`` drops those cells from training (out-of-sample runs; images:
        ``"DOMAIN:CONDITION"``). Cells need ``cell_type_key`` for it.
    layer, backed
        Cells: use ``adata.layers[layer]`` instead of X; ``backed`` leaves the matrix on disk
        and reads blocks of rows (a path only; batches then hold the conditions in proportion).
    image_size
        Images: read every image at this (H, W).
    settings
        A :class:`~trvae_cli.config.TrainSettings` (taken as complete), or a mapping of the
        settings to change from the ``preset`` (default ``"trvae"``) and the input's defaults.
    options
        How the run behaves (:class:`~trvae_cli.config.RunOptions`: progress, checkpoints,
        resume, threads, strategy, force). Progress defaults to a bar on a terminal or in a
        notebook and to JSON lines on stderr otherwise.
    validation
        Cells: an existing validation folder (``trvae validate``'s ``out``, or a validated model
        directory) to attach as ``OUT/validation/`` for ``transform --decode auto``. It must have
        validated this data file with these settings, the seed aside; that is checked before training.

    Returns
    -------
    The model directory, or None on the non-chief workers of a multi-worker run.

    Examples
    --------
    >>> from trvae_cli import api
    >>> model_dir = api.train("sample_data/perturbation.h5ad", "condition", "nk_model",
    ...                       cell_type_key="cell_type", exclude=["NK:stimulated"],
    ...                       settings={"epochs": 20})                              # doctest: +SKIP
    """
    from contextlib import nullcontext

    from .engine.signals import Signals
    from .outputs import claim

    o = (options or RunOptions()).validate()
    out = Path(out)
    if isinstance(data, (str, Path)) and not Path(data).exists():     # before any word on the output
        raise TrvaeError(f"data file not found: {data}")
    if validation is not None:
        from .sources import looks_like_images
        from .validate import check_attachable

        if looks_like_images(data):
            raise TrvaeError("--validation holds a validation of held-out cell types; it does not apply to images")
        check_attachable(validation, settings, preset, data)
    # one writer per output (the chief alone writes a multi-worker run's; its lock would bar the others)
    with claim(out) if o.strategy != "multiworker" else nullcontext(), \
            Signals(enabled=o.strategy != "multiworker") as signals:
        path = _train(data, condition_key, out, cell_type_key, exclude, layer, backed, image_size, settings,
                      preset, o, signals)
        if path is not None and validation is not None:
            from .validate import attach_validation

            attach_validation(validation, path)
        return path


def _train(data, condition_key, out, cell_type_key, exclude, layer, backed, image_size, settings, preset,
           o: RunOptions, signals) -> Path | None:
    from .engine.fit import fit, model_record
    from .engine.progress import event_logger
    from .model_dir import checkpoint_path
    from .outputs import check_space, is_model_dir
    from .sources import open_source

    from .sources import looks_like_images

    if condition_key is None and not looks_like_images(data):    # the input's own needs before the output's
        raise TrvaeError("--condition is required for .h5ad input (the obs column of the conditions)")
    if o.resume and not checkpoint_path(out).is_dir():
        raise TrvaeError(f"--resume: no checkpoint in {out} (expected {checkpoint_path(out)}/)")
    if not o.resume:
        check_target(out, o.force, what="model directory", inputs=[_input_path(data)], marker=is_model_dir)
    log = event_logger(o.progress)
    log("phase", phase="reading", data=str(data) if isinstance(data, (str, Path)) else f"the {_data_label(data)}"
        if not isinstance(data, tuple) else "the image arrays")
    source = open_source(data, layer=layer, backed=backed, image_size=image_size)
    try:
        if isinstance(settings, TrainSettings):
            s = resolve_settings(settings, preset=preset)
        else:
            s = resolve_settings(preset=preset, given=settings, input_defaults=source.input_defaults)
        notes: list[str] = []    # said once the data have passed their checks, not before an error
        s = source.check_settings(s, notes.append)
        training, setup, rows = source.training(s, exclude=exclude, condition_key=condition_key,
                                                cell_type_key=cell_type_key, warn=notes.append)
        for note in notes:
            o.warning(note)
        check_space(out.parent, _model_bytes(training.example_shape, s), f"the model directory {out}")
        signals.check("before training started")
        result = fit(training, s, out, o, signals)
        result.log("end", **result.summary())
        # from here the trained model is only in memory: a signal waits until it is saved
        source.record_split(setup, result.n_train, result.n_validation)
        data_record, var_names = setup.to_config()
        command = o.command(result.settings) if callable(o.command) else o.command
        command = command or _api_call("train", data=_data_label(data), condition_key=condition_key,
                                       out=str(out), cell_type_key=cell_type_key, exclude=list(exclude),
                                       layer=layer, backed=backed, settings=result.settings, preset=preset)
        config = model_record(result, command=command, preset=preset or "trvae", data=data_record)
        if var_names is not None:
            config["var_names"] = var_names
        if not result.settings.conditional:
            from .predict import latent_means

            config["latent_arithmetic"] = latent_means(result.model, source, rows, training.labels, setup)
        log("phase", phase="saving", out=str(out))
        path = result.save(out, config)
        if signals.received:
            o.warning(f"{signals.received} arrived while the model was being saved; the model is complete")
        return path
    finally:
        source.close()


def _input_path(data):
    """The file or folder ``data`` was read from (None for in-memory data)."""
    return Path(data) if isinstance(data, (str, Path)) else None


def _model_bytes(example_shape, s: TrainSettings) -> int:
    """A generous size of the model directory: weights, Adam's two moments, the Keras archive."""
    import math

    features = math.prod(example_shape)
    widths = [*s.hidden, *s.encoder_sizes, s.mmd_dim] if s.arch == "mlp" else [s.mmd_dim, *s.filters]
    return 3 * 4 * 2 * features * max(widths) + (1 << 20)


class Prediction:
    """What :func:`transform` made: the predictions as an AnnData, where they were written, and
    which defaults were filled in. Images: ``adata.X`` holds the flattened pixels, ``images`` the
    (n, H, W, C) array and ``adata.obs["output"]`` each image's path under ``path``.

    Cells written to ``path`` were written block by block and are read back from it on first use of
    ``adata`` (backed, ``"r"``, when the transform was: X stays on disk).
    """

    def __init__(self, adata, path: Path | None, defaults_used: dict | None = None, *, backed: bool = False):
        self._adata, self.path, self.defaults_used, self.backed = adata, path, dict(defaults_used or {}), backed

    @property
    def adata(self):
        if self._adata is None:
            import anndata as ad

            self._adata = ad.read_h5ad(self.path, backed="r" if self.backed else None)
        return self._adata

    @property
    def images(self) -> np.ndarray | None:
        shape = self.adata.uns.get("trvae", {}).get("image_shape")
        if shape is None:
            return None
        return np.asarray(self.adata.X, np.float32).reshape(self.adata.n_obs, *[int(v) for v in shape])

    def __repr__(self) -> str:
        return f"Prediction(path={self.path!r}, defaults_used={self.defaults_used!r})"


def transform(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    data=None,
    *,
    source: str,
    target: str,
    out: str | Path | None = None,
    cell_type: str | None = None,
    domain: str | None = None,
    condition_key: str | None = None,
    cell_type_key: str | None = None,
    decode: str | None = None,
    residual_scale: str = "auto",
    seed: int = 0,
    draws: int = 1,
    batch_size: int | None = None,
    force: bool = False,
    write: bool = True,
    backed: bool = False,
    command: str | None = None,
) -> Prediction:
    """Predict how the ``source`` items of ``data`` would look under ``target``.

    Encodes the selected items (cells of ``cell_type``, or images of ``domain``) with the source
    condition and decodes with the target (:mod:`trvae_cli.predict`). ``decode``:
    ``"counterfactual"`` (the cells' default) keeps each item's own residual and adds the model's
    change ``f(z, target) - f(z, source)`` on the ``residual_scale`` (cells: ``counts`` moves each
    cell's own counts by a seeded Poisson coupling, ``log1p`` adds on normalised counts,
    ``linear`` on the data as they are, ``auto`` = counts where the data hold them, else log1p;
    images: linear, clipped to [0, 1]); ``"mean"`` (the images' default) decodes the posterior
    mean of z; ``"sample"`` one seeded draw of q(z|x); ``"auto"`` the mode the model's validation
    chose (``trvae train --validate``: the best on held-out cell types, see
    :func:`trvae_cli.validate.decode_choice`), else the input kind's default, recorded with its
    reason in ``uns["trvae"]["decode_choice"]``. ``decode=None`` is ``"auto"`` when the model holds a
    validation of this ``source`` -> ``target``, else the input kind's default (nothing recorded).
    ``draws=K`` (cells, random decodings) writes K independent draws of every cell, draw-major,
    with ``obs["trvae_draw"]``. ``source == target`` is allowed (the model's reconstruction, not a
    transfer): it is said as a :class:`~trvae_cli.errors.TrvaeNote` and in ``uns["trvae"]["notes"]``.

    Parameters
    ----------
    model_dir
        A directory written by :func:`train`.
    data
        The input (a path, an AnnData, or image arrays); default: what the model was trained on.
    out, write, force
        Where to write (default ``MODEL_DIR/<FROM>_to_<TO>[_<GROUP>].h5ad`` for cells,
        ``MODEL_DIR/<FROM>_to_<TO>/<DOMAIN|all>/`` for images); ``write=False`` only returns.

    Returns
    -------
    :class:`Prediction`

    Examples
    --------
    >>> pred = transform("nk_model", source="control", target="stimulated", cell_type="NK")  # doctest: +SKIP
    >>> pred.adata.obs["condition"].unique()                                                # doctest: +SKIP
    """
    from contextlib import nullcontext

    from .model_dir import read_config
    from .outputs import claim
    from .predict import Decoding
    from .sources import DataSetup, open_source

    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    setup = DataSetup.from_config(cfg)
    if cell_type is not None and domain is not None:
        raise TrvaeError("give --cell-type (cells) or --domain (images), not both")
    group = domain if domain is not None else cell_type
    defaults: dict = {}
    if data is None:
        if setup.path is None:
            raise TrvaeError(f"{model_dir} was trained on in-memory data: pass the data to transform")
        data = setup.path
        defaults["data"] = data
    setup.check_conditions(("--from", source), ("--to", target))
    src = open_source(data, kind=setup.kind, layer=setup.layer, backed=backed, image_size=setup.image_size,
                      channels=setup.channels)
    try:
        src.check_options(condition_key=condition_key, cell_type_key=cell_type_key, residual_scale=residual_scale,
                          draws=draws)
        explicit = decode not in (None, "auto")
        if explicit:                # the options' own errors before any cell is read
            decoding = Decoding(decode, residual_scale, seed, draws).validate()
        setup.check(src)
        selection = src.select(setup, source, group, condition_key=condition_key, cell_type_key=cell_type_key)
        from .validate import decode_choice, expected_quality, model_validation, rows_mean

        validation = model_validation(model_dir, cfg, source=source, target=target)   # read once, used twice
        choice = None     # --decode auto: the model's validation decides; none given: auto only if it holds one
        if not explicit:
            choice = decode_choice(model_dir, cfg, source=source, target=target, default=src.default_decode,
                                   group=selection.group,
                                   group_mean=lambda: (rows_mean(src, selection.rows), list(setup.var_names)),
                                   validation=validation)
            if decode is None and choice["by"] != "validation":
                choice = None      # no validation of this task: today's default, nothing recorded
            elif decode is None:
                defaults["decode"] = choice["chosen"]
            decoding = Decoding(choice["chosen"] if choice is not None else src.default_decode, residual_scale,
                                seed, draws).validate()
        if out is None and write:
            out = src.default_output(model_dir, selection, target)
            defaults["out"] = str(out)
        out = Path(out) if out is not None and write else None
        with claim(out) if out is not None else nullcontext():
            if out is not None:
                check_target(out, force, inputs=[_input_path(data)], containers=[model_dir],
                             marker=src.output_marker, suffix=src.output_suffix)
            stream, record = _prediction_stream(
                model_dir, cfg, src, setup, selection, source, target, decoding, batch_size,
                command or _api_call("transform", model_dir=str(model_dir), data=_data_label(data), source=source,
                                     target=target, cell_type=cell_type, domain=domain, decode=decoding.mode,
                                     residual_scale=residual_scale, seed=seed, draws=draws))
            if choice is not None:
                record["decode_choice"] = choice
            report = validation[0]
            expected = None if report is None else expected_quality(report, decoding.mode, group=selection.group,
                                                                    nearest=(choice or {}).get("nearest"))
            if expected is not None:
                record["expected"] = expected
            if source == target:
                record["notes"] = [f"--from and --to are both {source}: the output is the model's reconstruction "
                                   "of the selected items under their own condition, not a transfer"]
            if out is not None:    # block by block (cells: one block in memory, not N x G)
                pred = src.write_stream(stream, selection, setup, target, record, out)
            else:
                from .predict import collect

                pred = src.prediction(collect(stream, sparse=src.sparse_output), selection, setup, target, record)
            if decoding.mode == "counterfactual" and residual_scale == "auto":
                defaults["residual-scale"] = stream.residual_scale    # what auto resolved to
        for message in record.get("notes", []):
            note(message)
        return Prediction(pred, out, defaults, backed=backed)
    finally:
        src.close()


def _prediction_stream(model_dir, cfg, src, setup, selection, source, target, decoding, batch_size, command):
    """Load the model; (the selection's :class:`~trvae_cli.predict.PredictionStream`, the provenance record)."""
    import dataclasses

    from .backend import versions
    from .model_dir import load_model
    from .predict import PredictionStream, latent_shift

    if src.check_values(selection.rows, setup) < 0 and decoding.mode == "counterfactual":
        if decoding.residual_scale in ("counts", "log1p"):
            raise TrvaeError(f"the data have negative values, so they are not log1p-normalised: --residual-scale "
                             f"{decoding.residual_scale} cannot apply; use linear (the default for such data)")
        decoding = dataclasses.replace(decoding, residual_scale="linear")   # what auto means for such data
    seed, draws = decoding.seed, decoding.draws
    cfg, model = load_model(model_dir, cfg)
    stream = PredictionStream(model, lambda: src.blocks(selection.rows, batch_size), setup.code(source),
                              setup.code(target), decoding,
                              delta=latent_shift(model, cfg.get("latent_arithmetic"), source, target),
                              value_range=src.value_range, auto_residual=src.auto_residual)
    record = {
        "model": str(model_dir.resolve()),
        "model_weights_sha256": cfg.get("result", {}).get("weights_sha256") or "",
        "from": source, "to": target, "decode": decoding.mode,
        "seed": int(seed), "draws": int(draws),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "versions": versions(),
    }
    return stream, record


def embed(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    data=None,
    *,
    condition_key: str | None = None,
    max_cells: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    out: str | Path | None = None,
    force: bool = False,
    command: str | None = None,
):
    """The latent space z and the MMD layer of every item, each encoded and decoded with its own
    condition (items of conditions the model does not know are left out).

    Returns an AnnData (the data's obs, no X) with ``obsm["X_trvae"]`` (posterior mean of z) and
    ``obsm["X_trvae_mmd"]`` (the first decoder layer, where trVAE's MMD acts), ready for
    ``sc.pp.neighbors(emb, use_rep="X_trvae")``. ``max_cells`` keeps a random subset (seeded).
    ``out``: also write it as ``.h5ad`` (``trvae embed``), with the parameters and versions in
    ``uns["trvae"]``.

    Examples
    --------
    >>> emb = embed("nk_model")                                                     # doctest: +SKIP
    >>> emb.obsm["X_trvae"].shape                                                   # doctest: +SKIP
    """
    import anndata as ad

    from .model_dir import load_model, read_config
    from .predict import encode_items
    from .sources import DataSetup, open_source

    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    setup = DataSetup.from_config(cfg)
    if data is None:
        if setup.path is None:
            raise TrvaeError(f"{model_dir} was trained on in-memory data: pass the data to embed")
        data = setup.path
    src = open_source(data, kind=setup.kind, layer=setup.layer, image_size=setup.image_size, channels=setup.channels)
    try:
        setup.check(src)
        rows, codes = src.known_rows(setup, condition_key)
        if max_cells is not None and len(rows) > max_cells:
            keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_cells, replace=False))
            rows, codes = rows[keep], codes[keep]
        src.check_values(rows, setup)
        cfg, model = load_model(model_dir, cfg)
        z, h = encode_items(model, src.blocks(rows, batch_size), codes, with_mmd_layer=True)
        emb = ad.AnnData(obs=src.obs(rows))
        emb.obsm["X_trvae"] = z
        emb.obsm["X_trvae_mmd"] = h
        emb.uns["trvae"] = {"model": str(model_dir.resolve()), "data": src.recorded_path or "",
                            "condition_key": (condition_key or setup.condition_key) if setup.kind == "cells"
                            else "condition",
                            "cell_type_key": (setup.cell_type_key or "") if setup.kind == "cells"
                            else ("domain" if setup.domains else "")}
        if out is not None:
            from .backend import versions
            from .outputs import claim, is_prediction_file, staged

            emb.uns["trvae"].update(
                embedding="z: posterior mean, X_trvae_mmd: the MMD layer, each under the cell's own condition",
                max_cells=int(max_cells) if max_cells is not None else -1, seed=int(seed),
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                command=command or _api_call("embed", model_dir=str(model_dir), data=_data_label(data),
                                             max_cells=max_cells, seed=seed, out=str(out)),
                versions=versions())
            out = Path(out)
            with claim(out):
                check_target(out, force, inputs=[_input_path(data)], containers=[model_dir],
                             marker=is_prediction_file, suffix=".h5ad")
                with staged(out) as tmp:
                    emb.write_h5ad(tmp)
        return emb
    finally:
        src.close()
