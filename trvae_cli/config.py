"""Training settings and their defaults, in one place (the CLI reads them from here).

The defaults were chosen by measurement on the Kang NK out-of-sample task; the
README's "Why these defaults" section gives the figure behind each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MMD_PLACEMENTS = ("decoder", "latent", "none")
#: Where the decoder sees the condition: only at its first (MMD) layer, as in the paper, or at
#: every layer after it too (scvi-tools' ``inject_covariates``).
CONDITION_INJECTIONS = ("first", "all")
OUTPUT_ACTIVATIONS = ("relu", "linear")
RECONSTRUCTION_LOSSES = ("mse", "sse")
#: Settings that are constructor arguments of the model (and so part of its saved config).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

MODEL_FIELDS = ("hidden", "mmd_dim", "latent_dim", "dropout", "output_activation", "mmd_on",
                "conditional", "alpha", "beta", "eta", "reconstruction", "seed", "arch", "filters",
                "condition_injection")
ARCHS = ("mlp", "conv", "unet")


@dataclass
class TrainSettings:
    # network
    hidden: tuple[int, ...] = (128,)
    mmd_dim: int = 32
    latent_dim: int = 10
    dropout: float = 0.0
    output_activation: str = "relu"
    mmd_on: str = "decoder"
    condition_injection: str = "first"   # "all": the decoder gets the condition after g1 too
    conditional: bool = True   # False: an unconditional VAE (scGen); transform uses latent arithmetic
    arch: str = "mlp"          # images: "conv" (seed Table 1) or "unet" (the deeper one, Table 2)
    filters: tuple[int, ...] = (32, 64)   # conv blocks of the image networks (each halves H and W)
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
    precision: str = "float32"   # or mixed_bfloat16 / mixed_float16 (Keras dtype policies)

    def model_kwargs(self) -> dict:
        """The arguments of :class:`~trvae_cli.model.TRVAE` that these settings fix."""
        return {name: getattr(self, name) for name in MODEL_FIELDS}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["filters"] = list(self.filters)
        return d


#: Named starting points for ``trvae train --preset``; options given on the command line win.
#: ``cvae`` and ``mmd-cvae`` are the trvae preset with the MMD moved or removed (a controlled
#: ablation: same network, same weights, same training), ``scgen`` is scGen's VAE (Lotfollahi
#: et al. 2019, its package defaults): 800-800 layers, latent 100, dropout 0.2, 0.5 * summed
#: squared error, KL weight 5e-5 on the *summed* KL (= 5e-3 on our KL averaged over 100
#: dimensions), no condition input and no balanced batches, trained as scGen's tutorial does
#: (batch 32, at most 100 epochs, early stopping patience 25); ``trvae transform`` then predicts
#: by scGen's latent arithmetic.
PRESETS: dict[str, dict] = {
    "trvae": {},
    "mmd-cvae": {"mmd_on": "latent"},
    "cvae": {"mmd_on": "none"},
    "scgen": {"conditional": False, "mmd_on": "none", "hidden": (800,), "mmd_dim": 800, "latent_dim": 100,
              "dropout": 0.2, "alpha": 5e-3, "eta": 1.0, "reconstruction": "sse", "batch_size": 32,
              "epochs": 100, "early_stopping_patience": 25, "balanced_batches": False},
}


def preset_settings(name: str, **overrides) -> TrainSettings:
    """The settings of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise KeyError(name)
    return TrainSettings(**{**PRESETS[name], **overrides})
