"""Image folders and manifests in, PNGs out (NumPy + Pillow only; no Keras).

Two input layouts:

* a folder ``ROOT/<condition>/<domain>/<file>`` or, without domains,
  ``ROOT/<condition>/<file>``. Files deeper down (``ROOT/<condition>/<domain>/a/b.png``)
  belong to ``<domain>``. Only ``.png``, ``.jpg`` and ``.jpeg`` files count (any case);
  names starting with ``.`` (files and folders) are skipped. One tree uses one layout:
  images both directly in condition folders and in domain folders are an error.
* a CSV manifest with columns ``path,condition[,domain]`` (more columns are allowed);
  each path is relative to the CSV's folder or absolute, and any format Pillow reads is
  accepted.

:func:`scan_images` reads only the file headers (Pillow opens lazily), so scanning a
large folder is cheap; :func:`load_images` reads the requested files only, so training
can stream batches from a folder larger than memory.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TrvaeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Pillow modes read as one grey channel; everything else is read as RGB
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


@dataclass
class ImageSet:
    """A list of image files with their labels; pixels are read by :func:`load_images`.

    ``paths``: absolute paths; ``relpaths``: the same files relative to ``root``
    (to mirror the input tree on output); ``conditions``: one label per file;
    ``domains``: one label per file, or None when the input has no domain level;
    ``image_size``: (height, width) every image is read at; ``channels``: 1 or 3.
    Rows are sorted by (condition, domain, relpath). Images given as arrays
    (:func:`images_from_arrays`) have ``arrays`` set, no files and relpaths
    ``<condition>/[<domain>/]<i>.png``.
    """

    paths: list[Path]
    conditions: np.ndarray
    domains: np.ndarray | None
    relpaths: list[Path]
    image_size: tuple[int, int]
    channels: int
    root: Path | None
    arrays: np.ndarray | None = None   # (n, H, W, C) in [0, 1] when the images are in memory

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one loaded image."""
        return (*self.image_size, self.channels)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return not _hidden(name) and name.lower().endswith(IMAGE_SUFFIXES)


def _walk_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` at any depth, skipping hidden files and folders."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image_name(f))
    return found


def _scan_folder(root: Path) -> tuple[list[Path], list[str], list[str] | None, list[Path]]:
    entries = sorted(p for p in root.iterdir() if not _hidden(p.name))
    loose = [p.name for p in entries if p.is_file() and _is_image_name(p.name)]
    condition_dirs = [p for p in entries if p.is_dir()]
    files = {c: _walk_images(c) for c in condition_dirs}
    if loose and not any(files.values()):
        raise TrvaeError(f"{root} holds images but no condition folders: put them in "
                         f"{root}/<condition>/ (e.g. {loose[0]})")
    if not any(files.values()):
        raise TrvaeError(f"no images (.png, .jpg, .jpeg) found under {root}")
    if loose:
        raise TrvaeError(f"{root} holds images outside any condition folder (e.g. {loose[0]}); "
                         f"put every image in {root}/<condition>/[<domain>/]")
    empty = [c.name for c, f in files.items() if not f]
    if empty:
        raise TrvaeError(f"condition folder {root / empty[0]} holds no images (.png, .jpg, .jpeg)")

    flat = [p for f in files.values() for p in f if p.parent in files]
    nested = [p for f in files.values() for p in f if p.parent not in files]
    if flat and nested:
        raise TrvaeError(f"{root} mixes images directly in condition folders ({flat[0].relative_to(root)}) "
                         f"with images in domain folders ({nested[0].relative_to(root)}); "
                         f"use one layout: ROOT/<condition>/<domain>/ or ROOT/<condition>/")
    paths, conditions, domains, relpaths = [], [], [], []
    for folder, found in files.items():
        for p in found:
            rel = p.relative_to(root)
            paths.append(p.absolute())
            relpaths.append(rel)
            conditions.append(folder.name)
            domains.append(rel.parts[1])
    return paths, conditions, (domains if nested else None), relpaths


def _read_manifest(csv_path: Path) -> tuple[list[Path], list[str], list[str] | None, list[Path]]:
    root = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v.strip() if isinstance(v, str) else v)
                     for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrvaeError(f"cannot read manifest {csv_path}: {exc}") from None
    missing = [c for c in ("path", "condition") if c not in columns]
    if missing:
        raise TrvaeError(f"manifest {csv_path} has no {' or '.join(repr(m) for m in missing)} column "
                         f"(columns: {', '.join(columns) or 'none'}); it needs path,condition[,domain]")
    has_domain = "domain" in columns
    if not rows:
        raise TrvaeError(f"no images found: manifest {csv_path} has no rows")

    paths, conditions, domains, inside = [], [], [], []
    for line, row in enumerate(rows, start=2):
        for col in ("path", "condition") + (("domain",) if has_domain else ()):
            if not row.get(col):
                raise TrvaeError(f"manifest {csv_path}, line {line}: empty {col!r}")
        given = Path(row["path"])
        path = given if given.is_absolute() else root / given
        if not path.is_file():
            raise TrvaeError(f"manifest {csv_path}, line {line}: {row['path']} does not exist"
                             + ("" if given.is_absolute() else f" (looked for {path})"))
        path = Path(os.path.normpath(path.absolute()))
        paths.append(path)
        conditions.append(row["condition"])
        domains.append(row["domain"] if has_domain else None)
        try:
            inside.append(path.relative_to(Path(os.path.normpath(root.absolute()))))
        except ValueError:
            inside.append(None)
    outside = [p for p, rel in zip(paths, inside) if rel is None]
    if outside:  # files outside the manifest's folder keep their layout below their common folder
        common = Path(os.path.commonpath([p.parent for p in outside]))
    relpaths = [rel if rel is not None else p.relative_to(common) for p, rel in zip(paths, inside)]
    seen: dict[Path, int] = {}
    for i, rel in enumerate(relpaths):
        if rel in seen:
            raise TrvaeError(f"manifest {csv_path} lists {paths[seen[rel]]} and {paths[i]}, "
                             f"which would be written to the same output path {rel}")
        seen[rel] = i
    return paths, conditions, (domains if has_domain else None), relpaths


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(height, width) and Pillow mode of an image file, from its header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return (img.height, img.width), img.mode
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise TrvaeError(f"cannot read image {path}: {exc}") from None


def _parse_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        image_size = (image_size, image_size)
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise TrvaeError(f"image size must be HEIGHT WIDTH or one number, got {image_size!r}") from None
    if h < 1 or w < 1:
        raise TrvaeError(f"image size must be positive, got {h}x{w}")
    return h, w


def scan_images(source, image_size=None, channels: int | None = None) -> ImageSet:
    """List the images of a folder or CSV manifest (see the module docstring for layouts).

    ``image_size`` ((H, W) or one int): read every image at this size (bilinear, area-aware
    when shrinking); None needs every image to have the same size. ``channels`` (1 or 3):
    read as grey or RGB; None picks 1 when every file is greyscale (Pillow modes
    ``1/L/LA/I/I;16/F``), else 3. Raises :class:`TrvaeError` for anything the user must fix.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise TrvaeError(f"{source} does not exist")
    if channels is not None and channels not in (1, 3):
        raise TrvaeError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    size = _parse_size(image_size)
    if source.is_dir():
        root = source.absolute()
        paths, conditions, domains, relpaths = _scan_folder(root)
    elif source.suffix.lower() == ".csv":
        root = source.absolute().parent
        paths, conditions, domains, relpaths = _read_manifest(source)
    else:
        raise TrvaeError(f"{source} is neither a folder of images nor a .csv manifest")

    order = sorted(range(len(paths)),
                   key=lambda i: (conditions[i], domains[i] if domains is not None else "",
                                  relpaths[i].as_posix()))
    paths = [paths[i] for i in order]
    relpaths = [relpaths[i] for i in order]
    conditions = np.array([conditions[i] for i in order], dtype=str)
    domains = None if domains is None else np.array([domains[i] for i in order], dtype=str)

    sizes, gray = {}, True
    for p in paths:
        hw, mode = _header(p)
        sizes.setdefault(hw, p)
        gray = gray and mode in GRAY_MODES
    if size is None:
        if len(sizes) > 1:
            (s1, p1), (s2, p2) = list(sizes.items())[:2]
            raise TrvaeError(f"images differ in size ({p1.name} is {s1[0]}x{s1[1]}, {p2.name} is "
                             f"{s2[0]}x{s2[1]}, height x width); pass --image-size to resize them all")
        size = next(iter(sizes))
    if channels is None:
        channels = 1 if gray else 3
    return ImageSet(paths=paths, conditions=conditions, domains=domains, relpaths=relpaths,
                    image_size=size, channels=channels, root=root)


def images_from_arrays(images, conditions, domains=None) -> ImageSet:
    """An :class:`ImageSet` of in-memory images: (n, H, W) or (n, H, W, C) with C 1 or 3, values in [0, 1]."""
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or len(arr) == 0:
        raise TrvaeError(f"images must be an array (n, H, W) or (n, H, W, 1 or 3), got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise TrvaeError("image values must be finite and in [0, 1]")
    conditions = np.asarray(conditions, dtype=str)
    domains = None if domains is None else np.asarray(domains, dtype=str)
    for name, labels in (("conditions", conditions), ("domains", domains)):
        if labels is not None and labels.shape != (len(arr),):
            raise TrvaeError(f"{name} must hold one label per image ({len(arr)}), got shape {labels.shape}")
    order = np.lexsort((np.arange(len(arr)), domains if domains is not None else np.zeros(len(arr)), conditions))
    rel = [Path(conditions[i], *( [domains[i]] if domains is not None else []), f"{i}.png") for i in order]
    return ImageSet(paths=[Path(p) for p in rel], conditions=conditions[order],
                    domains=None if domains is None else domains[order], relpaths=rel,
                    image_size=(int(arr.shape[1]), int(arr.shape[2])), channels=int(arr.shape[3]), root=None,
                    arrays=np.ascontiguousarray(arr[order]))


def read_image(path: Path, size: tuple[int, int], channels: int) -> np.ndarray:
    """One image as float32 (H, W, C) in [0, 1] (alpha is dropped)."""
    from PIL import Image, UnidentifiedImageError

    resample = Image.Resampling.BILINEAR  # Pillow widens the filter when shrinking (area-aware)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
                # 16-bit (or float) grey: keep the precision, scale by the 16-bit range
                arr = np.asarray(img, dtype=np.float32) / (1.0 if img.mode == "F" else 65535.0)
                img = Image.fromarray(np.clip(arr, 0.0, 1.0).astype(np.float32))  # mode F
                if (img.height, img.width) != size:
                    img = img.resize((size[1], size[0]), resample)
                arr = np.asarray(img, dtype=np.float32)[:, :, None]
                if channels == 3:
                    arr = np.repeat(arr, 3, axis=2)
            else:
                if img.mode == "P":
                    img = img.convert("RGBA")  # palette transparency, without Pillow's warning
                img = img.convert("L" if channels == 1 else "RGB")
                if (img.height, img.width) != size:
                    img = img.resize((size[1], size[0]), resample)
                arr = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise TrvaeError(f"cannot read image {path}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.clip(arr, 0.0, 1.0)


def load_images(image_set: ImageSet, indices) -> np.ndarray:
    """The images at ``indices`` (ints into ``image_set``) as float32 (n, H, W, C) in [0, 1].

    Reads only those files; each is converted to ``image_set.channels`` and resized to
    ``image_set.image_size`` when it differs.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    n = len(image_set)
    if indices.size and (indices.min() < -n or indices.max() >= n):
        raise IndexError(f"image index out of range for {n} images")
    if image_set.arrays is not None:
        return image_set.arrays[indices]
    out = np.empty((len(indices), *image_set.shape), dtype=np.float32)
    for k, i in enumerate(indices):
        out[k] = read_image(image_set.paths[i], image_set.image_size, image_set.channels)
    return out


def load_all(image_set: ImageSet) -> np.ndarray:
    """Every image of ``image_set`` as float32 (n, H, W, C) in [0, 1]."""
    return load_images(image_set, np.arange(len(image_set)))


def write_png(image, path) -> Path:
    """Write an (H, W), (H, W, 1) or (H, W, 3) array in [0, 1] as an 8-bit PNG (grey or RGB).

    Values are clipped to [0, 1] (NaN becomes 0) and rounded to 0-255; parent folders are
    created. Returns the path.
    """
    from PIL import Image

    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise ValueError(f"expected an image of shape (H, W), (H, W, 1) or (H, W, 3), got {arr.shape}")
    pixels = np.rint(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return path
