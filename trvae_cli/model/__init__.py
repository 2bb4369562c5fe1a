"""The network and its losses; knows nothing about AnnData or files."""

from ..backend import keras_module

keras_module()   # Keras through the one quiet import (TensorFlow logs nothing before it is configured)

from ..config import MMD_PLACEMENTS, OUTPUT_ACTIVATIONS
from .layers import MMDLoss, Sampling, reparameterise
from .mmd import KERNEL_SCALES, multiscale_rbf_kernel, pairwise_condition_mmd
from .trvae import TRVAE

__all__ = [
    "KERNEL_SCALES", "MMDLoss", "MMD_PLACEMENTS", "OUTPUT_ACTIVATIONS", "Sampling", "TRVAE",
    "multiscale_rbf_kernel", "pairwise_condition_mmd", "reparameterise",
]
