"""Library functions behind ``trvae train`` / ``trvae transform`` on image folders.

The image input shares the model class, losses, MMD layer, strategies, checkpoints and
model directory of the cell input (:func:`trvae_cli.api.fit_model`); only the reading
and writing differ. Images are streamed: a batch is read from disk when Keras asks for it.

Examples
--------
>>> from trvae_cli import images_api
>>> from trvae_cli.settings import TrainSettings
>>> images_api.train_images("sample_data/digits", "digits_model", exclude=["0:thick"],
...                         settings=TrainSettings(arch="conv", epochs=30))          # doctest: +SKIP
>>> images_api.transform_images("digits_model", source="normal", target="thick", domain="0",
...                             out="thick_zeros")                                  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .api import TrainingInput, _api_call, fit_model, weights_digest
from .data.images import ImageSet, load_images, scan_images, write_png
from .errors import TrvaeError
from .model_dir import check_writable_target, load_model, publish_dir, read_config, staging_dir
from .settings import TrainSettings

INPUT_KIND = "images"
ARRAYS_FILE = "transformed.npz"
META_FILE = "trvae.json"
IMAGE_DECODE_MODES = ("mean", "counterfactual", "sample")


def _parse_excludes(exclude: Sequence[str], image_set: ImageSet) -> list[tuple[str, str]]:
    pairs = []
    conditions = set(image_set.conditions.tolist())
    domains = set(image_set.domains.tolist()) if image_set.domains is not None else set()
    for item in exclude:
        domain, sep, condition = str(item).rpartition(":")
        if not sep or not domain or not condition:
            raise TrvaeError(f"--exclude must be DOMAIN:CONDITION, got {item!r}")
        if image_set.domains is None:
            raise TrvaeError("--exclude needs domains: the input has no <condition>/<domain>/ level or domain column")
        if condition not in conditions:
            raise TrvaeError(f"--exclude {item}: unknown condition {condition!r} (have {', '.join(sorted(conditions))})")
        if domain not in domains:
            raise TrvaeError(f"--exclude {item}: unknown domain {domain!r}")
        pairs.append((domain, condition))
    return pairs


def train_images(
    source: str | Path,
    out: str | Path = "trvae_model",
    *,
    exclude: Sequence[str] = (),
    image_size=None,
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
    strategy: str = "none",
) -> Path | None:
    """Train the convolutional trVAE on an image folder or CSV manifest; returns the model dir.

    ``exclude=["3:thick"]`` drops domain 3's thick images (out-of-sample runs).
    ``settings.arch`` must be ``conv`` or ``unet`` (the CLI picks ``conv`` for images).
    """
    from .api import _validate_settings
    from .checkpoint import checkpoint_path

    s = settings or TrainSettings(arch="conv")
    if s.arch == "mlp":
        raise TrvaeError("image input needs --arch conv or --arch unet")
    _validate_settings(s)
    out = Path(out)
    if resume:
        if not checkpoint_path(out).is_dir():
            raise TrvaeError(f"--resume: no checkpoint in {out} (expected {checkpoint_path(out)}/)")
    else:
        check_writable_target(out, force)
    images = scan_images(source, image_size=image_size)
    from .model.conv import check_image_shape

    try:
        check_image_shape(images.shape, s.filters)
    except ValueError as exc:
        raise TrvaeError(str(exc)) from None
    conditions = sorted(set(images.conditions.tolist()))
    if len(conditions) < 2:
        raise TrvaeError(f"need at least two conditions to train, found {conditions}")
    pairs = _parse_excludes(exclude, images)
    keep = np.ones(len(images), bool)
    for domain, condition in pairs:
        keep &= ~((images.domains == domain) & (images.conditions == condition))
    items = np.flatnonzero(keep)
    codes = np.array([conditions.index(c) for c in images.conditions[items]], dtype=np.int32)
    present = sorted(set(codes.tolist()))
    if len(present) < 2:
        raise TrvaeError("after --exclude fewer than two conditions are left to train on")

    def make_batches(positions, seed, fixed, replicas):
        from .training import ImageBatches

        return ImageBatches(images, items[positions], codes[positions], s.batch_size, seed=seed, fixed=fixed,
                            balanced=s.balanced_batches, replicas=replicas)

    src = str(Path(source).resolve())
    fit = fit_model(
        TrainingInput(labels=codes, n_conditions=len(conditions),
                      model_args={"n_genes": 0, "image_shape": images.shape}, example_shape=images.shape,
                      make_batches=make_batches,
                      meta={"data": src, "kind": INPUT_KIND, "n_images": len(images), "shape": list(images.shape),
                            "conditions": conditions, "exclude": list(exclude)}),
        s, out, progress=progress, console=console, warn=warn, checkpoint_every=checkpoint_every, resume=resume,
        threads=threads, strategy=strategy)
    domains = sorted(set(images.domains.tolist())) if images.domains is not None else None
    config = fit.config(
        command or _api_call("train_images", source=str(source), out=str(out), exclude=list(exclude),
                             image_size=image_size, settings=fit.settings),
        preset,
        {
            "kind": INPUT_KIND,
            "path": src,
            "conditions": conditions,
            "domains": domains,
            "exclude": list(exclude),
            "image_size": list(images.image_size),
            "channels": images.channels,
            "n_images_train": fit.n_train,
            "n_images_validation": fit.n_validation,
            "n_images_excluded": int(len(images) - len(items)),
        },
    )
    return fit.save(out, config)


@dataclass
class ImagePrediction:
    images: np.ndarray          # (n, H, W, C) in [0, 1]
    sources: list[Path]         # the source files, in order
    relpaths: list[Path]        # where each was written, relative to ``path``
    path: Path | None


def _output_relpath(rel: Path, source: str, target: str) -> Path:
    """Mirror the input tree; a leading ``<source>/`` folder becomes ``<target>/``."""
    parts = rel.parts
    if len(parts) > 1 and parts[0] == source:
        return Path(target, *parts[1:])
    return rel


def transform_images(
    model_dir: str | Path,
    data: str | Path | None = None,
    *,
    source: str,
    target: str,
    out: str | Path | None = None,
    domain: str | None = None,
    decode: str = "mean",
    seed: int = 0,
    batch_size: int = 256,
    force: bool = False,
    command: str | None = None,
) -> ImagePrediction:
    """Transform the ``source``-condition images of ``data`` (optionally one ``domain``) to ``target``.

    Writes ``out/`` mirroring the input tree (PNG), plus ``transformed.npz`` (``images``,
    ``sources``, ``domains``) and ``trvae.json`` (parameters and versions); atomically.
    ``decode``: ``mean`` decodes the posterior mean of z; ``counterfactual`` adds the
    model's change ``f(z, target) - f(z, source)`` to each image (clipped to [0, 1]);
    ``sample`` decodes one seeded draw of q(z|x).
    """
    from .api import decode_rows
    from .backend import versions
    from .counterfactual import counterfactual

    if decode not in IMAGE_DECODE_MODES:
        raise TrvaeError(f"--decode must be one of {', '.join(IMAGE_DECODE_MODES)} for images, got {decode!r}")
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    dcfg = cfg["data"]
    if dcfg.get("kind") != INPUT_KIND:
        raise TrvaeError(f"{model_dir} was trained on cells, not images")
    data = Path(data) if data is not None else Path(dcfg["path"])
    conditions = list(dcfg["conditions"])
    for name, value in (("--from", source), ("--to", target)):
        if value not in conditions:
            raise TrvaeError(f"{name} {value!r} is not a condition of the model (have {', '.join(conditions)})")
    out = Path(out) if out is not None else model_dir / f"{source}_to_{target}" / (domain or "all")
    check_writable_target(out, force)
    images = scan_images(data, image_size=tuple(dcfg["image_size"]), channels=dcfg["channels"])
    mask = images.conditions == source
    if domain is not None:
        if images.domains is None or domain not in set(images.domains.tolist()):
            raise TrvaeError(f"--domain {domain!r} is not a domain of {data}")
        mask &= images.domains == domain
    items = np.flatnonzero(mask)
    if not len(items):
        raise TrvaeError(f"no {source!r} images{' in domain ' + repr(domain) if domain else ''} in {data}")

    _, model = load_model(model_dir, cfg)
    eye = np.eye(len(conditions), dtype=np.float32)
    s_code, t_code = conditions.index(source), conditions.index(target)
    rng_seed = int(seed)
    results = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        x = load_images(images, chunk)
        n = len(chunk)
        z_mean, z_log_var = model.encoder.predict_on_batch([x, np.repeat(eye[[s_code]], n, 0)])
        z_mean, z_log_var = np.asarray(z_mean, np.float32), np.asarray(z_log_var, np.float32)
        if decode == "sample":
            eps = np.random.default_rng(rng_seed + start).standard_normal(z_mean.shape).astype(np.float32)
            z = z_mean + np.exp(0.5 * z_log_var) * eps
        else:
            z = z_mean
        f_to, _ = decode_rows(model, z, np.full(n, t_code), len(conditions))
        f_to = f_to.reshape(x.shape)
        if decode == "counterfactual":
            f_from, _ = decode_rows(model, z, np.full(n, s_code), len(conditions))
            y = np.clip(counterfactual(x.reshape(n, -1), f_to.reshape(n, -1), f_from.reshape(n, -1), "linear"),
                        0.0, 1.0).reshape(x.shape)
        else:
            y = f_to
        results.append(y.astype(np.float32))
    transformed = np.concatenate(results)
    rels = [_output_relpath(images.relpaths[i], source, target) for i in items]
    if len(set(rels)) != len(rels):
        raise TrvaeError("two source images map to the same output path")

    meta = {
        "model": str(model_dir.resolve()), "model_weights_sha256": cfg.get("result", {}).get("weights_sha256"),
        "data": str(data.resolve()), "source": source, "target": target, "domain": domain, "decode": decode,
        "seed": rng_seed, "n_images": int(len(items)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command or _api_call("transform_images", model_dir=str(model_dir), data=str(data), source=source,
                                        target=target, domain=domain, decode=decode, seed=seed),
        "versions": versions(),
    }
    staged = staging_dir(out)
    try:
        for img, rel in zip(transformed, rels):
            write_png(img, staged / rel)
        np.savez_compressed(
            staged / ARRAYS_FILE, images=transformed,
            sources=np.array([str(images.paths[i]) for i in items]),
            relpaths=np.array([str(r) for r in rels]),
            domains=np.array([str(images.domains[i]) for i in items]) if images.domains is not None else np.array([]),
        )
        (staged / META_FILE).write_text(json.dumps(meta, indent=2))
        publish_dir(staged, out)
    except BaseException:
        import shutil

        shutil.rmtree(staged, ignore_errors=True)
        raise
    return ImagePrediction(transformed, [images.paths[i] for i in items], rels, out)


def model_input_kind(model_dir: str | Path) -> str:
    """``images`` or ``cells`` (model directories from before image support are cells)."""
    return read_config(model_dir)["data"].get("kind", "cells")


__all__ = ["train_images", "transform_images", "model_input_kind", "ImagePrediction", "weights_digest"]
