"""Every way of turning encoded items into predictions, for cells and images alike.

A prediction encodes each source item with its own condition, then decodes under the target:

* ``mean``: ``f(z, target)`` with z the posterior mean (smooth conditional means);
* ``sample``: ``f(z, target)`` with one draw of q(z|x) per item, seeded;
* ``counterfactual``: the item itself plus the model's change ``f(z, target) - f(z, source)``, on a
  residual scale (:mod:`trvae_cli.counterfactual`; counts draws from a seeded Poisson coupling);
* for an unconditional model (scGen), z is moved by scGen's latent arithmetic first
  (:mod:`trvae_cli.arithmetic`), since its decoder ignores the condition;
* ``draws=K`` repeats the random decodings K times, each draw with its own stream.

Items arrive in blocks from a source; the model is used only through ``TRVAE.encode``,
``TRVAE.decode`` and ``TRVAE.sample_latent``. The random streams are consumed block by block in
order, so the result does not depend on the block size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from .config import DECODE_MODES, RESIDUAL_SCALES
from .counterfactual import counterfactual, recover_counts
from .errors import TrvaeError


@dataclass(frozen=True)
class Decoding:
    """How to decode: ``mode`` (one of :data:`~trvae_cli.config.DECODE_MODES`), the counterfactual's
    ``residual_scale``, the ``seed`` of every random draw and the number of ``draws``."""

    mode: str = "counterfactual"
    residual_scale: str = "auto"
    seed: int = 0
    draws: int = 1

    @property
    def random(self) -> bool:
        return self.mode == "sample" or (self.mode == "counterfactual" and self.residual_scale in ("auto", "counts"))

    def validate(self) -> "Decoding":
        modes = [m for m in DECODE_MODES if m != "auto"]   # "auto" is resolved before decoding (api.transform)
        if self.mode not in modes:
            raise TrvaeError(f"--decode must be one of {', '.join(modes)}, got {self.mode!r}")
        if self.residual_scale not in RESIDUAL_SCALES:
            raise TrvaeError(f"--residual-scale must be one of {', '.join(RESIDUAL_SCALES)}, "
                             f"got {self.residual_scale!r}")
        if int(self.draws) != self.draws or self.draws < 1:
            raise TrvaeError(f"--draws must be a whole number >= 1, got {self.draws}")
        if int(self.seed) != self.seed or not 0 <= self.seed < 2**32:
            raise TrvaeError(f"--seed must be in [0, 2**32), got {self.seed}")
        if self.draws > 1 and not self.random:
            scale = "" if self.mode != "counterfactual" else f" --residual-scale {self.residual_scale}"
            raise TrvaeError(f"--draws {self.draws} needs random draws, and --decode {self.mode}{scale} has none: "
                             "use --decode sample or counterfactual with --residual-scale counts")
        return self

    def generators(self) -> list[np.random.Generator]:
        """One generator per draw; draw 0 is what ``draws=1`` gives, draw d > 0 has its own stream."""
        return [np.random.default_rng(self.seed if d == 0 else [self.seed, d]) for d in range(int(self.draws))]


@dataclass
class Predicted:
    """Predictions of n items: ``x`` (draws * n rows, draw-major; dense, or CSR when collected sparse),
    their ``z``, the residual scale used."""

    x: object
    z: np.ndarray
    draws: int
    residual_scale: str | None


@dataclass(frozen=True)
class Block:
    """One block of predictions: rows ``start ... start + len(x) - 1`` of draw ``draw``."""

    draw: int
    start: int
    x: np.ndarray
    z: np.ndarray


def latent_shift(model, arithmetic: dict | None, source: str, target: str) -> np.ndarray | None:
    """scGen's ``mean z(target) - mean z(source)`` for an unconditional model; None for a conditional one."""
    if model.conditional:
        return None
    from .arithmetic import latent_delta

    if not arithmetic or "means" not in arithmetic:
        raise TrvaeError("the model is unconditional and holds no latent means (latent_arithmetic): retrain it")
    means = arithmetic["means"]
    for label in (source, target):
        if label not in means:
            raise TrvaeError(f"the model holds no latent mean for condition {label!r}")
    return latent_delta(means, source, target)


def _shifted(z: np.ndarray, delta: np.ndarray | None) -> np.ndarray:
    return z.astype(np.float32) if delta is None else (z + delta).astype(np.float32)


def _resolve_scale(scale: str, x: np.ndarray, first: bool, n_random: int, rows: str):
    """(counts or None, the scale): "auto" is counts if the first block holds them, else log1p."""
    counts = None
    if scale in ("auto", "counts"):
        counts = recover_counts(x)
        if counts is None and (scale == "counts" or not first):
            raise TrvaeError(f"cells {rows} of the selection hold no recoverable counts (X is not log1p of "
                             "normalised counts): use --residual-scale log1p or linear")
        if scale == "auto":
            scale = "counts" if counts is not None else "log1p"
        if scale != "counts" and n_random > 1:
            raise TrvaeError(f"--draws {n_random} needs random draws, and --residual-scale {scale} has none: "
                             "use --residual-scale counts (log1p-normalised counts) or --decode sample")
    return counts, scale


class PredictionStream:
    """The predictions of a selection, block by block: iterate for :class:`Block` s, draw-major (every
    block of draw 0, then of draw 1, ...), so a writer can append rows in order and hold one block.

    ``blocks`` is a callable giving a fresh iterator of source blocks (arrays of rows, in order); it is
    read once per draw. Each draw's random stream is consumed block by block in order, so the result
    depends on neither the block size nor whether it is streamed or collected. After iterating,
    ``residual_scale`` is the counterfactual's scale as used (what "auto" resolved to).
    """

    def __init__(self, model, blocks: Callable[[], Iterable[np.ndarray]], source_code: int, target_code: int,
                 decoding: Decoding, *, delta: np.ndarray | None = None,
                 value_range: tuple[float, float] | None = None, auto_residual: str | None = None):
        self.model, self.blocks, self.decoding = model, blocks, decoding
        self.source_code, self.target_code = source_code, target_code
        self.delta, self.value_range = delta, value_range
        self.draws = int(decoding.draws)
        scale = auto_residual if auto_residual and decoding.residual_scale == "auto" else decoding.residual_scale
        self._scale = scale

    @property
    def residual_scale(self) -> str | None:
        return self._scale if self.decoding.mode == "counterfactual" else None

    def __iter__(self) -> Iterator[Block]:
        model, decoding = self.model, self.decoding
        for d, rng in enumerate(self.decoding.generators()):
            start = 0
            for x in self.blocks():
                n = len(x)
                z_mean, z_log_var = model.encode(x, self.source_code)
                if decoding.mode == "counterfactual":
                    z = _shifted(z_mean, self.delta)
                    f_target = model.decode(z, self.target_code)[0]
                    f_source = model.decode(z_mean, self.source_code)[0]
                    flat = x.reshape(n, -1)
                    counts, self._scale = _resolve_scale(self._scale, flat, d == 0 and start == 0, self.draws,
                                                         f"{start}-{start + n - 1}")
                    y = counterfactual(flat, f_target.reshape(n, -1), f_source.reshape(n, -1), self._scale,
                                       rng=rng, counts=counts).reshape(f_target.shape)
                else:
                    z = model.sample_latent(z_mean, z_log_var, rng) if decoding.mode == "sample" else z_mean
                    z = _shifted(z, self.delta)
                    y = model.decode(z, self.target_code)[0]
                if self.value_range is not None:
                    y = np.clip(y, *self.value_range)
                yield Block(d, start, np.asarray(y, np.float32), z)
                start += n
            if start == 0:
                raise TrvaeError("nothing to transform: the selection is empty")


def collect(stream: "PredictionStream", sparse: bool | None = False) -> Predicted:
    """Every block of ``stream`` in memory. ``sparse``: X as CSR, built block by block (the dense
    N x G array is never held); None: CSR when the first block's density is at most
    :data:`~trvae_cli.data.h5ad_writer.SPARSE_MAX_DENSITY`, as the streamed writer decides."""
    from .data.h5ad_writer import as_csr, stays_sparse

    xs, zs = [], []
    for block in stream:
        if sparse is None:
            sparse = stays_sparse(block.x)
        xs.append(as_csr(block.x) if sparse else block.x)
        zs.append(block.z)
    if sparse:
        import scipy.sparse as sp

        x = sp.vstack(xs, format="csr", dtype=np.float32)
    else:
        x = np.concatenate(xs)
    return Predicted(x=x, z=np.concatenate(zs), draws=stream.draws, residual_scale=stream.residual_scale)


def encode_items(model, blocks: Iterable[np.ndarray], codes: np.ndarray, *, with_mmd_layer: bool = False):
    """z_mean of every item (each with its own condition code), and with ``with_mmd_layer`` the MMD
    layer's activations of z decoded under the same condition."""
    codes = np.asarray(codes)
    means, hs, start = [], [], 0
    for x in blocks:
        c = codes[start:start + len(x)]
        z_mean, _ = model.encode(x, c)
        means.append(z_mean)
        if with_mmd_layer:
            hs.append(model.decode(z_mean, c)[1])
        start += len(x)
    z = np.concatenate(means) if means else np.zeros((0, model.latent_dim), np.float32)
    if not with_mmd_layer:
        return z
    return z, (np.concatenate(hs) if hs else np.zeros((0, model.mmd_dim), np.float32))


def latent_means(model, source, rows: np.ndarray, labels: np.ndarray, setup) -> dict:
    """scGen's latent means of the training items, every group (cell type, domain) weighted equally."""
    from .arithmetic import balanced_condition_means

    z = encode_items(model, source.blocks(rows), labels)
    groups = source.groups_of(rows, setup)
    means = balanced_condition_means(z, [setup.conditions[k] for k in labels], groups)
    return {
        "method": "scGen latent arithmetic: z + mean z(target) - mean z(source), groups weighted equally",
        "group_key": setup.cell_type_key if setup.kind == "cells" else ("domain" if groups is not None else None),
        "cell_type_key": setup.cell_type_key,
        "means": {c: [float(v) for v in means[c]] for c in setup.conditions if c in means},
    }
