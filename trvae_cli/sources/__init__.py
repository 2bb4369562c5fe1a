"""Where the input kinds differ, and nowhere else: one :class:`~trvae_cli.sources.base.Source`
protocol with a cells implementation (an ``.h5ad`` or an in-memory AnnData, in memory or backed)
and an images implementation (a folder, a CSV manifest, or arrays with labels).

A source reads the labels, sets up the data (:class:`~trvae_cli.sources.base.DataSetup`, saved
with the model and checked against new data), feeds training, hands inference its batches and
writes predictions. Nothing here imports Keras except the feeders, and only when training.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TrvaeError
from .base import DataSetup, Selection, Source, safe_name


def looks_like_images(data) -> bool:
    """A folder, a ``.csv`` manifest or an ``(images, labels)`` pair is image input."""
    if isinstance(data, tuple):
        return True
    if isinstance(data, (str, Path)):
        p = Path(data)
        return p.is_dir() or p.suffix.lower() == ".csv"
    return False


def open_source(data, *, kind: str | None = None, layer: str | None = None, backed: bool = False,
                image_size=None, channels: int | None = None) -> Source:
    """Open ``data`` as the source of its kind (or of ``kind``, a model's).

    Cells: a path to an ``.h5ad`` or an in-memory ``AnnData``. Images: a folder, a CSV
    manifest, or a tuple ``(images, conditions)`` / ``(images, conditions, domains)`` of arrays.
    Options of the other kind are refused with one line.
    """
    is_images = looks_like_images(data) if kind is None else kind == "images"
    if is_images:
        if layer is not None or backed:
            raise TrvaeError("--layer and --backed apply to .h5ad input, not to images")
        from .images import ImageSource

        return ImageSource.open(data, image_size=image_size, channels=channels)
    if image_size is not None:
        raise TrvaeError("--image-size applies to image input (a folder or manifest), not to .h5ad")
    from .cells import CellSource

    return CellSource.open(data, layer=layer, backed=backed)


__all__ = ["DataSetup", "Selection", "Source", "open_source", "safe_name"]
