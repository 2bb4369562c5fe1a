"""The Source protocol and the data set-up saved with a model."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from ..errors import TrvaeError

KINDS = ("cells", "images")


def safe_name(text: str) -> str:
    """``text`` as one file-name component: anything but letters, digits and ``._+-`` becomes ``_``
    (so a label such as ``../x`` can never name a path outside the output folder)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("_")
    return "x" if name in ("", ".", "..") else name


@dataclass
class DataSetup:
    """What a model was trained on, saved with it (``config.json``: ``data`` and ``var_names``).

    Modelled on scvi-tools' ``setup_anndata`` record: the input kind, where it came from, the
    condition key and the *ordered* conditions (index = the model's condition code), the
    cell-type key (cells) or the domains (images), the matrix used, the genes in the model's
    order or the image shape, and the exclusions. :meth:`check` compares new data with it and
    names precisely what differs.
    """

    kind: str
    conditions: list[str]
    path: str | None = None             # None: trained on an in-memory AnnData or arrays
    condition_key: str | None = None    # cells: the obs column of conditions
    cell_type_key: str | None = None    # cells: the obs column of cell types
    layer: str | None = None            # cells: the matrix (None: X)
    backed: bool = False
    var_names: list[str] | None = None  # cells: the genes, in the model's order
    domains: list[str] | None = None    # images: the domain labels (None: no domain level)
    image_size: list[int] | None = None
    channels: int | None = None
    exclude: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)   # n_cells_train, n_images_excluded, ...

    # -- the record in config.json ---------------------------------------------------------
    def to_config(self) -> tuple[dict, list[str] | None]:
        """(``config["data"]``, ``config["var_names"]``)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("var_names", "counts")}
        if self.kind == "cells":
            for k in ("domains", "image_size", "channels"):
                d.pop(k)
            d["n_genes"] = len(self.var_names or [])
        else:
            for k in ("condition_key", "cell_type_key", "layer", "backed"):
                d.pop(k)
        d.update(self.counts)
        return d, self.var_names

    @classmethod
    def from_config(cls, cfg: dict) -> "DataSetup":
        d = dict(cfg.get("data") or {})
        kind = d.get("kind", "cells")    # model directories from before image support are cells
        if kind not in KINDS:
            raise TrvaeError(f"the model's config.json names an unknown input kind {kind!r}")
        conditions = d.get("conditions")
        if not isinstance(conditions, list) or len(conditions) < 2:
            raise TrvaeError("the model's config.json does not list its conditions (data.conditions)")
        known = set(cls.__dataclass_fields__) - {"kind", "conditions", "counts", "var_names"}
        setup = cls(kind=kind, conditions=[str(c) for c in conditions],
                    **{k: d[k] for k in known if k in d}, var_names=cfg.get("var_names"),
                    counts={k: v for k, v in d.items() if k.startswith("n_") and k != "n_genes"})
        if kind == "cells" and not setup.var_names:
            raise TrvaeError("the model's config.json has no var_names (the genes it was trained on)")
        return setup

    # -- checks of new data ----------------------------------------------------------------
    def check_conditions(self, *labels: tuple[str, str]) -> None:
        """Each (flag, label) must be a condition the model knows."""
        for flag, label in labels:
            if label not in self.conditions:
                raise TrvaeError(f"{flag} {label!r} is not a condition the model knows; it knows: "
                                 f"{', '.join(self.conditions)}")

    def code(self, condition: str) -> int:
        return self.conditions.index(condition)

    def check(self, source: "Source") -> None:
        """Refuse data the model cannot read, naming what differs (kind, genes, image shape)."""
        if source.kind != self.kind:
            raise TrvaeError(f"the model was trained on {self.kind}, and this input holds {source.kind}")
        source.check_setup(self)


@dataclass
class Selection:
    """Items chosen for inference: positions into the source, and what chose them."""

    rows: np.ndarray
    condition: str
    group: str | None = None
    condition_key: str | None = None    # cells: the obs columns the selection was read from
    group_key: str | None = None


class Source(Protocol):
    """An input of one kind. Implementations: :class:`~trvae_cli.sources.cells.CellSource`,
    :class:`~trvae_cli.sources.images.ImageSource`."""

    kind: str
    default_decode: str                 # the decoding ``transform`` uses when none is asked for
    residual_scales: tuple[str, ...]    # the residual scales a counterfactual may use
    auto_residual: str | None           # what --residual-scale auto means (None: decided by the data)
    value_range: tuple[float, float] | None   # predictions are clipped to it (images: [0, 1])
    input_defaults: dict                # settings defaults of this kind (images: a conv network)
    batch_size: int                     # inference batch
    output_marker: object               # path -> True when it is a prediction this kind wrote (--force)
    output_suffix: str | None           # what --out must end with (cells: .h5ad; images: a folder, None)
    sparse_output: bool | None          # predictions as CSR (None: where the first block is sparse enough)

    recorded_path: str | None           # the file or folder read (None: in-memory data)

    def close(self) -> None: ...
    # training
    def check_settings(self, settings, warn) -> "TrainSettings": ...   # refuses or adjusts (and says so)
    def training(self, settings, *, exclude=(), condition_key=None, cell_type_key=None, warn=None):
        """(TrainingData for the engine, the DataSetup to save, the training rows)."""
    def record_split(self, setup: DataSetup, n_train: int, n_validation: int) -> None: ...
    # inference
    def check_setup(self, setup: DataSetup) -> None: ...
    def check_options(self, *, condition_key=None, cell_type_key=None, residual_scale="auto", draws=1) -> None: ...
    def select(self, setup: DataSetup, condition: str, group: str | None, **keys) -> Selection: ...
    def known_rows(self, setup: DataSetup, condition_key=None) -> tuple[np.ndarray, np.ndarray]: ...
    def check_values(self, rows: np.ndarray, setup: DataSetup) -> float: ...   # the smallest value
    def blocks(self, rows: np.ndarray, batch_size: int | None = None) -> Iterator[np.ndarray]: ...
    def groups_of(self, rows: np.ndarray, setup: DataSetup) -> np.ndarray | None: ...
    def obs(self, rows: np.ndarray): ...
    # predictions
    def prediction(self, arrays, selection: Selection, setup: DataSetup, target: str, record: dict): ...
    def write_stream(self, stream, selection: Selection, setup: DataSetup, target: str, record: dict,
                     out: Path):
        """Write a PredictionStream to ``out`` atomically; the AnnData if it was built in memory, else None."""
    def default_output(self, model_dir: Path, selection: Selection, target: str) -> Path: ...
