"""Convolutional encoder and decoder for images (``--arch conv`` and ``--arch unet``).

They have the interface of the dense networks of :mod:`trvae_cli.model.trvae`, so the one
:class:`~trvae_cli.model.TRVAE` class, its MMD layer, losses and ``mmd_on`` options serve
both inputs::

    encoder([x (H, W, C), onehot(s)]) -> (z_mean, z_log_var)
    decoder([z, onehot(s)])           -> (x_hat (H, W, C), g1)

Encoder (seed Table 1): the condition is embedded by Dense(128) -> Dense(H * W), reshaped
to one H x W plane and concatenated to the image as an extra channel; then one block per
entry of ``filters`` (Conv 3x3 stride 2 -> BatchNorm -> LeakyReLU(0.2)), flatten, a dense
block of ``mmd_dim`` and the two latent heads.

Decoder: the condition is embedded by Dense(128); the first layer is the MMD layer,
a dense block of ``mmd_dim`` on ``[z, embedding]`` (its activations are ``g1``); then a
dense projection to the smallest feature map and one transposed-convolution block per
filter, in reverse, back to H x W; a 3x3 convolution with a sigmoid gives pixels in [0, 1].
With ``condition_injection="all"`` (or ``"hidden"``, the same here: the projection is the only
layer past g1 before the convolutions) the embedding is concatenated again to g1's output before
the projection, so the condition reaches the pixels past the MMD layer.

``unet`` (for 64 x 64 RGB, seed Table 2) is the deeper variant: two convolutions per
resolution level, the second one added back to the first (a within-level skip, as in a
U-Net's levels). There are deliberately no skips *across* the bottleneck: they would let
the decoder copy the source image past z and the MMD layer, and nothing would be
transformed. Every spatial size must divide by ``2 ** len(filters)``.
"""

from __future__ import annotations

import math

import keras
from keras import layers

from .blocks import batch_norm, dense_block

CONDITION_EMBEDDING = 128


def _conv_block(h, filters, name, transpose, deep, sync_bn):
    """Conv (or transposed conv) 3x3 stride 2 -> BN -> LeakyReLU; ``deep`` adds a residual
    3x3 convolution at the new resolution."""
    Conv = layers.Conv2DTranspose if transpose else layers.Conv2D
    h = Conv(filters, 3, strides=2, padding="same", use_bias=False, name=f"{name}_conv")(h)
    h = layers.LeakyReLU(negative_slope=0.2, name=f"{name}_act")(batch_norm(h, f"{name}_bn", sync_bn))
    if deep:
        r = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(h)
        r = layers.LeakyReLU(negative_slope=0.2, name=f"{name}_act2")(batch_norm(r, f"{name}_bn2", sync_bn))
        h = layers.Add(name=f"{name}_skip")([h, r])
    return h


def check_image_shape(image_shape, filters) -> None:
    factor = 2 ** len(filters)
    h, w, _ = image_shape
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} must be divisible by {factor} (2 ** the number of conv blocks); "
                         f"use --image-size or fewer --filters")


def build_conv_encoder(image_shape, n_conditions, filters, mmd_dim, latent_dim, dropout, seed, conditional,
                       sync_bn, deep):
    check_image_shape(image_shape, filters)
    height, width, channels = image_shape
    x = keras.Input(tuple(image_shape), name="x")
    c = keras.Input((n_conditions,), name="condition")
    h = x
    if conditional:
        e = layers.Dense(CONDITION_EMBEDDING, activation="relu", name="encoder_condition_embedding")(c)
        e = layers.Dense(height * width, name="encoder_condition_plane")(e)
        e = layers.Reshape((height, width, 1), name="encoder_condition_channel")(e)
        h = layers.Concatenate(axis=-1, name="encoder_input")([x, e])
    for i, f in enumerate(filters):
        h = _conv_block(h, f, f"encoder_conv{i}", False, deep, sync_bn)
    h = layers.Flatten(name="encoder_flatten")(h)
    _, h = dense_block(h, mmd_dim, dropout, "encoder_dense", None if seed is None else seed, sync_bn)
    z_mean = layers.Dense(latent_dim, name="z_mean")(h)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(h)
    return keras.Model([x, c], [z_mean, z_log_var], name="encoder")


def build_conv_decoder(image_shape, n_conditions, filters, mmd_dim, latent_dim, dropout, seed, conditional,
                       sync_bn, deep, condition_injection="first"):
    height, width, channels = image_shape
    factor = 2 ** len(filters)
    z = keras.Input((latent_dim,), name="z")
    c = keras.Input((n_conditions,), name="condition")
    h = z
    if conditional:
        e = layers.Dense(CONDITION_EMBEDDING, activation="relu", name="decoder_condition_embedding")(c)
        h = layers.Concatenate(name="decoder_input")([z, e])
    mmd_act, h = dense_block(h, mmd_dim, dropout, "decoder_mmd", None if seed is None else seed + 100, sync_bn)
    if conditional and condition_injection in ("hidden", "all"):   # the condition again, past the MMD layer
        h = layers.Concatenate(name="decoder_project_input")([h, e])
    small = (height // factor, width // factor, filters[-1])
    h = layers.Dense(math.prod(small), use_bias=False, name="decoder_project")(h)
    h = layers.LeakyReLU(negative_slope=0.2, name="decoder_project_act")(batch_norm(h, "decoder_project_bn", sync_bn))
    h = layers.Reshape(small, name="decoder_reshape")(h)
    for i, f in enumerate(reversed(filters)):
        h = _conv_block(h, f, f"decoder_deconv{i}", True, deep, sync_bn)
    x_hat = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="reconstruction")(h)
    return keras.Model([z, c], [x_hat, mmd_act], name="decoder")
