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

K is symmetric with a diagonal of exact ones, so only its n (n - 1) / 2 pairs i < j are
evaluated (the 19 exponentials per pair are most of the penalty's cost): the batch is split in
halves A and B (and one row r when n is odd); the A x B block is computed whole, and the pairs
within A and within B share one m x m matrix, A's in its upper triangle and B's in its lower
(:func:`_block_sums`). Same kernel, same estimator: only the order of the float32 sums differs.
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


def _kernel_from_d2(d2, scales):
    """Mean over ``scales`` of ``exp(-d2 / (2 s))``, the scales as one leading axis.

    One ``exp`` over a (S, ...) tensor, reduced over S, instead of S exponentials in a Python loop:
    the same arithmetic (the reciprocal 1 / (2 s) rounded once, then a product), but a graph XLA
    traces and compiles in about a third of the time (MMD forward and backward at 512 x 128:
    1.2 s against 3.7 s; ``benchmarks/README.md``, sixth session), and as fast a step.
    """
    rates = ops.convert_to_tensor([-1.0 / (2.0 * float(s)) for s in scales], dtype=d2.dtype)
    rates = ops.reshape(rates, (len(scales),) + (1,) * len(d2.shape))
    return ops.mean(ops.exp(rates * d2[None]), axis=0)


def multiscale_rbf_kernel(x, y, scales=KERNEL_SCALES):
    """Mean over ``scales`` of ``exp(-d^2 / (2 s))``; shape (len(x), len(y))."""
    return _kernel_from_d2(squared_distances(x, y), scales)


def _block_sums(h, w, scales):
    """``W^T K W`` (C x C) for the kernel K of the rows of ``h`` (centred), from its pairs i < j only.

    With A = rows [0, m), B = rows [m, 2m), r = row 2m when the batch is odd, and k_ii = 1::

        W^T K W = W^T W + S + S^T + R + R^T
        S = W_A^T triu(K_AA) W_A + W_B^T tril(K_BB) W_B + W_A^T K_AB W_B,   R = W_r^T K_r,AB W_AB

    where triu / tril are the strict triangles. The strict upper triangle of one m x m matrix
    holds A's within-half distances and its strict lower triangle B's, so the within-half pairs
    cost one m x m kernel, the between-half pairs another: n^2 / 2 entries instead of n^2.
    """
    n = ops.shape(h)[0]
    m = n // 2
    a, b, r = h[:m], h[m:2 * m], h[2 * m:]
    wa, wb, wr = w[:m], w[m:2 * m], w[2 * m:]
    i = ops.arange(m)
    upper = i[:, None] < i[None, :]
    lower = i[:, None] > i[None, :]
    zero = ops.zeros((), dtype=h.dtype)
    # the diagonal is masked out of both triangles: its entry is set to 0 before the kernel only
    # so that no rounding residual is exponentiated (its kernel value is never used)
    within = ops.where(upper, squared_distances(a, a), ops.where(lower, squared_distances(b, b), zero))
    between = squared_distances(a, b)
    rows = ops.reshape(squared_distances(r, h[:2 * m]), (-1, m))     # the leftover row, (2 r, m)
    k = _kernel_from_d2(ops.concatenate([within, between, rows], axis=0), scales)   # one kernel, all pairs
    k_within, k_between, k_rows = k[:m], k[m:2 * m], ops.reshape(k[2 * m:], (-1, 2 * m))
    s = (ops.matmul(ops.matmul(ops.transpose(wa), ops.where(upper, k_within, zero)), wa)
         + ops.matmul(ops.matmul(ops.transpose(wb), ops.where(lower, k_within, zero)), wb)
         + ops.matmul(ops.matmul(ops.transpose(wa), k_between), wb))
    rows = ops.matmul(ops.matmul(ops.transpose(wr), k_rows), w[:2 * m])
    return ops.matmul(ops.transpose(w), w) + s + ops.transpose(s) + rows + ops.transpose(rows)


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
    h = h - ops.mean(h, axis=0, keepdims=True)   # centred: smaller rounding error in the distances
    counts = ops.sum(w, axis=0)  # (C,)
    present = ops.cast(counts > 0.0, "float32")
    safe = ops.maximum(counts, 1.0)
    m = _block_sums(h, w, scales)
    m = m / (safe[:, None] * safe[None, :])
    diag = ops.diagonal(m)
    pair = diag[:, None] + diag[None, :] - 2.0 * m
    n_cond = ops.shape(w)[1]
    upper = ops.triu(ops.ones((n_cond, n_cond), dtype="float32"), k=1)
    mask = upper * present[:, None] * present[None, :]
    return ops.sum(pair * mask)
