"""Stroke thickness (Morpho-MNIST definition) and per-image MSE / SSIM (trvae_cli.images_metrics).

Tolerances: an axis-aligned bar of width w reads w within 0.1 px (the distance transform
is exact there); slanted strokes with round caps, crosses and rings, whose pixelated edges
and stroke ends pull the skeleton mean down, read within 15 % (or 0.25 px for w = 1).
"""

import numpy as np
import pytest

from trvae_cli.images_metrics import batch_thickness, mse, ssim, stroke_thickness

WIDTHS = (1, 2, 3, 4, 6)


def _bar(width, size=28, vertical=False):
    img = np.zeros((size, size))
    lo = size // 2 - width // 2
    if vertical:
        img[4:size - 4, lo:lo + width] = 1.0
    else:
        img[lo:lo + width, 4:size - 4] = 1.0
    return img


def _segment(p, q, width, size=56):
    """A stroke of ``width`` px from p to q (row, col) with round caps."""
    yy, xx = np.mgrid[:size, :size].astype(float)
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = q - p
    t = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / (d @ d), 0.0, 1.0)
    dist = np.hypot(yy - (p[0] + t * d[0]), xx - (p[1] + t * d[1]))
    return (dist <= width / 2).astype(float)


def _ring(width, radius=20, size=56):
    yy, xx = np.mgrid[:size, :size].astype(float)
    r = np.hypot(yy - (size - 1) / 2, xx - (size - 1) / 2)
    return ((r <= radius) & (r > radius - width)).astype(float)


def _close(measured, width):
    return abs(measured - width) <= max(0.15 * width, 0.25)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("vertical", [False, True])
def test_bars_read_their_width(width, vertical):
    assert stroke_thickness(_bar(width, vertical=vertical)) == pytest.approx(width, abs=0.1)


@pytest.mark.parametrize("shape", ["slanted", "cross", "ring"])
def test_other_strokes_within_tolerance_and_monotone(shape):
    make = {
        "slanted": lambda w: _segment((8, 8), (47, 40), w),
        "cross": lambda w: np.maximum(_segment((8, 8), (47, 40), w), _segment((8, 40), (47, 8), w)),
        "ring": _ring,
    }[shape]
    measured = [stroke_thickness(make(w)) for w in WIDTHS]
    for w, t in zip(WIDTHS, measured):
        assert _close(t, w), (shape, w, t)
    assert np.all(np.diff(measured) > 0), measured


def test_grey_levels_and_contrast_do_not_matter():
    """The cut is at half the image's own range: a faint bar reads like a crisp one."""
    bar = _bar(4)
    assert stroke_thickness(0.3 * bar + 0.1) == pytest.approx(stroke_thickness(bar), abs=1e-9)


def test_upscale_one_still_measures():
    assert stroke_thickness(_bar(4), upscale=1) == pytest.approx(4.0, abs=0.1)


def test_empty_and_constant_images_are_nan():
    assert np.isnan(stroke_thickness(np.zeros((28, 28))))
    assert np.isnan(stroke_thickness(np.full((28, 28), 0.7)))


def test_batch_thickness_shapes():
    imgs = np.stack([_bar(w) for w in (1, 2, 4)] + [np.zeros((28, 28))])
    t = batch_thickness(imgs)
    assert t.shape == (4,)
    np.testing.assert_allclose(t[:3], [1, 2, 4], atol=0.1)
    assert np.isnan(t[3])
    np.testing.assert_array_equal(batch_thickness(imgs[..., None]), t)
    np.testing.assert_allclose(batch_thickness(np.repeat(imgs[..., None], 3, axis=-1)), t)
    with pytest.raises(ValueError):
        batch_thickness(np.zeros((28, 28)))


def test_mse_matches_reference():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 8, 9, 1)), rng.random((5, 8, 9, 1))
    np.testing.assert_allclose(mse(a, b), [np.mean((x - y) ** 2) for x, y in zip(a, b)])
    np.testing.assert_array_equal(mse(a, a), np.zeros(5))
    with pytest.raises(ValueError):
        mse(a, b[:4])


def test_ssim_identity_and_reference():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(1)
    a = rng.random((3, 16, 16, 1))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    np.testing.assert_allclose(ssim(a, a), 1.0)
    s = ssim(a, b)
    assert s.shape == (3,) and np.all(s < 1.0)
    np.testing.assert_allclose(s, [structural_similarity(x[..., 0], y[..., 0], data_range=1.0)
                                   for x, y in zip(a, b)])
    np.testing.assert_allclose(ssim(a[..., 0], b[..., 0]), s)


def test_ssim_rgb_uses_channel_axis():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    a, b = rng.random((2, 16, 16, 3)), rng.random((2, 16, 16, 3))
    np.testing.assert_allclose(ssim(a, a), 1.0)
    np.testing.assert_allclose(ssim(a, b), [structural_similarity(x, y, data_range=1.0, channel_axis=-1)
                                            for x, y in zip(a, b)])
