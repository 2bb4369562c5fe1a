"""Typed configuration, its choices and its one validation (no Keras here).

Three objects, each with one owner:

* :class:`ModelConfig`: what :class:`~trvae_cli.model.TRVAE` is built from and saves with itself;
* :class:`TrainConfig`: how it is optimised (batches, epochs, early stopping, precision, ...);
* :class:`RunOptions`: how a run behaves, not what it computes (progress, checkpoints, resume,
  threads, strategy, overwriting).

:class:`TrainSettings` is the flat union of the first two, the object a user writes
(``TrainSettings(epochs=50, hidden=(64,))``) and the one presets and the command line fill in
(:func:`resolve_settings`). Every choice the CLI offers is a constant of this module, so click's
``Choice`` lists and the validation cannot drift apart. The defaults were chosen by measurement on
the Kang NK out-of-sample task; the README's "Why these defaults" section gives the figure behind
each.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Mapping

from .errors import TrvaeError

MMD_PLACEMENTS = ("decoder", "latent", "none")
#: Where the decoder sees the condition: only at its first (MMD) layer, as in the paper, or at
#: every layer after it too (scvi-tools' ``inject_covariates``), or every hidden layer after it but
#: not the output layer (``hidden``: no per-condition output bias, the condition acts only through
#: the hidden units, together with the cell's state).
CONDITION_INJECTIONS = ("first", "hidden", "all")
#: The normalisation in each dense block: BatchNorm (over the batch, the original trVAE) or
#: LayerNorm (over one cell's units, as scArches' TRVAE); see :mod:`trvae_cli.model.blocks`.
NORMS = ("batch", "layer")
OUTPUT_ACTIVATIONS = ("relu", "linear")
RECONSTRUCTION_LOSSES = ("mse", "sse")
ARCHS = ("mlp", "conv", "unet")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
#: ``--log-format``: auto = a progress bar on a terminal or in a notebook, JSON lines otherwise.
LOG_FORMATS = ("auto", "rich", "text", "json", "none")
STRATEGIES = ("none", "mirrored", "multiworker")
#: ``trvae transform --decode`` (see :mod:`trvae_cli.predict`); each input kind has its own default.
#: "auto" is resolved by transform before decoding: the mode the model's validation chose
#: (:func:`trvae_cli.validate.decode_choice`), else the input kind's default.
DECODE_MODES = ("counterfactual", "mean", "sample", "auto")
#: the decodings `trvae validate` scores on its folds (``auto`` is the choice made from them)
SCORED_DECODES = tuple(m for m in DECODE_MODES if m != "auto")
#: ``--residual-scale`` of a counterfactual: "auto" is counts when the data hold them, else log1p
#: (see :mod:`trvae_cli.counterfactual`).
RESIDUAL_SCALES = ("auto", "counts", "log1p", "linear")


class ConfigError(TrvaeError, ValueError):
    """An impossible setting (a user error; also a ValueError for code that builds models directly)."""


def _check(checks) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _choice(value, choices, flag) -> tuple[bool, str]:
    return value in choices, f"{flag} must be one of {', '.join(choices)}, got {value!r}"


@dataclass(frozen=True)
class ModelConfig:
    """The network and its loss weights: the arguments :class:`~trvae_cli.model.TRVAE` saves."""

    hidden: tuple[int, ...] = (128,)
    #: the encoder's own hidden sizes (cells); None: those of ``hidden``, which the decoder mirrors
    encoder_hidden: tuple[int, ...] | None = None
    mmd_dim: int = 128         # cells; images keep 32 (their input defaults, sources/images.py)
    latent_dim: int = 10
    dropout: float = 0.1       # cells; images keep 0 (their input defaults, sources/images.py)
    output_activation: str = "relu"
    mmd_on: str = "decoder"
    condition_injection: str = "first"   # "all" / "hidden": the decoder gets the condition after g1 too
    norm: str = "batch"        # "layer": LayerNorm in the dense blocks (cells only)
    conditional: bool = True   # False: an unconditional VAE (scGen); transform uses latent arithmetic
    arch: str = "mlp"          # images: "conv" (seed Table 1) or "unet" (the deeper one, Table 2)
    filters: tuple[int, ...] = (32, 64)   # conv blocks of the image networks (each halves H and W)
    alpha: float = 0.03        # cells; images keep 1e-4 (their input defaults, sources/images.py)
    beta: float = 1.0
    eta: float = 100.0
    reconstruction: str = "mse"
    seed: int = 0

    def validate(self) -> None:
        _check([
            (self.latent_dim >= 1 and self.mmd_dim >= 1, "--latent-dim and --mmd-dim must be >= 1"),
            (len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
             f"--hidden sizes must be >= 1, got {list(self.hidden)}"),
            (self.encoder_hidden is None or (len(self.encoder_hidden) >= 1 and all(h >= 1 for h in self.encoder_hidden)),
             f"--encoder-hidden sizes must be >= 1, got {_plain(self.encoder_hidden)}"),
            (self.arch == "mlp" or self.encoder_hidden is None,
             f"--encoder-hidden is for the dense network of cells; the image networks (--arch {self.arch}) use "
             "--filters"),
            (len(self.filters) >= 1 and all(f >= 1 for f in self.filters),
             f"--filters must be >= 1, got {list(self.filters)}"),
            (_finite(self.dropout) and 0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}"),
            _choice(self.mmd_on, MMD_PLACEMENTS, "--mmd-on"),
            _choice(self.condition_injection, CONDITION_INJECTIONS, "--condition-injection"),
            _choice(self.norm, NORMS, "--norm"),
            (self.arch == "mlp" or self.norm == "batch",
             f"--norm layer is for the dense network of cells; the image networks (--arch {self.arch}) use BatchNorm"),
            _choice(self.output_activation, OUTPUT_ACTIVATIONS, "--output-activation"),
            _choice(self.arch, ARCHS, "--arch"),
            _choice(self.reconstruction, RECONSTRUCTION_LOSSES, "--reconstruction"),
            (_finite(self.alpha, self.beta, self.eta) and min(self.alpha, self.beta, self.eta) >= 0,
             f"loss weights --alpha, --beta and --eta must be finite and >= 0, got {self.alpha}, {self.beta}, "
             f"{self.eta}"),
            (int(self.seed) == self.seed and 0 <= self.seed < 2**32, f"--seed must be in [0, 2**32), got {self.seed}"),
        ])

    @property
    def encoder_sizes(self) -> tuple[int, ...]:
        """The encoder's hidden sizes: ``encoder_hidden``, else ``hidden``."""
        return self.hidden if self.encoder_hidden is None else self.encoder_hidden

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(ModelConfig)}


@dataclass(frozen=True)
class TrainConfig:
    """How the model is optimised."""

    kl_warmup: int = 0
    learning_rate: float = 3e-3   # cells; images keep 1e-3 (their input defaults)
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

    def validate(self) -> None:
        _check([
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
            (self.kl_warmup >= 0, f"--kl-warmup must be >= 0, got {self.kl_warmup}"),
            (self.early_stopping_patience >= 0, "--early-stopping-patience must be >= 0"),
            (self.lr_patience >= 0, f"--lr-patience must be >= 0, got {self.lr_patience}"),
            (_finite(self.learning_rate) and self.learning_rate > 0,
             f"--learning-rate must be finite and > 0, got {self.learning_rate}"),
            (_finite(self.lr_factor) and 0 < self.lr_factor < 1, f"--lr-factor must be in (0, 1), got {self.lr_factor}"),
            (_finite(self.validation_fraction) and 0.0 <= self.validation_fraction < 1.0,
             f"--validation-fraction must be in [0, 1), got {self.validation_fraction}"),
            _choice(self.precision, PRECISIONS, "--precision"),
        ])


@dataclass(frozen=True)
class TrainSettings(ModelConfig, TrainConfig):
    """Every hyperparameter of a training run: :class:`ModelConfig` and :class:`TrainConfig` in one.

    Examples
    --------
    >>> s = TrainSettings(epochs=50, hidden=(64,))
    >>> s.model_config().hidden, s.train_config().epochs
    ((64,), 50)
    """

    def model_config(self) -> ModelConfig:
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})

    def model_kwargs(self) -> dict:
        """The arguments of :class:`~trvae_cli.model.TRVAE` that these settings fix."""
        return {f.name: getattr(self, f.name) for f in fields(ModelConfig)}

    def validate(self) -> "TrainSettings":
        ModelConfig.validate(self)
        TrainConfig.validate(self)
        return self

    def to_dict(self) -> dict:
        return {k: _plain(v) for k, v in asdict(self).items()}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


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
SETTING_NAMES = tuple(f.name for f in fields(TrainSettings))


def preset_settings(name: str, **overrides) -> TrainSettings:
    """The settings of preset ``name`` with ``overrides`` applied (unvalidated)."""
    if name not in PRESETS:
        raise KeyError(name)
    return TrainSettings(**{**PRESETS[name], **overrides})


def resolve_settings(settings: TrainSettings | None = None, *, preset: str | None = None,
                     given: Mapping | None = None, input_defaults: Mapping | None = None) -> TrainSettings:
    """The one place settings are put together, then validated.

    Later sources win: the defaults, the input kind's defaults (``input_defaults``, e.g. a conv
    network for images), the ``preset``, then ``given`` (what the user set explicitly). A
    ``settings`` object replaces the first three: it is taken as the user's complete choice.

    Examples
    --------
    >>> resolve_settings(preset="scgen", given={"epochs": 5}).latent_dim
    100
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(SETTING_NAMES))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if settings is not None:
        layers = [asdict(settings)]
        if preset is not None:
            raise ConfigError("give settings or a preset, not both")
    else:
        layers = [dict(input_defaults or {}), PRESETS[preset or "trvae"]]
    merged = {}
    for layer in (*layers, given):
        merged.update(layer)
        if "hidden" in layer and "encoder_hidden" not in layer:
            merged["encoder_hidden"] = None   # a width set alone sets the whole network's (the encoder follows)
    for key in ("hidden", "filters", "encoder_hidden"):
        if merged.get(key) is not None:
            merged[key] = tuple(int(v) for v in merged[key])
    return TrainSettings(**merged).validate()


@dataclass(frozen=True)
class RunOptions:
    """How a run behaves (none of it changes the trained weights).

    ``progress``: one of :data:`LOG_FORMATS`. ``checkpoint_every``: write ``OUT/checkpoint/`` every
    N epochs (0: only on SIGTERM / SIGINT); ``resume``: continue from it. ``threads``: cap the CPU
    threads (set before the backend is imported). ``strategy``: one of :data:`STRATEGIES`.
    ``force``: replace an existing output. ``command``: how the run is recorded (default: the
    library call), or a function of the settings used that renders it (the CLI's). ``console`` (a rich Console) and ``warn`` (a callable taking one line) route
    human output.
    """

    progress: str = "auto"
    checkpoint_every: int = 0
    resume: bool = False
    threads: int | None = None
    strategy: str = "none"
    force: bool = False
    command: str | Callable[["TrainSettings"], str] | None = None
    console: object = None
    warn: Callable[[str], None] | None = None

    def validate(self) -> "RunOptions":
        _check([
            _choice(self.progress, LOG_FORMATS, "--log-format"),
            (self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {self.checkpoint_every}"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
            _choice(self.strategy, STRATEGIES, "--strategy"),
        ])
        return self

    def warning(self, message: str) -> None:
        if self.warn is not None:
            self.warn(message)
        else:
            import sys

            print(f"warning: {message}", file=sys.stderr)
