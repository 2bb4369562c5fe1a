"""Counterfactual decoding: keep each cell's own noise, change only what the model explains.

A decoder's output ``f(z, c)`` is the *expected* expression of a cell with latent state z
under condition c. Decoding ``f(z, target)`` alone therefore predicts conditional means:
smooth cells whose per-gene variance is a fraction of real cells' (on Kang NK, per-gene sd
0.023 against 0.120), because the sampling noise and dropout that make up most of a real
cell's variance are not in ``f``.

Read as an additive-noise model ``x = f(z, c) + e``, the counterfactual of a measured cell
x under another condition follows Pearl's abduction-action-prediction: recover its noise
``e = x - f(z, source)`` (abduction), switch the condition (action), and add the same noise
back (prediction)::

    x_cf = f(z, target) + (x - f(z, source))  =  x + f(z, target) - f(z, source)

With ``scale="log1p"`` (the input the tool expects: ``normalize_total`` + ``log1p``) the
noise is taken as additive on the normalised-count scale, where sampling noise is additive
to a far better approximation than on the log scale::

    x_cf = log1p(max(expm1(x) + expm1(f(z, target)) - expm1(f(z, source)), 0))

``scale="linear"`` adds it on the model's own scale and clips at 0. Both return x itself
when the two decodings agree, and ``f(z, target)`` when the cell equals its reconstruction.

``scale="counts"`` (the default where it applies) keeps the noise on the scale where it
arises: the cell's own integer counts. log1p-normalised data hold them exactly:
``expm1(x) = k * s`` with k the counts and s the cell's size factor (target sum / library
size), and s is the smallest non-zero ``expm1(x)`` of the cell (a count of 1; see
:func:`recover_counts`). With ``mu = expm1(f) / s`` the model's expected counts, each count
is moved by the Poisson coupling of ``mu_source`` to ``mu_target``::

    mu_target >= mu_source:  k' = k + Poisson(mu_target - mu_source)     (superposition)
    mu_target <  mu_source:  k' = Binomial(k, mu_target / mu_source)     (thinning)

If k ~ Poisson(mu_source), then k' ~ Poisson(mu_target) exactly, and k' keeps as much of
k as any such coupling can. Unlike the additive versions it gives the zeros of real cells:
a gene induced from 0 to an expected 0.5 counts stays 0 in 61 % of cells (exp(-0.5)),
where ``log1p`` gives every cell the same 0.5 · s. It draws random numbers (seeded).
"""

from __future__ import annotations

import numpy as np

from .config import RESIDUAL_SCALES

SCALES = RESIDUAL_SCALES[1:]   # counts, log1p, linear ("auto" is resolved by the caller)

# expm1 of anything above this overflows float32 sums; log-normalised data never get near it.
_MAX_LOG = 80.0


def recover_counts(x, max_divisor: int = 3):
    """``(counts, size_factors)`` of log1p-normalised rows ``x``, or ``None`` if they hold no counts.

    Row i is taken as ``log1p(k_i * s_i)`` with integer counts k_i. s_i is the smallest
    non-zero ``expm1(x_i)`` divided by d, for the smallest d in 1..``max_divisor`` that makes every
    ``expm1(x_i) / s_i`` an integer (to float32 rounding); d > 1 only in a cell with no count
    of 1. A row of zeros gets the median size factor of the others. Returns ``None`` when
    some row fits no d (scaled, regressed or batch-corrected data).
    """
    x = np.asarray(x, np.float64)
    if x.size and x.min() < 0:
        return None
    v = np.expm1(np.minimum(x, _MAX_LOG))
    positive = v > 0
    smallest = np.where(positive, v, np.inf).min(axis=1) if x.shape[1] else np.full(len(x), np.inf)
    s = np.full(len(x), np.nan)
    for d in range(1, max_divisor + 1):
        todo = np.isnan(s) & np.isfinite(smallest)
        if not todo.any():
            break
        trial = smallest[todo] / d
        k = v[todo] / trial[:, None]
        fits = (np.abs(k - np.round(k)) <= 2e-3 + 2e-5 * k).all(axis=1)   # float32 rounding of log1p values
        s[np.flatnonzero(todo)[fits]] = trial[fits]
    empty = ~np.isfinite(smallest)
    if np.isnan(s[~empty]).any():
        return None
    s[empty] = np.median(s[~empty]) if (~empty).any() else 1.0
    return np.round(v / s[:, None]), s


def poisson_coupling(k, mu_source, mu_target, rng: np.random.Generator) -> np.ndarray:
    """Counts ``k`` (drawn at rate ``mu_source``) moved to rate ``mu_target`` keeping as many as possible:
    superposition of Poisson(mu_target - mu_source) where the rate rises, binomial thinning where it falls."""
    k = np.asarray(k, np.float64)
    mu_source = np.maximum(np.asarray(mu_source, np.float64), 0.0)
    mu_target = np.maximum(np.asarray(mu_target, np.float64), 0.0)
    up = mu_target >= mu_source
    added = rng.poisson(np.where(up, mu_target - mu_source, 0.0))
    keep = np.where(up, 1.0, mu_target / np.where(up, 1.0, mu_source))
    kept = rng.binomial(k.astype(np.int64), np.clip(keep, 0.0, 1.0))
    return np.where(up, k + added, kept).astype(np.float64)


def counterfactual(x, f_target, f_source, scale: str = "log1p", rng: np.random.Generator | None = None,
                   counts=None) -> np.ndarray:
    """``x`` moved by the model's change ``f_target - f_source`` (arrays of one shape), as float32.

    ``scale="counts"`` needs ``rng`` and uses ``counts`` (the result of :func:`recover_counts`
    for ``x``) when given; it raises ``ValueError`` when ``x`` holds no counts.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if scale == "counts":
        if rng is None:
            raise ValueError("scale='counts' draws random numbers: pass rng")
        recovered = recover_counts(x) if counts is None else counts
        if recovered is None:
            raise ValueError("the rows hold no recoverable counts (x is not log1p of normalised counts)")
        k, s = recovered
        lift = lambda v: np.expm1(np.minimum(np.asarray(v, np.float64), _MAX_LOG)) / s[:, None]  # noqa: E731
        moved = poisson_coupling(k, lift(f_source), lift(f_target), rng)
        return np.log1p(moved * s[:, None]).astype(np.float32)
    x = np.asarray(x, np.float64)
    f_target = np.asarray(f_target, np.float64)
    f_source = np.asarray(f_source, np.float64)
    if scale == "linear":
        return np.maximum(x + f_target - f_source, 0.0).astype(np.float32)
    lift = lambda v: np.expm1(np.minimum(v, _MAX_LOG))  # noqa: E731
    return np.log1p(np.maximum(lift(x) + lift(f_target) - lift(f_source), 0.0)).astype(np.float32)
