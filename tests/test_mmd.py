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


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 47, 48])
def test_odd_and_tiny_batches_match_the_reference(batch):
    # the model evaluates only the pairs i < j, in two halves and a leftover row for odd batches
    rng = np.random.default_rng(100 + batch)
    h = rng.normal(size=(batch, 12)).astype("float32")
    labels = rng.integers(0, 3, batch)
    h[labels == 2] += 0.7
    value, reference, bound = checked_mmd(h, labels, 3)
    assert np.isfinite(value)


def np_mmd_gradient(h, labels, n_conditions, scales=KERNEL_SCALES):
    """float64 d MMD / d h of the summed pairwise estimator, analytically.

    MMD = sum_ij c_ij k(d2_ij) with c symmetric (1/n_p^2 within condition p, once per pair of
    present conditions it belongs to; -1/(n_p n_q) between p and q, each order), so
    d MMD / d h_i = sum_j 4 c_ij k'(d2_ij) (h_i - h_j), k'(d) = mean_s -exp(-d/2s) / (2s).
    Returns the gradient, the magnitude sum_{j != i} |4 c_ij k'(d2_ij)| (|h_i| + |h_j|) per entry and d2.
    """
    h = np.asarray(h, np.float64)
    counts = np.bincount(labels, minlength=n_conditions)
    present = [c for c in range(n_conditions) if counts[c]]
    c = np.zeros((len(h), len(h)))
    for a, p in enumerate(present):
        for q in present[a + 1:]:
            ip, iq = labels == p, labels == q
            c[np.ix_(ip, ip)] += 1.0 / counts[p] ** 2
            c[np.ix_(iq, iq)] += 1.0 / counts[q] ** 2
            c[np.ix_(ip, iq)] -= 1.0 / (counts[p] * counts[q])
            c[np.ix_(iq, ip)] -= 1.0 / (counts[p] * counts[q])
    diff = h[:, None, :] - h[None, :, :]
    d2 = (diff**2).sum(-1)
    dk = np.mean([-np.exp(-d2 / (2.0 * s)) / (2.0 * s) for s in scales], axis=0)
    coef = 4.0 * c * dk
    np.fill_diagonal(coef, 0.0)   # h_i - h_i = 0: the diagonal (k = 1 at every h) has no gradient
    grad = (coef[:, :, None] * diff).sum(1)
    magnitude = (np.abs(coef)[:, :, None] * (np.abs(h)[:, None, :] + np.abs(h)[None, :, :])).sum(1)
    return grad, magnitude, d2


@pytest.mark.parametrize("batch,n_conditions", [(40, 2), (33, 3)])
def test_gradient_matches_numpy_reference(batch, n_conditions):
    tf = pytest.importorskip("tensorflow")
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the gradient is taken with TensorFlow's tape")
    rng = np.random.default_rng(batch)
    labels = rng.integers(0, n_conditions, batch)
    labels[:n_conditions] = np.arange(n_conditions)
    h = (rng.normal(size=(batch, 8)) * 1.5 + labels[:, None] * 0.5).astype("float32")
    grad64, magnitude, d2 = np_mmd_gradient(h, labels, n_conditions)
    off = d2[~np.eye(batch, dtype=bool)]
    assert off.min() > 0.5   # well separated: the scales <= 1e-2 are exactly 0 off the diagonal, in both
    hv = tf.Variable(h)
    with tf.GradientTape() as tape:
        loss = pairwise_condition_mmd(hv, onehot(labels, n_conditions))
    grad32 = tape.gradient(loss, hv).numpy()
    # Each term 4 c_ij k'(d2_ij) (h_i - h_j) is a product of float32 factors: the distance
    # (gamma(dim + 2), relative to the magnitudes), k' at 19 scales (exp, its sum: gamma(S + 4 + U)),
    # the counts and the chain rule's products (a handful of roundings), and the sum over j and
    # the blocks (2 batch + 9). A distance error delta moves k' by at most max |k''| delta, where
    # |k''| <= mean_s exp(-d2/2s) / (2s)^2 and d2 >= 0.5 here; those, relative to |k'|, are
    # bounded by max over the live scales of delta / (2s) (delta <= gamma(dim + 2) 4 max ||h||^2).
    delta = gamma(8 + 2) * 4.0 * (np.asarray(h, np.float64) ** 2).sum(1).max()
    live = [s for s in KERNEL_SCALES if np.exp(-off.min() / (2 * s)) > 1e-30]
    k_sensitivity = delta / (2.0 * min(live))
    rel = gamma(2 * batch + 8 + 2 + len(KERNEL_SCALES) + TRANSCENDENTAL_U + 16) + k_sensitivity
    assert_within(grad32, grad64, rel * magnitude, "float32 MMD gradient vs float64 reference")
    # and the bound is tight enough to see a wrong gradient: half the MMD's gradient is far outside it
    assert np.abs(0.5 * grad64 - grad64).max() > (rel * magnitude).max() * 10
