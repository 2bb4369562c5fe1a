"""Morphometry and pixel scores of images (NumPy / SciPy / scikit-image; no Keras).

Stroke thickness follows Morpho-MNIST (Castro et al. 2019, "Morpho-MNIST:
Quantitative Assessment and Diagnostics for Representation Learning", JMLR 20(178);
https://github.com/dccastro/Morpho-MNIST): the digit is upscaled (x4) for sub-pixel
precision, binarised at half of its own intensity range, reduced to its skeleton, and
the thickness is twice the mean Euclidean distance-to-background along the skeleton,
divided by the upscale factor so that it is in the pixels of the original image.

Differences from their code, both small: the skeleton is
``skimage.morphology.skeletonize`` with ``scipy.ndimage.distance_transform_edt`` (they
use ``medial_axis``, which returns the same distance map); the upscaling is a cubic
``skimage.transform.resize`` (they use ``pyramid_expand``, which adds a Gaussian blur).

``mse`` and ``ssim`` score each image of a batch against its counterpart.
All functions take images scaled to [0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _as_2d(image) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) -> float (H, W); colour is averaged over channels."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img.mean(axis=-1)
    if img.ndim != 2:
        raise ValueError(f"expected one image of shape (H, W[, C]), got shape {np.shape(image)}")
    return img


def upscaled_binary(image, threshold: float = 0.5, upscale: int = 4) -> np.ndarray:
    """The binary, ``upscale`` times larger version of ``image`` that thickness is measured on.

    Cubic upscaling, then a pixel is foreground when it is at least
    ``min + threshold * (max - min)`` of the upscaled image (Morpho-MNIST's rule: the cut is
    relative to the image's own range, so a faint or low-contrast digit is measured the same
    way as a crisp one). An image with no contrast gives an all-False array.
    """
    from skimage.transform import resize

    img = _as_2d(image)
    if upscale < 1 or int(upscale) != upscale:
        raise ValueError(f"upscale must be a positive integer, got {upscale}")
    upscale = int(upscale)
    if upscale > 1:
        img = resize(img, (img.shape[0] * upscale, img.shape[1] * upscale), order=3,
                     mode="constant", cval=float(img.min()) if img.size else 0.0,
                     anti_aliasing=False, preserve_range=True)
    if not img.size:
        return np.zeros(img.shape, dtype=bool)
    lo, hi = float(img.min()), float(img.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-6:
        return np.zeros(img.shape, dtype=bool)
    return img >= lo + threshold * (hi - lo)


def binary_thickness(binary: np.ndarray, upscale: int = 1) -> float:
    """Mean stroke thickness of a binary image: 2 x mean distance-to-background on its skeleton.

    The result is divided by ``upscale`` (pass the factor the binary image was upscaled by).
    NaN when there is no foreground.
    """
    from skimage.morphology import skeletonize

    binary = np.asarray(binary, dtype=bool)
    if not binary.any():
        return float("nan")
    # pad so that strokes touching the border are measured against background outside it
    padded = np.pad(binary, 1)
    skeleton = skeletonize(padded)
    if not skeleton.any():
        return float("nan")
    distance = ndimage.distance_transform_edt(padded)
    return float(2.0 * distance[skeleton].mean() / upscale)


def stroke_thickness(image_2d, threshold: float = 0.5, upscale: int = 4) -> float:
    """Mean stroke thickness of one image, in pixels of the original image (Morpho-MNIST).

    Steps (as in Morpho-MNIST's ``ImageMorphology.mean_thickness``):

    1. upscale ``upscale`` times (cubic) for sub-pixel precision;
    2. binarise at ``min + threshold * (max - min)`` of the upscaled image;
    3. skeletonise the binary image (``skimage.morphology.skeletonize``);
    4. Euclidean distance transform of the binary image
       (``scipy.ndimage.distance_transform_edt``: each foreground pixel's distance to the
       nearest background pixel, which is about half the local stroke width on the skeleton);
    5. thickness = 2 x mean distance over the skeleton pixels / ``upscale``.

    The distance is measured between pixel centres, so a stroke exactly ``w`` pixels wide
    reads ``w`` for even upscaled widths and up to ``1 / upscale`` more otherwise; stroke ends
    pull the mean slightly down. ``image_2d`` is (H, W) or (H, W, C) (channels averaged) in
    [0, 1]. Returns NaN for an empty (constant) image.
    """
    return binary_thickness(upscaled_binary(image_2d, threshold, upscale), upscale)


def batch_thickness(images, threshold: float = 0.5, upscale: int = 4) -> np.ndarray:
    """:func:`stroke_thickness` of each image of an (n, H, W) or (n, H, W, C) array."""
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (n, H, W[, C]), got shape {images.shape}")
    return np.array([stroke_thickness(img, threshold, upscale) for img in images], dtype=np.float64)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image batches differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (3, 4):
        raise ValueError(f"expected image batches of shape (n, H, W[, C]), got shape {a.shape}")
    return a, b


def mse(a, b) -> np.ndarray:
    """Mean squared error of each image pair: ``a``, ``b`` are (n, H, W[, C]); returns (n,)."""
    a, b = _pair(a, b)
    return ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)


def ssim(a, b) -> np.ndarray:
    """Structural similarity of each image pair (``skimage.metrics.structural_similarity``).

    ``a``, ``b`` are (n, H, W[, C]) in [0, 1] (``data_range=1.0``, default 7 x 7 window);
    for C > 1 the SSIM is averaged over channels. Returns (n,).
    """
    from skimage.metrics import structural_similarity

    a, b = _pair(a, b)
    if a.ndim == 4 and a.shape[-1] == 1:
        a, b = a[..., 0], b[..., 0]
    channel_axis = -1 if a.ndim == 4 else None
    return np.array([structural_similarity(x, y, data_range=1.0, channel_axis=channel_axis)
                     for x, y in zip(a, b)], dtype=np.float64)
