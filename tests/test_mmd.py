"""The MMD kernel and estimator against a plain NumPy reference of seed eq. 2-3."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from keras import ops

from trvae_cli.model.mmd import KERNEL_SCALES, multiscale_rbf_kernel, pairwise_condition_mmd, squared_distances


def np_kernel(x, y, scales=KERNEL_SCALES):
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return np.mean([np.exp(-d2 / (2.0 * s)) for s in scales], axis=0)


def np_mmd(x, y):
    return np_kernel(x, x).mean() + np_kernel(y, y).mean() - 2.0 * np_kernel(x, y).mean()


def np_pairwise(h, labels, n_conditions):
    total = 0.0
    for i in range(n_conditions):
        for j in range(i + 1, n_conditions):
            a, b = h[labels == i], h[labels == j]
            if len(a) and len(b):
                total += np_mmd(a, b)
    return total


def onehot(labels, n):
    return np.eye(n, dtype="float32")[labels]


def mmd(h, labels, n):
    return float(ops.convert_to_numpy(pairwise_condition_mmd(h.astype("float32"), onehot(labels, n))))


def test_scales_are_the_originals():
    assert len(KERNEL_SCALES) == 19
    assert KERNEL_SCALES[0] == 1e-6 and KERNEL_SCALES[-1] == 1e6


@pytest.mark.parametrize("n_conditions", [2, 3, 4])
def test_matches_numpy_reference(n_conditions):
    rng = np.random.default_rng(n_conditions)
    h = rng.normal(size=(48, 16)).astype("float32") * 0.3
    labels = rng.integers(0, n_conditions, 48)
    labels[:n_conditions] = np.arange(n_conditions)
    h[labels == 1] += 0.5
    assert mmd(h, labels, n_conditions) == pytest.approx(np_pairwise(h.astype(float), labels, n_conditions), abs=1e-5)


def test_kernel_matches_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)).astype("float32"), rng.normal(size=(9, 5)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(multiscale_rbf_kernel(x, y)), np_kernel(x, y), atol=1e-6)


def test_identical_groups_give_zero():
    # Exact in real arithmetic; in float32 the cross-condition duplicates' distances carry
    # ~1e-7 rounding, which the 1e-6 / 1e-5 scales amplify: ~1e-4, against ~0.3 for a 0.25 shift.
    rng = np.random.default_rng(1)
    half = rng.normal(size=(20, 8)).astype("float32")
    h = np.concatenate([half, half])
    labels = np.repeat([0, 1], 20)
    assert abs(mmd(h, labels, 2)) < 3e-4
    shifted = h.copy()
    shifted[20:] += 0.25
    assert mmd(shifted, labels, 2) > 100 * abs(mmd(h, labels, 2))


def test_grows_with_mean_shift():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(64, 8)).astype("float32")
    labels = np.repeat([0, 1], 32)
    values = []
    for shift in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0):
        h = base.copy()
        h[labels == 1] += shift
        values.append(mmd(h, labels, 2))
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_absent_condition_adds_nothing_and_no_nan():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(30, 6)).astype("float32")
    labels = np.repeat([0, 2], 15)  # condition 1 absent from the batch
    value = mmd(h, labels, 3)
    assert np.isfinite(value)
    both = mmd(h, np.repeat([0, 1], 15), 2)
    assert value == pytest.approx(both, abs=1e-6)
    assert mmd(h, np.zeros(30, dtype=int), 3) == 0.0  # a single condition: no pair at all


def test_coinciding_points_do_not_explode():
    # large coordinates: ||x||^2 + ||y||^2 - 2xy rounds below zero without the clamp
    x = np.full((4, 128), 37.123, dtype="float32")
    d2 = ops.convert_to_numpy(squared_distances(x, x))
    assert (d2 >= 0).all()
    k = ops.convert_to_numpy(multiscale_rbf_kernel(x, x))
    assert np.isfinite(k).all() and k.max() <= 1.0 + 1e-6
    h = np.concatenate([x, x + 1e-3]).astype("float32")
    assert np.isfinite(mmd(h, np.repeat([0, 1], 4), 2))
