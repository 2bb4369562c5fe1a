"""The MMD kernel's scales, shared by training (``model/mmd.py``) and evaluation.

Kept free of Keras so that ``trvae evaluate`` never imports TensorFlow.
"""

from __future__ import annotations

#: The 19 kernel scales of the original trVAE, scArches and trvaep (used as variances).
KERNEL_SCALES: tuple[float, ...] = (
    1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0,
    30.0, 35.0, 100.0, 1e3, 1e4, 1e5, 1e6,
)
