"""Float32 rounding bounds for the numerical tests, computed in float64 NumPy.

A tolerance measured on one CPU is not a test of the math: another CPU (other SIMD width,
FMA or not, another summation order in oneDNN/Eigen) rounds differently. The bounds here are
the classical worst-case ones (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 3):
with the unit roundoff ``U = 2**-24`` of float32, a sum or dot product of ``n`` terms, in any
order and with or without FMA, is off by at most ``gamma(n) * sum |terms|`` with
``gamma(n) = n U / (1 - n U)``. They hold on every IEEE-754 machine, so a test that compares a
float32 result with a float64 reference within such a bound passes on any CPU, and still fails
for any error of the math larger than float32 rounding.
"""

from __future__ import annotations

import numpy as np

#: float32 unit roundoff: round-to-nearest is off by at most U relative.
U = 2.0**-24
#: float64 unit roundoff (the references' own rounding, ~2^29 times smaller).
U64 = 2.0**-53
#: Relative error allowed for one float32 ``exp``/``log``: Eigen's vectorised versions are
#: accurate to a couple of ulps (libm to < 1 ulp); 4 U = 2 ulps covers both.
TRANSCENDENTAL_U = 4


def gamma(n, u=U):
    """Higham's gamma_n: the relative error bound of n successive roundings (n U < 1)."""
    n = np.asarray(n, np.float64)
    return n * u / (1.0 - n * u)


def assert_within(actual, desired, bound, what=""):
    """|actual - desired| <= bound elementwise (all float64), with the worst entry in the message."""
    actual = np.asarray(actual, np.float64)
    desired = np.asarray(desired, np.float64)
    bound = np.broadcast_to(np.asarray(bound, np.float64), np.broadcast(actual, desired).shape)
    err = np.abs(actual - desired)
    ok = err <= bound
    if not ok.all():
        i = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
        raise AssertionError(f"{what}: |{actual[i]!r} - {desired[i]!r}| = {err[i]:.3e} > bound {bound[i]:.3e} "
                             f"({(~ok).sum()} of {ok.size} entries out)")


# ------------------------------------------------------------------ the MMD kernel (model/mmd.py)

def d2_rounding_bound(x, y):
    """Worst-case float32 error of ``||x||^2 + ||y||^2 - 2 x.y`` per pair, shape (len(x), len(y)).

    Each of xx, yy and x.y is a reduction over ``dim`` products: off by at most
    gamma(dim) times the sum of the terms' magnitudes; the two additions and the
    (exact) factor 2 add two roundings. Together, in any summation order and with FMA:
    gamma(dim + 2) * (||x||^2 + ||y||^2 + 2 sum_k |x_k y_k|).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    dim = x.shape[1]
    xx = (x**2).sum(1)[:, None]
    yy = (y**2).sum(1)[None, :]
    return gamma(dim + 2) * (xx + yy + 2.0 * np.abs(x) @ np.abs(y).T)


def kernel_rounding_bound(d2, delta, scales):
    """Worst-case float32 error of ``1/S sum_s exp(-d2 / (2 s))`` when d2 (float64) is off by <= delta.

    * The argument: exp(-d/2s) moves by at most exp(-max(d2 - delta, 0)/2s) * min(1, delta/2s)
      when d moves by delta (mean value theorem; it never moves by more than its value, <= 1).
      ``-d2 / (2s)`` rounds twice (fl32(-1 / (2s)), the product): a further relative 2U of d2,
      which is added to delta here.
    * Then each exp (TRANSCENDENTAL_U), the S - 1 additions and the division by S: relative
      gamma(S + 4) of the kernel value (all terms are positive).
    """
    d2 = np.asarray(d2, np.float64)
    delta = np.asarray(delta, np.float64) + gamma(2) * d2
    scales = np.asarray(scales, np.float64)
    k = np.zeros_like(d2)
    dk = np.zeros_like(d2)
    for s in scales:
        k += np.exp(-d2 / (2.0 * s))
        dk += np.exp(-np.maximum(d2 - delta, 0.0) / (2.0 * s)) * np.minimum(1.0, delta / (2.0 * s))
    k /= len(scales)
    dk /= len(scales)
    return dk + gamma(len(scales) + TRANSCENDENTAL_U) * (k + dk)


def np_kernel64(x, y, scales):
    """The multi-scale RBF kernel in float64, distances by direct differences."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return np.mean([np.exp(-d2 / (2.0 * s)) for s in scales], axis=0)


def kernel_bound(x, y, scales):
    """Bound for ``multiscale_rbf_kernel(x, y)`` (float32, not centred) against :func:`np_kernel64`."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return kernel_rounding_bound(d2, d2_rounding_bound(x, y), scales)


def mmd_rounding_bound(h, labels, n_conditions, scales):
    """Worst-case float32 error of ``pairwise_condition_mmd(h, onehot(labels))`` against its float64 value.

    The model centres h (float32) and computes the within-set squared distances by
    xx + yy - 2 x.y, clamped at 0, with an exact zero diagonal. Centred in float64 here, as
    the model does; the float32 centring differs from it by a shift common to all rows (the
    float32 mean's error, which leaves distances alone but enters the magnitudes the
    rounding bound is taken on) and by one rounding per element (U |hc|), which perturbs
    each difference x - y by at most U (|x| + |y|) per coordinate.

    Each kernel entry is then off by :func:`kernel_rounding_bound` (0 on the diagonal, where
    d2 = 0 exactly and k = 1 exactly). M = W^T K W / (n n^T): each M_ij is a mean of
    kernel entries, so it is off by at most the mean of the entries' bounds plus
    gamma(2 batch + 9) |M_ij|: the model sums W^T K W from the pairs i < j in blocks (two
    one-hot matmuls over at most batch rows each, then 7 block additions and the division). Each
    present pair adds |dM_ii| + |dM_jj| + 2 |dM_ij| and gamma(2 + P) of its terms'
    magnitudes (its two additions and the sum over the P pairs).
    """
    h = np.asarray(h, np.float64)
    labels = np.asarray(labels)
    batch, dim = h.shape
    hc = h - h.mean(0, keepdims=True)
    mean_err = gamma(batch + 1) * np.abs(h).mean(0, keepdims=True)         # float32 column means
    mag = np.abs(hc) * (1.0 + U) + mean_err                                # |float32 centred h|, bounded
    d2 = ((hc[:, None, :] - hc[None, :, :]) ** 2).sum(-1)
    diff_err = U * (mag[:, None, :] + mag[None, :, :])                     # per coordinate of x - y
    centring = (2.0 * np.sqrt(d2) * np.sqrt((diff_err**2).sum(-1)) + (diff_err**2).sum(-1))
    delta = d2_rounding_bound(mag, mag) + centring
    k = np.mean([np.exp(-d2 / (2.0 * s)) for s in scales], axis=0)
    dk = kernel_rounding_bound(d2, delta, scales)
    np.fill_diagonal(dk, gamma(len(scales) + TRANSCENDENTAL_U))             # d2 = 0 exactly: k = 1 (+- exp)
    groups = [np.flatnonzero(labels == c) for c in range(n_conditions)]
    present = [c for c in range(n_conditions) if len(groups[c])]
    m = np.zeros((n_conditions, n_conditions))
    dm = np.zeros((n_conditions, n_conditions))
    for i in present:
        for j in present:
            m[i, j] = k[np.ix_(groups[i], groups[j])].mean()
            dm[i, j] = dk[np.ix_(groups[i], groups[j])].mean() + gamma(2 * batch + 9) * abs(m[i, j])
    pairs = [(i, j) for a, i in enumerate(present) for j in present[a + 1:]]
    total = 0.0
    for i, j in pairs:
        total += dm[i, i] + dm[j, j] + 2.0 * dm[i, j]
        total += gamma(2 + len(pairs)) * (m[i, i] + m[j, j] + 2.0 * m[i, j] + dm[i, i] + dm[j, j] + 2.0 * dm[i, j])
    return total


def np_pairwise_mmd64(h, labels, n_conditions, scales):
    """float64 reference of ``pairwise_condition_mmd``: the biased MMD^2 summed over present pairs."""
    h = np.asarray(h, np.float64)
    labels = np.asarray(labels)
    total = 0.0
    for i in range(n_conditions):
        for j in range(i + 1, n_conditions):
            a, b = h[labels == i], h[labels == j]
            if len(a) and len(b):
                total += (np_kernel64(a, a, scales).mean() + np_kernel64(b, b, scales).mean()
                          - 2.0 * np_kernel64(a, b, scales).mean())
    return total
