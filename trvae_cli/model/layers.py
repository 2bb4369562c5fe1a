"""The two custom layers of trVAE: reparameterised sampling and the MMD loss layer.

Both are registered Keras classes (no lambdas), so a saved model loads with
``safe_mode=True`` and loading never executes code from the model file.
"""

from __future__ import annotations

import keras
from keras import ops

from .mmd import KERNEL_SCALES, pairwise_condition_mmd


def reparameterise(z_mean, z_log_var, eps, xp=ops):
    """z = mu + exp(log_var / 2) * eps, in the array namespace ``xp`` (``keras.ops`` in the
    model, ``numpy`` when inference draws eps from a NumPy generator)."""
    return z_mean + xp.exp(0.5 * z_log_var) * eps


def standard_normal(shape, dtype, seed_generator):
    """``keras.random.normal(shape, dtype=dtype, seed=seed_generator)``, the same numbers.

    Under TensorFlow, Keras leaves ``tf.random.stateless_normal``'s algorithm at "auto_select",
    which resolves to Philox on the CPU and the GPU, and XLA compiles that choice as a runtime
    value: drawing a 512 x 10 eps took 2.7 ms a step against 0.4 ms with ``alg="philox"`` named
    (2 CPU threads; ``benchmarks/README.md``, 2026-12-02, sixth session), a tenth of a training
    step at 2,000 genes. Naming it draws the identical numbers (``tests/test_model.py``).
    """
    if keras.backend.backend() != "tensorflow":
        return keras.random.normal(shape, dtype=dtype, seed=seed_generator)
    import tensorflow as tf

    seed = seed_generator.next()
    if seed.dtype != tf.int32:   # what Keras' TensorFlow backend does with its int64 generator state
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    return tf.random.stateless_normal(shape, dtype=dtype, seed=seed, alg="philox")


@keras.saving.register_keras_serializable(package="trvae")
class Sampling(keras.layers.Layer):
    """Draws z = mu + exp(log_var / 2) * eps with its own seeded generator."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        eps = standard_normal(ops.shape(z_mean), z_mean.dtype, self.seed_generator)
        return reparameterise(z_mean, z_log_var, eps)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="trvae")
class MMDLoss(keras.layers.Layer):
    """Identity on its activations; adds ``beta * MMD`` across conditions to the model loss.

    Called as ``layer([activations, onehot_conditions])``. The MMD is the sum over
    every pair of conditions present in the batch (see :mod:`trvae_cli.model.mmd`
    for the kernel and the estimator). With ``beta = 0`` it still runs, adding 0.
    """

    def __init__(self, beta=1.0, scales=KERNEL_SCALES, **kwargs):
        super().__init__(**kwargs)
        self.beta = float(beta)
        self.scales = tuple(float(s) for s in scales)

    def call(self, inputs):
        h, onehot = inputs
        # the kernel's exp(-d²/2s) with scales down to 1e-6 needs float32 under mixed precision
        mmd = pairwise_condition_mmd(ops.cast(h, "float32"), ops.cast(onehot, "float32"), self.scales)
        self.add_loss(self.beta * mmd)
        return h

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "scales": list(self.scales)}
