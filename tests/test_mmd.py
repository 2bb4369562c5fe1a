"""The MMD kernel and estimator against a plain NumPy reference of seed eq. 2-3."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from keras import ops

from trvae_cli.model.mmd import KERNEL_SCALES, multiscale_rbf_kernel, pairwise_condition_mmd, squared_distances
from tolerances import TRANSCENDENTAL_U, assert_within, gamma, kernel_bound, mmd_rounding_bound

# Tolerances: the float32 Keras values are compared with these float64 NumPy references
# within worst-case float32 rounding bounds (tests/tolerances.py: gamma(n) bounds for the
# reductions xx + yy - 2x.y and the one-hot matmuls, propagated through exp(-d2/2s) at each
# of the 19 scales), never within a bound measured on one CPU.


def np_kernel(x, y, scales=KERNEL_SCALES):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
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


def checked_mmd(h, labels, n):
    """(float32 value, float64 reference, rounding bound); asserts the value is within the bound."""
    h = np.asarray(h, np.float32)
    value = mmd(h, labels, n)
    reference = np_pairwise(h.astype(np.float64), labels, n)
    bound = mmd_rounding_bound(h, labels, n, KERNEL_SCALES)
    assert_within(value, reference, bound, "float32 MMD vs float64 reference")
    return value, reference, bound


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
    value, reference, bound = checked_mmd(h, labels, n_conditions)
    assert bound < 1e-3 * reference   # no near-duplicate points: the bound is far below the value


def test_kernel_matches_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)).astype("float32"), rng.normal(size=(9, 5)).astype("float32")
    # per entry: gamma(dim + 2) error of the float32 distance, propagated through each exp, + gamma(S + 4) k
    assert_within(ops.convert_to_numpy(multiscale_rbf_kernel(x, y)), np_kernel(x, y), kernel_bound(x, y, KERNEL_SCALES),
                  "float32 kernel vs float64 reference")


def test_identical_groups_give_zero():
    # Exact (0) in real arithmetic and in the float64 reference. In float32 the distance of a
    # cross-condition duplicate pair is a rounding residual of xx + yy - 2x.y, up to
    # gamma(dim + 2) (4 ||x||^2) ~ 2e-5 on any CPU (4e-7 ... 1e-6 measured, depending on the
    # CPU's summation order), which the 1e-6 ... 1e-4 scales turn into a kernel drop of up to
    # ~2/19 per duplicate entry: mmd_rounding_bound allows for exactly that, and no more.
    rng = np.random.default_rng(1)
    half = rng.normal(size=(20, 8)).astype("float32")
    h = np.concatenate([half, half])
    labels = np.repeat([0, 1], 20)
    value, reference, bound = checked_mmd(h, labels, 2)
    assert reference == 0.0
    shifted = h.copy()
    shifted[20:] += 0.25
    value_s, reference_s, bound_s = checked_mmd(shifted, labels, 2)
    assert reference_s - bound_s > bound       # a 0.25 shift is told apart from rounding on any CPU
    assert value_s > value


def test_grows_with_mean_shift():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(64, 8)).astype("float32")
    labels = np.repeat([0, 1], 32)
    values = []
    for shift in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0):
        h = base.copy()
        h[labels == 1] += shift
        values.append(checked_mmd(h, labels, 2))
    # the float64 values grow by more than the two float32 bounds, so the float32 ones grow on any CPU
    assert all(rb - bb > ra + ba for (_, ra, ba), (_, rb, bb) in zip(values, values[1:])), values
    assert all(b[0] > a[0] for a, b in zip(values, values[1:])), values


def test_absent_condition_adds_nothing_and_no_nan():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(30, 6)).astype("float32")
    labels = np.repeat([0, 2], 15)  # condition 1 absent from the batch
    value, reference, bound = checked_mmd(h, labels, 3)
    assert np.isfinite(value)
    both, reference_both, bound_both = checked_mmd(h, np.repeat([0, 1], 15), 2)
    assert reference == reference_both     # the same two groups: the absent condition adds exactly 0
    assert abs(value - both) <= bound + bound_both
    assert mmd(h, np.zeros(30, dtype=int), 3) == 0.0  # a single condition: no pair at all


def test_coinciding_points_do_not_explode():
    # large coordinates: ||x||^2 + ||y||^2 - 2xy rounds below zero without the clamp
    x = np.full((4, 128), 37.123, dtype="float32")
    d2 = ops.convert_to_numpy(squared_distances(x, x))
    assert (d2 >= 0).all()
    k = ops.convert_to_numpy(multiscale_rbf_kernel(x, x))
    # each exp(-d2/2s) <= 1 (d2 >= 0), so the mean of 19 is <= 1 up to exp's and the sum's rounding
    assert np.isfinite(k).all() and k.max() <= 1.0 + gamma(len(KERNEL_SCALES) + TRANSCENDENTAL_U)
    h = np.concatenate([x, x + 1e-3]).astype("float32")
    assert np.isfinite(mmd(h, np.repeat([0, 1], 4), 2))
