"""Images: a folder ``ROOT/<condition>/[<domain>/]``, a CSV manifest, or arrays with labels.

Pixels are read from disk one batch at a time (a folder larger than memory trains). Domains play
the part cell types play for cells: ``--exclude DOMAIN:CONDITION`` holds one out, ``--domain``
picks one to transform, and scGen's arithmetic weighs them equally.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..data.images import ImageSet, images_from_arrays, load_images, scan_images, write_png
from ..errors import TrvaeError
from ..outputs import inside, is_image_prediction, staged
from .base import DataSetup, Selection, safe_name

ARRAYS_FILE = "transformed.npz"
META_FILE = "trvae.json"


def parse_excludes(exclude: Sequence[str], image_set: ImageSet) -> list[tuple[str, str]]:
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


def _output_relpath(rel: Path, source: str, target: str) -> Path:
    """Mirror the input tree; a leading ``<source>/`` folder becomes ``<target>/``. Every part is a
    safe file name, so no label can lead outside the output folder."""
    parts = list(rel.parts)
    if len(parts) > 1 and parts[0] == source:
        parts[0] = target
    return Path(*[safe_name(p) for p in parts[:-1]], safe_name(parts[-1]))


class ImageSource:
    """Images with a condition (and optionally a domain) each."""

    kind = "images"
    default_decode = "mean"
    residual_scales = ("auto", "linear")   # pixels: the change is added as it is, clipped to [0, 1]
    auto_residual = "linear"   # what --residual-scale auto means (None: decided by the data)
    value_range = (0.0, 1.0)
    input_defaults = {"arch": "conv", "mmd_dim": 32, "alpha": 1e-4, "dropout": 0.0, "learning_rate": 1e-3}
    # what the image benchmarks measured (cells: 128, 0.03, 0.1, 3e-3)
    batch_size = 256
    output_marker = staticmethod(is_image_prediction)   # what --force may replace
    output_suffix = None                                 # --out is a folder

    def __init__(self, images: ImageSet, path: Path | None):
        self.images, self.path = images, path

    @classmethod
    def open(cls, data, image_size=None, channels: int | None = None) -> "ImageSource":
        if isinstance(data, tuple):
            if not 2 <= len(data) <= 3:
                raise TrvaeError("image arrays are given as (images, conditions) or (images, conditions, domains)")
            images = images_from_arrays(*data)
            if image_size is not None and tuple(images.image_size) != tuple(image_size):
                raise TrvaeError(f"the images are {images.image_size[0]}x{images.image_size[1]}, the model's "
                                 f"{image_size[0]}x{image_size[1]}")
            if channels is not None and images.channels != channels:
                raise TrvaeError(f"the images have {images.channels} channel(s), the model {channels}")
            return cls(images, None)
        return cls(scan_images(data, image_size=image_size, channels=channels), Path(data))

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "the image arrays"

    @property
    def recorded_path(self) -> str | None:
        return str(self.path.resolve()) if self.path is not None else None

    def close(self) -> None:
        pass

    # -- training --------------------------------------------------------------------------
    def check_settings(self, s, warn):
        if s.arch == "mlp":
            raise TrvaeError("image input needs --arch conv or --arch unet")
        from ..model.conv import check_image_shape

        try:
            check_image_shape(self.images.shape, s.filters)
        except ValueError as exc:
            raise TrvaeError(str(exc)) from None
        return s

    def training(self, s, *, exclude=(), condition_key=None, cell_type_key=None, warn=None):
        from ..engine.fit import TrainingData

        if condition_key is not None or cell_type_key is not None:
            raise TrvaeError("--condition and --cell-type-key apply to .h5ad input: images take their "
                             "condition and domain from the folders or the manifest")
        images = self.images
        conditions = sorted(set(images.conditions.tolist()))
        if len(conditions) < 2:
            raise TrvaeError(f"need at least two conditions to train, found {conditions}")
        keep = np.ones(len(images), bool)
        for domain, condition in parse_excludes(exclude, images):
            keep &= ~((images.domains == domain) & (images.conditions == condition))
        items = np.flatnonzero(keep)
        codes = np.array([conditions.index(c) for c in images.conditions[items]], dtype=np.int32)
        if len(set(codes.tolist())) < 2:
            raise TrvaeError("after --exclude fewer than two conditions are left to train on")

        def make_batches(positions, seed, fixed, replicas, batch_size):
            from .feeders import ImageBatches

            return ImageBatches(images, items[positions], codes[positions], batch_size, seed=seed, fixed=fixed,
                                balanced=s.balanced_batches, replicas=replicas)

        domains = sorted(set(images.domains.tolist())) if images.domains is not None else None
        setup = DataSetup(kind=self.kind, conditions=conditions, path=self.recorded_path, domains=domains,
                          image_size=list(images.image_size), channels=images.channels, exclude=list(exclude),
                          counts={"n_images_excluded": int(len(images) - len(items))})
        meta = {"data": self.recorded_path or "<arrays>", "kind": self.kind, "n_images": len(images),
                "shape": list(images.shape), "conditions": conditions, "exclude": list(exclude)}
        data = TrainingData(labels=codes, n_conditions=len(conditions),
                            model_args={"n_genes": 0, "image_shape": images.shape}, example_shape=images.shape,
                            make_batches=make_batches, meta=meta,
                            describe={"images": int(len(images)), "image_shape": [int(v) for v in images.shape[1:]],
                                      "images_excluded": int(len(images) - len(items))})
        return data, setup, items

    @staticmethod
    def record_split(setup: DataSetup, n_train: int, n_validation: int) -> None:
        setup.counts = {"n_images_train": n_train, "n_images_validation": n_validation, **setup.counts}

    # -- inference -------------------------------------------------------------------------
    def check_setup(self, setup: DataSetup) -> None:
        """Scanned at the model's size and channels, so the shapes agree by construction."""

    def check_options(self, *, condition_key=None, cell_type_key=None, residual_scale="auto", draws=1) -> None:
        """Refuse the transform options that only mean something for cells."""
        if condition_key is not None or cell_type_key is not None:
            raise TrvaeError("--condition and --cell-type-key apply to cells: images take their condition and "
                             "domain from the folders or the manifest")
        if residual_scale not in self.residual_scales:
            raise TrvaeError(f"--residual-scale {residual_scale} applies to cells: an image counterfactual adds "
                             "the change to the pixels (linear) and clips to [0, 1]")
        if draws != 1:
            raise TrvaeError("--draws applies to cells; image transforms write one image per source image")

    def select(self, setup: DataSetup, condition: str, group: str | None, **_) -> Selection:
        images = self.images
        mask = images.conditions == condition
        if group is not None:
            if images.domains is None or group not in set(images.domains.tolist()):
                raise TrvaeError(f"--domain {group!r} is not a domain of {self.name}")
            mask &= images.domains == group
        items = np.flatnonzero(mask)
        if not len(items):
            raise TrvaeError(f"no {condition!r} images{' in domain ' + repr(group) if group else ''} in {self.name}")
        return Selection(items, condition, group)

    def known_rows(self, setup: DataSetup, condition_key=None) -> tuple[np.ndarray, np.ndarray]:
        known = np.isin(self.images.conditions, setup.conditions)
        if not known.any():
            raise TrvaeError(f"no image of {self.name} has a condition the model knows")
        rows = np.flatnonzero(known)
        return rows, np.array([setup.code(c) for c in self.images.conditions[rows]])

    def check_values(self, rows: np.ndarray, setup: DataSetup) -> float:
        """Pixels are read into [0, 1]: nothing to check before reading."""
        return 0.0

    def blocks(self, rows: np.ndarray, batch_size: int | None = None) -> Iterator[np.ndarray]:
        step = batch_size or self.batch_size
        for start in range(0, len(rows), step):
            yield load_images(self.images, rows[start:start + step])

    def groups_of(self, rows: np.ndarray, setup: DataSetup) -> np.ndarray | None:
        return None if self.images.domains is None else self.images.domains[rows]

    def obs(self, rows: np.ndarray):
        import pandas as pd

        images = self.images
        obs = pd.DataFrame({"condition": pd.Categorical(images.conditions[rows]),
                            "path": [str(images.paths[i]) for i in rows]},
                           index=pd.Index([images.relpaths[i].as_posix() for i in rows]))
        if images.domains is not None:
            obs["domain"] = pd.Categorical(images.domains[rows])
        return obs

    # -- predictions -----------------------------------------------------------------------
    def prediction(self, arrays, selection: Selection, setup: DataSetup, target: str, record: dict):
        """The transformed images as an AnnData: X the flattened pixels (``images`` reshapes them),
        obs the source files and their output paths, z in ``obsm["X_trvae"]``."""
        import anndata as ad
        import pandas as pd

        items = selection.rows
        rels = [_output_relpath(self.images.relpaths[i], selection.condition, target) for i in items]
        if len(set(rels)) != len(rels):
            raise TrvaeError("two source images map to the same output path")
        obs = self.obs(items)
        obs["condition"] = pd.Categorical([target] * len(obs), categories=setup.conditions)
        obs["trvae_source_condition"] = pd.Categorical([selection.condition] * len(obs), categories=setup.conditions)
        obs["output"] = [r.as_posix() for r in rels]
        pred = ad.AnnData(X=arrays.x.reshape(len(items), -1), obs=obs)
        pred.obsm["X_trvae"] = arrays.z
        pred.uns["trvae"] = {**record, "residual_scale": arrays.residual_scale or "",
                             "data": self.recorded_path or "", "source": selection.condition,
                             "target": target, "domain": selection.group, "n_images": int(len(items)),
                             "image_shape": [*self.images.image_size, self.images.channels]}
        return pred

    def default_output(self, model_dir: Path, selection: Selection, target: str) -> Path:
        return model_dir / f"{safe_name(selection.condition)}_to_{safe_name(target)}" / safe_name(selection.group or "all")

    sparse_output = False   # pixels: dense

    def write_stream(self, stream, selection: Selection, setup: DataSetup, target: str, record: dict, out: Path):
        """Collect the stream (images are small) and write it (:meth:`write_prediction`); returns the AnnData."""
        from ..predict import collect

        pred = self.prediction(collect(stream), selection, setup, target, record)
        self.write_prediction(pred, out)
        return pred

    @staticmethod
    def write_prediction(pred, out: Path) -> Path:
        """``out/``: PNGs mirroring the input tree, ``transformed.npz`` and ``trvae.json``, atomically."""
        meta = dict(pred.uns["trvae"])
        images = np.asarray(pred.X, np.float32).reshape(pred.n_obs, *meta["image_shape"])
        with staged(out, directory=True) as tmp:
            for img, rel in zip(images, pred.obs["output"]):
                write_png(img, inside(tmp, rel))
            np.savez_compressed(
                tmp / ARRAYS_FILE, images=images, sources=np.array(list(pred.obs["path"])),
                relpaths=np.array(list(pred.obs["output"])),
                domains=np.array([str(d) for d in pred.obs["domain"]]) if "domain" in pred.obs else np.array([]))
            (tmp / META_FILE).write_text(json.dumps({"format": "trvae-images", **meta}, indent=2, default=str))
        return out
