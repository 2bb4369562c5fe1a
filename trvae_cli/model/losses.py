"""Reconstruction and KL terms, scaled as in the original trVAE.

The weights eta (reconstruction), alpha (KL) and beta (MMD) only mean what the
paper's values mean with this scaling:

* reconstruction ``mse``: 0.5 * squared error averaged over genes (or pixels), then over cells;
  ``sse``: 0.5 * squared error summed over genes, averaged over cells;
* KL: KL(q(z|x) || N(0, I)) averaged over latent dimensions, then over cells.
"""

from __future__ import annotations

from keras import ops



def reconstruction_loss(x, x_hat, kind: str = "mse"):
    err = 0.5 * ops.square(ops.cast(x, "float32") - ops.cast(x_hat, "float32"))
    if len(err.shape) > 2:          # images: every pixel and channel of a sample is one "gene"
        err = ops.reshape(err, (ops.shape(err)[0], -1))
    if kind == "mse":
        per_cell = ops.mean(err, axis=-1)
    elif kind == "sse":
        per_cell = ops.sum(err, axis=-1)
    else:  # pragma: no cover - validated by ModelConfig
        raise ValueError(f"unknown reconstruction loss {kind!r}")
    return ops.mean(per_cell)


def kl_divergence(z_mean, z_log_var):
    z_mean = ops.cast(z_mean, "float32")
    z_log_var = ops.cast(z_log_var, "float32")
    per_dim = 0.5 * (ops.exp(z_log_var) + ops.square(z_mean) - 1.0 - z_log_var)
    return ops.mean(ops.mean(per_dim, axis=-1))
