"""scGen's latent vector arithmetic, for the unconditional model (``--preset scgen``).

scGen (Lotfollahi et al. 2019) predicts a perturbation as ``decode(z + delta)`` with
``delta = mean z(target) - mean z(source)``, the means taken over training cells after
balancing cell types: each cell type is resampled to the size of the largest one, so that
every cell type weighs the same. Here the balanced mean is computed exactly instead of by
resampling -- the mean over cell types of each cell type's mean z, which is what scGen's
resampling estimates -- so the prediction is deterministic.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def balanced_condition_means(z: np.ndarray, conditions: Sequence[str],
                             cell_types: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per condition, the mean of ``z`` with every cell type weighted equally."""
    z = np.asarray(z, np.float64)
    conditions = np.asarray(conditions, dtype=str)
    cell_types = np.full(len(z), "", dtype=object) if cell_types is None else np.asarray(cell_types, dtype=str)
    means = {}
    for cond in dict.fromkeys(conditions):
        in_cond = conditions == cond
        per_type = [z[in_cond & (cell_types == ct)].mean(axis=0) for ct in dict.fromkeys(cell_types[in_cond])]
        means[str(cond)] = np.mean(per_type, axis=0)
    return means


def latent_delta(means: dict, source: str, target: str) -> np.ndarray:
    """``delta = mean z(target) - mean z(source)``."""
    return np.asarray(means[target], np.float64) - np.asarray(means[source], np.float64)
