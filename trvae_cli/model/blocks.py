"""The building blocks shared by the dense and the convolutional networks."""

from __future__ import annotations

from keras import layers

from .layers import Dropout

#: BatchNorm's moving-statistics momentum. Keras' 0.99 needs a few hundred steps to forget its
#: initial values; small data sets at batch 512 take 3-4 steps an epoch, so validation (which uses
#: the moving statistics) lagged far behind training and early stopping fired on that lag.
BN_MOMENTUM = 0.9


def batch_norm(h, name, sync_bn=False):
    """BatchNorm with the model's momentum; ``sync_bn``: statistics over all replicas (tf.distribute)."""
    options = {"synchronized": True} if sync_bn else {}
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=name, **options)(h)


def dense_block(h, units, dropout, name, seed, sync_bn=False, norm="batch"):
    """Dense -> norm -> LeakyReLU(0.2) -> Dropout; returns (pre-dropout, post-dropout).

    ``norm="batch"``: Dense without bias (BatchNorm's offset takes its place) -> BatchNorm, whose
    statistics are the batch's in training and the moving ones at inference. ``norm="layer"``:
    Dense with bias -> LayerNorm over this cell's units, the same in training and at inference and
    independent of which other cells share the batch (scArches' TRVAE normalises this way)."""
    if norm == "layer":
        h = layers.Dense(units, use_bias=True, name=f"{name}_dense")(h)
        h = layers.LayerNormalization(name=f"{name}_ln")(h)
    else:
        h = layers.Dense(units, use_bias=False, name=f"{name}_dense")(h)
        h = batch_norm(h, f"{name}_bn", sync_bn)
    act = layers.LeakyReLU(negative_slope=0.2, name=f"{name}_act")(h)
    out = Dropout(dropout, seed=seed, name=f"{name}_dropout")(act) if dropout > 0 else act
    return act, out
