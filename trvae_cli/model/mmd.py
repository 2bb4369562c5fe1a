"""Maximum mean discrepancy between conditions, written with ``keras.ops`` only.

Kernel (the original trVAE's, the one the paper's numbers came from)::

    k(x, y) = 1/S * sum_s exp(-||x - y||^2 / (2 s))

with the S = 19 scales in :data:`KERNEL_SCALES`, each used as a *variance*.
The tiny scales (1e-6 ... 1e-2) only see near-identical points, the middle ones
(1 ... 100) match the spread of 128 LeakyReLU activations, the huge ones
(1e3 ... 1e6) are nearly flat and mostly compare means.

Estimator: the biased (V-statistic) one, diagonal included::

    MMD^2(X, Y) = mean K(X, X) + mean K(Y, Y) - 2 mean K(X, Y)

Several conditions: with W the (batch, C) one-hot matrix of conditions,
n = column sums of W, K the batch kernel matrix and M = W^T K W / (n n^T),
``MMD_ij = M_ii + M_jj - 2 M_ij`` and the loss is the sum over pairs i < j
where both conditions occur in the batch. Every shape is static, so this runs
under XLA and on a GPU; an absent condition contributes exactly 0, never NaN.
"""

from __future__ import annotations

from keras import ops

from ..kernel import KERNEL_SCALES


def squared_distances(x, y):
    """Pairwise squared Euclidean distances, clamped at 0.

    ``||x||^2 + ||y||^2 - 2 x.y`` can come out slightly negative by rounding for
    coinciding points; with a scale of 1e-6 that would make ``exp`` explode.
    """
    xx = ops.sum(ops.square(x), axis=1, keepdims=True)
    yy = ops.sum(ops.square(y), axis=1, keepdims=True)
    d2 = xx + ops.transpose(yy) - 2.0 * ops.matmul(x, ops.transpose(y))
    return ops.maximum(d2, 0.0)


def self_squared_distances(h):
    """Squared distances within one set: centred first (smaller rounding error) and with an
    exact zero diagonal, so that k(x, x) = 1 at every scale, even 1e-6, where a rounding
    residual of 1e-7 would otherwise turn exp(-d^2 / 2s) into 0.95."""
    h = h - ops.mean(h, axis=0, keepdims=True)
    d2 = squared_distances(h, h)
    return d2 * (1.0 - ops.eye(ops.shape(h)[0], dtype=d2.dtype))


def _kernel_from_d2(d2, scales):
    k = ops.zeros_like(d2)
    for s in scales:
        k = k + ops.exp(-d2 / (2.0 * float(s)))
    return k / float(len(scales))


def multiscale_rbf_kernel(x, y, scales=KERNEL_SCALES):
    """Mean over ``scales`` of ``exp(-d^2 / (2 s))``; shape (len(x), len(y))."""
    return _kernel_from_d2(squared_distances(x, y), scales)


def pairwise_condition_mmd(h, onehot, scales=KERNEL_SCALES):
    """Sum over present condition pairs of the biased MMD^2 of ``h``.

    Parameters
    ----------
    h
        (batch, features) activations.
    onehot
        (batch, C) one-hot condition matrix (float).
    """
    h = ops.cast(h, "float32")
    w = ops.cast(onehot, "float32")
    k = _kernel_from_d2(self_squared_distances(h), scales)
    counts = ops.sum(w, axis=0)  # (C,)
    present = ops.cast(counts > 0.0, "float32")
    safe = ops.maximum(counts, 1.0)
    m = ops.matmul(ops.matmul(ops.transpose(w), k), w)
    m = m / (safe[:, None] * safe[None, :])
    diag = ops.diagonal(m)
    pair = diag[:, None] + diag[None, :] - 2.0 * m
    n_cond = ops.shape(w)[1]
    upper = ops.triu(ops.ones((n_cond, n_cond), dtype="float32"), k=1)
    mask = upper * present[:, None] * present[None, :]
    return ops.sum(pair * mask)
