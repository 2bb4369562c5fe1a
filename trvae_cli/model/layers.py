"""The custom layers of trVAE: reparameterised sampling, dropout and the MMD loss layer.

All are registered Keras classes (no lambdas), so a saved model loads with
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

    return tf.random.stateless_normal(shape, dtype=dtype, seed=_tf_seed(seed_generator), alg="philox")


def _tf_seed(seed_generator):
    """The generator's next (2,) int32 seed, as Keras' TensorFlow backend derives it from its int64 state."""
    import tensorflow as tf

    seed = seed_generator.next()
    if seed.dtype != tf.int32:
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    return seed


#: Multipliers of the counter hash: the golden-ratio increment of SplitMix and the two of
#: MurmurHash3's 32-bit finaliser (fmix32).
GOLDEN, FMIX_1, FMIX_2 = 0x9E3779B9, 0x85EBCA6B, 0xC2B2AE35


def _fmix32(h):
    """MurmurHash3's finaliser: a bijection of uint32 that mixes every input bit into every output bit."""
    import tensorflow as tf

    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16)) * tf.constant(FMIX_1, tf.uint32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 13)) * tf.constant(FMIX_2, tf.uint32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))


def counter_hash(n, seed):
    """n uint32 words from a (2,) int32 seed: ``fmix32(fmix32(i * GOLDEN + k) ^ k)`` for i = 0 .. n-1,
    with the key ``k = fmix32(s0 ^ fmix32(s1 + GOLDEN))`` (TensorFlow; the NumPy reference is in
    ``tests/test_model.py``)."""
    import tensorflow as tf

    s = tf.bitcast(tf.cast(seed, tf.int32), tf.uint32)
    golden = tf.constant(GOLDEN, tf.uint32)
    key = _fmix32(tf.bitwise.bitwise_xor(s[0], _fmix32(s[1] + golden)))
    i = tf.bitcast(tf.range(n, dtype=tf.int32), tf.uint32)
    return _fmix32(tf.bitwise.bitwise_xor(_fmix32(i * golden + key), key))


def dropout(x, rate, seed_generator):
    """Inverted dropout: each entry kept with probability ``1 - rate`` and scaled by ``1 / (1 - rate)``.

    Under TensorFlow the keep mask is a counter hash of the generator's seed (:func:`counter_hash`,
    kept where the word is >= ``rate * 2**32``) instead of Keras' ``stateless_dropout``: XLA on the
    CPU draws Philox numbers at about 15 ns each, so four 512 x 128 masks cost ~4 ms a step, and
    training at 2,000 genes ran 14-18 % slower with dropout 0.1 than without; with the hash the four
    masks add no measurable time (``benchmarks/README.md``, 2026-12-03). Other backends use
    ``keras.random.dropout``.
    """
    if keras.backend.backend() != "tensorflow":
        return keras.random.dropout(x, rate, seed=seed_generator)
    import tensorflow as tf

    threshold = tf.constant(min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1), tf.uint32)
    keep = tf.reshape(counter_hash(tf.size(x), _tf_seed(seed_generator)) >= threshold, tf.shape(x))
    return tf.where(keep, x / tf.cast(1.0 - rate, x.dtype), tf.zeros_like(x))


@keras.saving.register_keras_serializable(package="trvae")
class Dropout(keras.layers.Layer):
    """Keras' ``Dropout`` (rate, seed; identity outside training) drawing its mask with :func:`dropout`.

    It holds its generator as ``seed_generator``, as Keras' layer does, so the saved variables are
    laid out the same."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        return dropout(inputs, self.rate, self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


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
