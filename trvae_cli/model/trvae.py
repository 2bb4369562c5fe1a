"""The trVAE model: one class, three regularisation variants.

``mmd_on="decoder"`` is trVAE (MMD on the first decoder layer g1),
``mmd_on="latent"`` is the MMD-CVAE (MMD on z), ``mmd_on="none"`` the plain CVAE.
``conditional=False`` drops the condition from both networks: scGen's plain VAE, which
transforms by latent arithmetic instead (see :mod:`trvae_cli.arithmetic` and :mod:`trvae_cli.predict`).

Network (seed section 3, Table 3; every size an option, defaults in
:class:`~trvae_cli.config.ModelConfig`)::

    encoder f([x, onehot(s)]): encoder_hidden... -> mmd_dim -> (z_mean, z_log_var)   (latent_dim)
    decoder g1([z, onehot(s)]): mmd_dim                  <- the MMD layer
            g2: reversed(hidden)... -> n_genes (ReLU or linear)

``encoder_hidden`` defaults to ``hidden`` (a mirrored network, as in the paper); a narrower encoder
halves the cost of its gene-wide layer without narrowing the decoder that makes the predictions.

With ``condition_injection="all"`` every layer of g2 (and the output layer) takes
``[h, onehot(s)]`` instead of ``h``: the condition reaches the output past the MMD layer,
whose distribution the penalty makes condition-free. ``"hidden"``: the layers of g2 but not the
output layer, so there is no per-condition output bias (a shift shared by every cell type).

Each hidden block is Dense(no bias) -> BatchNorm -> LeakyReLU(0.2) -> Dropout (``norm="layer"``:
Dense -> LayerNorm -> LeakyReLU(0.2) -> Dropout; see :func:`~trvae_cli.model.blocks.dense_block`).
The MMD layer's activation is taken after the LeakyReLU, before its dropout,
as in the original implementation.

Loss = eta * reconstruction + alpha * kl_factor * KL + beta * MMD, with the scaling
of :mod:`trvae_cli.model.losses`; ``kl_factor`` is a non-trainable weight that
a warm-up callback ramps from 0 to 1. Only ``keras`` and ``keras.ops`` are
used, so the model runs under the TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import layers, ops

from ..config import ConfigError, ModelConfig
from .blocks import dense_block
from .conv import build_conv_decoder, build_conv_encoder
from .layers import MMDLoss, Sampling, reparameterise
from .losses import kl_divergence, reconstruction_loss

_D = ModelConfig()  # the tool's measured defaults (see the README), one source of truth
MODEL_FIELDS = tuple(ModelConfig.__dataclass_fields__)


def build_encoder(n_genes, n_conditions, hidden, mmd_dim, latent_dim, dropout, seed, conditional=True,
                  sync_bn=False, norm="batch"):
    x = keras.Input((n_genes,), name="x")
    c = keras.Input((n_conditions,), name="condition")   # unused when not conditional (same interface)
    h = layers.Concatenate(name="encoder_input")([x, c]) if conditional else x
    for i, units in enumerate((*hidden, mmd_dim)):
        _, h = dense_block(h, units, dropout, f"encoder_{i}", None if seed is None else seed + i, sync_bn, norm)
    z_mean = layers.Dense(latent_dim, name="z_mean")(h)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(h)
    return keras.Model([x, c], [z_mean, z_log_var], name="encoder")


def build_decoder(n_genes, n_conditions, hidden, mmd_dim, latent_dim, dropout, output_activation, seed,
                  conditional=True, sync_bn=False, condition_injection="first", norm="batch"):
    z = keras.Input((latent_dim,), name="z")
    c = keras.Input((n_conditions,), name="condition")
    h = layers.Concatenate(name="decoder_input")([z, c]) if conditional else z
    s = None if seed is None else seed + 100
    mmd_act, h = dense_block(h, mmd_dim, dropout, "decoder_mmd", s, sync_bn, norm)
    reinject = conditional and condition_injection in ("hidden", "all")
    for i, units in enumerate(reversed(hidden)):
        if reinject:
            h = layers.Concatenate(name=f"decoder_{i}_input")([h, c])
        _, h = dense_block(h, units, dropout, f"decoder_{i}", None if s is None else s + 1 + i, sync_bn, norm)
    if conditional and condition_injection == "all":
        h = layers.Concatenate(name="reconstruction_input")([h, c])
    x_hat = layers.Dense(n_genes, activation=output_activation, name="reconstruction")(h)
    return keras.Model([z, c], [x_hat, mmd_act], name="decoder")


@keras.saving.register_keras_serializable(package="trvae")
class TRVAE(keras.Model):
    """Conditional VAE with an MMD penalty across conditions.

    Called on ``(x, condition_index)``; returns a dict with ``x_hat``, ``z_mean``,
    ``z_log_var``, ``z`` and ``mmd_layer`` (the g1 activations).

    Examples
    --------
    >>> model = TRVAE(n_genes=100, n_conditions=2, hidden=(64,), mmd_dim=32, latent_dim=8)  # doctest: +SKIP
    >>> model.compile(optimizer="adam")                                                     # doctest: +SKIP
    >>> model.fit(batches, epochs=10)                                                       # doctest: +SKIP
    """

    def __init__(
        self,
        n_genes: int,
        n_conditions: int,
        hidden=_D.hidden,
        mmd_dim: int = _D.mmd_dim,
        latent_dim: int = _D.latent_dim,
        dropout: float = _D.dropout,
        output_activation: str = _D.output_activation,
        mmd_on: str = _D.mmd_on,
        conditional: bool = _D.conditional,
        alpha: float = _D.alpha,
        beta: float = _D.beta,
        eta: float = _D.eta,
        reconstruction: str = _D.reconstruction,
        seed: int | None = None,
        arch: str = _D.arch,
        filters=_D.filters,
        image_shape=None,
        condition_injection: str = _D.condition_injection,
        norm: str = _D.norm,
        sync_batchnorm: bool = False,
        encoder_hidden=None,   # None: ``hidden`` (and so for model files written before the option)
        **kwargs,
    ):
        super().__init__(**kwargs)
        shape = ModelConfig(hidden=tuple(hidden),
                            encoder_hidden=None if encoder_hidden is None else tuple(encoder_hidden),
                            mmd_dim=mmd_dim, latent_dim=latent_dim, dropout=dropout,
                            output_activation=output_activation, mmd_on=mmd_on, conditional=conditional,
                            alpha=alpha, beta=beta, eta=eta, reconstruction=reconstruction,
                            seed=0 if seed is None else seed, arch=arch, filters=tuple(filters),
                            condition_injection=condition_injection, norm=norm)
        shape.validate()
        if (arch == "mlp") != (image_shape is None):
            raise ConfigError("image_shape (H, W, C) is required by the image architectures and only by them")
        self.arch = arch
        self.filters = tuple(int(f) for f in filters)
        self.image_shape = None if image_shape is None else tuple(int(d) for d in image_shape)
        self.n_genes = int(n_genes) if image_shape is None else math.prod(self.image_shape)
        self.n_conditions = int(n_conditions)
        self.hidden = tuple(int(h) for h in hidden)
        self.encoder_hidden = None if encoder_hidden is None else tuple(int(h) for h in encoder_hidden)
        self.mmd_dim = int(mmd_dim)
        self.latent_dim = int(latent_dim)
        self.dropout = float(dropout)
        self.output_activation = output_activation
        self.mmd_on = mmd_on
        self.conditional = bool(conditional)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.eta = float(eta)
        self.reconstruction = reconstruction
        self.seed = seed
        self.condition_injection = condition_injection
        self.norm = norm

        if arch == "mlp":
            self.encoder = build_encoder(
                self.n_genes, self.n_conditions, tuple(int(h) for h in shape.encoder_sizes), self.mmd_dim,
                self.latent_dim, self.dropout, seed, self.conditional, sync_batchnorm, norm,
            )
            self.decoder = build_decoder(
                self.n_genes, self.n_conditions, self.hidden, self.mmd_dim,
                self.latent_dim, self.dropout, output_activation, seed, self.conditional, sync_batchnorm,
                condition_injection, norm,
            )
        else:
            args = (self.image_shape, self.n_conditions, self.filters, self.mmd_dim, self.latent_dim, self.dropout,
                    seed, self.conditional, sync_batchnorm, arch == "unet")
            self.encoder = build_conv_encoder(*args)
            self.decoder = build_conv_decoder(*args, condition_injection=condition_injection)
        self.sampling = Sampling(seed=None if seed is None else seed + 1000, name="sampling")
        self.mmd_loss = None if mmd_on == "none" else MMDLoss(beta=self.beta, name="mmd_loss")
        self.kl_factor = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="kl_factor"
        )
        #: replicas a step's gradients are summed over; set by the distribution module (1 otherwise)
        self.replicas = 1
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.mmd_tracker = keras.metrics.Mean(name="mmd")

    # -- forward -----------------------------------------------------------------
    def onehot(self, condition):
        condition = ops.reshape(ops.cast(condition, "int32"), (-1,))
        return ops.one_hot(condition, self.n_conditions)

    def call(self, inputs, training=False):
        x, condition = inputs
        x = ops.convert_to_tensor(x)   # un-jitted JAX steps get NumPy batches; Keras will not mix them with arrays
        c = self.onehot(condition)
        z_mean, z_log_var = self.encoder([x, c], training=training)
        z = self.sampling([z_mean, z_log_var])
        x_hat, g1 = self.decoder([z, c], training=training)
        if self.mmd_on == "decoder":
            g1 = self.mmd_loss([g1, c])
        elif self.mmd_on == "latent":
            z = self.mmd_loss([z, c])
        return {"x_hat": x_hat, "z_mean": z_mean, "z_log_var": z_log_var, "z": z, "mmd_layer": g1}

    # -- inference (NumPy in, NumPy out; one batch per call) -----------------------
    def _onehot_rows(self, condition, n: int) -> np.ndarray:
        codes = np.broadcast_to(np.asarray(condition, dtype=np.int32), (n,))
        return np.asarray(ops.convert_to_numpy(self.onehot(codes)), np.float32)

    def encode(self, x, condition):
        """(z_mean, z_log_var) of the rows of ``x``, each with its condition code (an int or one per row)."""
        x = np.asarray(x, np.float32)
        z_mean, z_log_var = self.encoder.predict_on_batch([x, self._onehot_rows(condition, len(x))])
        return np.asarray(z_mean, np.float32), np.asarray(z_log_var, np.float32)

    def decode(self, z, condition):
        """(x_hat, g1): the decoded rows of ``z`` and the MMD layer's activations, under ``condition``."""
        z = np.asarray(z, np.float32)
        x_hat, g1 = self.decoder.predict_on_batch([z, self._onehot_rows(condition, len(z))])
        return np.asarray(x_hat, np.float32), np.asarray(g1, np.float32)

    @staticmethod
    def sample_latent(z_mean, z_log_var, rng: np.random.Generator) -> np.ndarray:
        """One draw of q(z|x) per row, eps from the NumPy generator ``rng`` (what :class:`Sampling` does
        in training, reproducible from a seed at inference)."""
        eps = rng.standard_normal(z_mean.shape).astype(np.float32)
        return reparameterise(z_mean, z_log_var, eps, np)

    def build(self, input_shape=None):
        # Sub-networks are functional and already built in __init__.
        self.built = True

    # -- validation --------------------------------------------------------------
    def make_test_function(self, force=False):
        """The validation step, never XLA-compiled under TensorFlow.

        It runs once an epoch on a few hundred cells (forward only), and compiling it cost more than it
        saved: on Kang (189 validation cells, 6,998 genes, 2 cores) the first validation pass took
        1.6-1.9 s with XLA's compile and 0.7 s without, and a later pass 28 ms either way
        (``benchmarks/README.md``, sixth session). Training keeps ``jit``.
        """
        if keras.backend.backend() != "tensorflow" or not self.jit_compile:
            return super().make_test_function(force)
        self._jit_compile = False
        try:
            return super().make_test_function(force)
        finally:
            self._jit_compile = True

    # -- loss --------------------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        x_true = x[0]
        recon = reconstruction_loss(x_true, y_pred["x_hat"], self.reconstruction)
        kl = kl_divergence(y_pred["z_mean"], y_pred["z_log_var"])
        extra = self.losses   # a list of tensors: summed pairwise (JAX cannot sum a list of tracers)
        weighted_mmd = functools.reduce(ops.add, extra) if extra else ops.convert_to_tensor(0.0)
        total = self.eta * recon + self.alpha * ops.cast(self.kl_factor, "float32") * kl + weighted_mmd
        self.reconstruction_tracker.update_state(recon)
        self.kl_tracker.update_state(kl)
        self.mmd_tracker.update_state(weighted_mmd / self.beta if self.beta > 0 else weighted_mmd)
        if self.replicas > 1:   # tf.distribute sums the replicas' gradients: each contributes its share
            total = total / float(self.replicas)
        return total

    # -- serialisation -------------------------------------------------------------
    def get_config(self):
        base = super().get_config()
        config = {k: v for k, v in base.items() if k in ("name", "trainable", "dtype")}
        config.update(n_genes=self.n_genes, n_conditions=self.n_conditions)
        config.update({name: getattr(self, name) for name in MODEL_FIELDS})
        config["hidden"] = list(self.hidden)
        config["encoder_hidden"] = None if self.encoder_hidden is None else list(self.encoder_hidden)
        config["filters"] = list(self.filters)
        config["image_shape"] = None if self.image_shape is None else list(self.image_shape)
        return config
