"""Training settings and their defaults, in one place (the CLI reads them from here).

The defaults were chosen by measurement on the Kang NK out-of-sample task; the
README's "Why these defaults" section gives the figure behind each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MMD_PLACEMENTS = ("decoder", "latent", "none")
OUTPUT_ACTIVATIONS = ("relu", "linear")
RECONSTRUCTION_LOSSES = ("mse", "sse")
#: Settings that are constructor arguments of the model (and so part of its saved config).
MODEL_FIELDS = ("hidden", "mmd_dim", "latent_dim", "dropout", "output_activation", "mmd_on",
                "alpha", "beta", "eta", "reconstruction", "seed")


@dataclass
class TrainSettings:
    # network
    hidden: tuple[int, ...] = (128,)
    mmd_dim: int = 32
    latent_dim: int = 10
    dropout: float = 0.0
    output_activation: str = "relu"
    mmd_on: str = "decoder"
    # loss
    alpha: float = 1e-4
    beta: float = 1.0
    eta: float = 100.0
    reconstruction: str = "mse"
    kl_warmup: int = 0
    # optimisation
    learning_rate: float = 1e-3
    batch_size: int = 512
    epochs: int = 300
    early_stopping_patience: int = 20
    lr_patience: int = 10
    lr_factor: float = 0.5
    validation_fraction: float = 0.1
    balanced_batches: bool = True
    seed: int = 0
    jit: bool = True

    def model_kwargs(self) -> dict:
        """The arguments of :class:`~trvae_cli.model.TRVAE` that these settings fix."""
        return {name: getattr(self, name) for name in MODEL_FIELDS}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d
