"""The ``trvae`` command line: thin click commands over :mod:`trvae_cli.api`.

Nothing here imports TensorFlow at module level, so ``trvae --help`` is instant.
Human-readable logs go to stderr; stdout carries only the paths written, so
``pred=$(trvae transform ...)`` works in pipelines.
"""

from __future__ import annotations

import shlex
import sys
import warnings
from contextlib import contextmanager

import click

from . import __version__
from .config import (ARCHS, CONDITION_INJECTIONS, DECODE_MODES, LOG_FORMATS, MMD_PLACEMENTS, NORMS, OUTPUT_ACTIVATIONS,
                     PRECISIONS, PRESETS, RECONSTRUCTION_LOSSES, RESIDUAL_SCALES, STRATEGIES, RunOptions,
                     TrainSettings)
from .errors import TrvaeError, TrvaeNote

D = TrainSettings()


def _err(message: str) -> None:
    click.echo(message, err=True)


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not sizes:
        raise click.BadParameter("give at least one layer size")
    return sizes


def _invocation(ctx: click.Context, resolved: dict | None = None, kind: str | None = None) -> str:
    """The command as it ran, every parameter spelled out (defaults included): reproducible.
    ``resolved``: the values the run actually used (settings filled in by a preset or the input).
    ``kind`` ("cells" or "images"): leave out the options that only apply to the other input kind
    (``only=`` on the option), e.g. ``--filters`` of the conv networks for an .h5ad."""
    words = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if resolved is not None and param.name in resolved:
            value = resolved[param.name]
        if isinstance(param, click.Argument):
            words.append(str(value))
            continue
        if kind is not None and getattr(param, "only", None) not in (None, kind):
            continue
        if value is None or param.name in ("quiet", "force", "resume"):
            continue
        if param.is_flag:
            if param.secondary_opts:
                words.append(param.opts[0] if value else param.secondary_opts[0])
            elif value:
                words.append(param.opts[0])
            continue
        values = value if param.multiple else [value]
        for v in values:
            if isinstance(v, (tuple, list)):
                v = ",".join(map(str, v))
            words += [param.opts[0], str(v)]
    return shlex.join(words)


def _input_kind(data: str) -> str:
    """"images" or "cells": what ``trvae train`` reads DATA as (decided in :mod:`trvae_cli.sources`)."""
    from .sources import looks_like_images

    return "images" if looks_like_images(data) else "cells"


# --------------------------------------------------------------------------- help layout

class KindOption(click.Option):
    """An option that applies to one input kind only (``only="cells"`` or ``only="images"``): the
    recorded command leaves it out for the other kind."""

    def __init__(self, *args, only: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.only = only


def cells_option(*decls, **attrs):
    return click.option(*decls, cls=KindOption, only="cells", **attrs)


def images_option(*decls, **attrs):
    return click.option(*decls, cls=KindOption, only="images", **attrs)


class DescribedArgument(click.Argument):
    """An argument with a ``help`` line, listed in its command's sections like an option."""

    def __init__(self, *args, help: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.help = help

    def get_help_record(self, ctx):
        return self.human_readable_name, self.help


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in named sections.

    ``sections`` maps each heading to the options under it, in order, as one string of flags
    (any of an option's spellings) and argument names: ``{"Data": "DATA --condition --out", ...}``.
    An option named in no section is still shown, under "Other options" (and
    tests/test_help.py fails), so none can silently disappear from the help. The first columns
    of all sections are aligned.
    """

    OTHER = "Other options"
    TERM_WIDTH = 24     # a longer "--option METAVAR" gets a line of its own

    def __init__(self, *args, sections: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.sections = {title: tuple(names.split()) for title, names in sections.items()}

    @staticmethod
    def _names(param: click.Parameter) -> list[str]:
        if isinstance(param, click.Argument):
            return [param.human_readable_name]
        return [*param.opts, *param.secondary_opts]

    def unknown_names(self, ctx: click.Context) -> list[str]:
        """Names in ``sections`` that are no parameter of this command (typos)."""
        known = {n for p in self.get_params(ctx) for n in self._names(p)}
        return [n for names in self.sections.values() for n in names if n not in known]

    def layout(self, ctx: click.Context) -> dict[str, list[click.Parameter]]:
        """Heading -> the parameters listed under it (those with a help line), in order."""
        by_name = {n: p for p in self.get_params(ctx) for n in self._names(p)}
        out: dict[str, list[click.Parameter]] = {}
        placed: set[int] = set()
        for title, names in self.sections.items():
            for name in names:
                param = by_name.get(name)
                if param is not None and id(param) not in placed:
                    placed.add(id(param))
                    out.setdefault(title, []).append(param)
        rest = [p for p in self.get_params(ctx) if id(p) not in placed and isinstance(p, click.Option)]
        if rest:
            out[self.OTHER] = rest
        return {title: [p for p in params if p.get_help_record(ctx) is not None]
                for title, params in out.items()}

    def format_arguments(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Nothing: the arguments are listed in their section (click 8.5 would add a section of its own)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = {title: [p.get_help_record(ctx) for p in params] for title, params in self.layout(ctx).items()}
        col = max((len(term) for records in rows.values() for term, _ in records if len(term) <= self.TERM_WIDTH),
                  default=0)
        for title, records in rows.items():
            if records:
                with formatter.section(title):
                    _write_rows(formatter, records, col)


def _write_rows(formatter: click.HelpFormatter, rows, col: int) -> None:
    """click's ``write_dl`` with one first-column width for all sections, wrapping that never splits
    a word at a hyphen (``--no-conditional`` stays whole); a longer term gets a line of its own."""
    import textwrap

    indent = " " * formatter.current_indent
    width = max(formatter.width - formatter.current_indent - col - 2, 20)
    for term, text in rows:
        lines = textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)
        if len(term) <= col:
            formatter.write(f"{indent}{term:<{col}}  {lines.pop(0) if lines else ''}".rstrip() + "\n")
        else:
            formatter.write(f"{indent}{term}\n")
        for line in lines:
            formatter.write(f"{indent}{' ' * (col + 2)}{line}\n")


@contextmanager
def _notes_as_lines():
    """The library's :class:`~trvae_cli.errors.TrvaeNote` warnings as one ``note:`` line each on
    stderr; every other warning is shown as Python shows it."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, TrvaeNote):
            _err(f"note: {message}")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


class TrvaeGroup(click.Group):
    """Turns TrvaeError into one line on stderr and its exit code (2; 75 when interrupted), no traceback;
    click's own usage errors become the same one ``error:`` line (``--help`` shows the usage)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.Abort:
            _err("error: aborted")
            sys.exit(1)
        except click.ClickException as exc:
            _err(f"error: {exc.format_message()} (see --help)" if isinstance(exc, click.UsageError)
                 else f"error: {exc.format_message()}")
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            with _notes_as_lines():
                return super().invoke(ctx)
        except TrvaeError as exc:
            _err(f"error: {exc}")
            ctx.exit(exc.exit_code)
        except OSError as exc:     # reading or writing a file: one line, EX_IOERR
            from .outputs import io_error

            _err(f"error: {io_error(exc)}")
            ctx.exit(74)

    def format_commands(self, ctx, formatter):
        """Each command's first sentence in full (wrapped, never cut off with "...")."""
        rows = [(name, cmd.get_short_help_str(limit=sys.maxsize)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(name="trvae", cls=TrvaeGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="trvae")
def main():
    """trVAE: train a conditional VAE with an MMD-regularised decoder and transform
    cells from one condition to another, including cell types never seen in the
    target condition.

    \b
    Typical use:
      trvae train data.h5ad --condition condition --cell-type-key cell_type --exclude NK:stimulated
      trvae transform --from control --to stimulated --cell-type NK
    """


def console() -> None:
    """The ``trvae`` program: :func:`main` in a process of its own (the console script).

    Keras is imported without its optional integrations, and the process ends as soon as the
    command has (:func:`trvae_cli.backend.exit_now`). ``main`` itself, as notebooks, tests and
    ``CliRunner`` call it, does neither."""
    from . import backend

    backend.lean_imports = True
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):      # sys.exit("message"): Python prints it and exits 1
        _err(str(code))
        code = 1
    backend.exit_now(code)


def _given_settings(ctx: click.Context, opts: dict) -> dict:
    """The settings the command line set explicitly (presets and input defaults fill the rest)."""
    from click.core import ParameterSource

    return {name: value for name, value in opts.items() if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}


def _image_size(ctx, param, text):
    """``28`` or ``64x48`` (H x W) -> (H, W)."""
    if text is None:
        return None
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"must be H or HxW (integers), got {text!r}") from None
    if len(size) not in (1, 2) or min(size) < 1:
        raise click.BadParameter(f"must be H or HxW (positive integers), got {text!r}")
    return size * 2 if len(size) == 1 else size


TRAIN_SECTIONS = {
    "Data": "DATA --condition --cell-type-key --exclude --layer --backed --out",
    "Model": "--preset --hidden --encoder-hidden --mmd-dim --latent-dim --mmd-on --condition-injection --norm "
             "--conditional --alpha --beta --eta --reconstruction --dropout --output-activation",
    "Training": "--epochs --batch-size --learning-rate --validation-fraction --early-stopping-patience "
                "--lr-patience --lr-factor --kl-warmup --balanced-batches --seed --precision --jit "
                "--validate --from --to --cell-types --decodes --n-degs --n-subsamples --jobs --seeds --validation",
    "Images only": "--image-size --arch --filters",
    "Batch job": "--checkpoint-every --resume --threads --strategy --log-format --quiet --force --help",
}

def _names(ctx, param, value):
    """``A,B`` -> ("A", "B")."""
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if not names:
        raise click.BadParameter("give at least one name")
    return names


def _decodes(ctx, param, value):
    # from config, not validate: importing validate would load evaluate's SciPy statistics
    # (~0.7 s) into every `trvae train`
    from .config import SCORED_DECODES

    names = _names(ctx, param, value)
    bad = [n for n in names or () if n not in SCORED_DECODES]
    if bad or (names and len(set(names)) != len(names)):
        raise click.BadParameter(f"expected distinct modes of {', '.join(SCORED_DECODES)}, got {value!r}")
    return names


def _seeds(ctx, param, value):
    """``0,1,2`` -> (0, 1, 2); distinct and in range is :func:`trvae_cli.validate.validate`'s check."""
    names = _names(ctx, param, value)
    if names is None:
        return None
    try:
        return tuple(int(n) for n in names)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


# --layer and --backed: the matrix train and validate read
MATRIX_OPTIONS = (
    cells_option("--layer", default=None, metavar="LAYER", help="Use adata.layers[LAYER] instead of X."),
    cells_option("--backed", is_flag=True,
                 help="Leave the matrix on disk and read blocks of rows (memory does not grow with the cells)."),
)
# The leave-one-cell-type-out folds of `trvae validate` and `trvae train --validate` (None: the library's defaults,
# so that a plain train's recorded command does not list them)
VALIDATION_OPTIONS = (
    cells_option("--cell-types", callback=_names, default=None, metavar="T1,T2",
                 help="Folds only for these cell types (comma-separated) [default: every cell type with cells "
                      "in both --from and --to]."),
    cells_option("--decodes", callback=_decodes, default=None, metavar="MODES",
                 help="The transform --decode modes each fold scores, comma-separated (counterfactual, mean, "
                      "sample) [default: counterfactual,mean]."),
    cells_option("--n-degs", type=click.IntRange(min=1), default=None, metavar="N",
                 help="Top DEGs of each fold's evaluate (wilcoxon, real target vs real source) [default: 100]."),
    cells_option("--n-subsamples", type=click.IntRange(min=1), default=None, metavar="N",
                 help="Subsamples of each fold's evaluate R² [default: 100]."),
    cells_option("--jobs", type=click.IntRange(min=1), default=None, metavar="N",
                 help="Folds at once, each in its own process [default: one per 2 cores; each fold gets --threads, "
                      "default the cores split evenly]."),
    cells_option("--seeds", callback=_seeds, default=None, metavar="S1,S2",
                 help="Train every fold at each of these seeds and average its figures over them (one more "
                      "training per fold and seed) [default: --seed only]."),
)


# The model and training options of `trvae train`, declared once: `trvae validate` takes the same
# (same flags, same defaults), and both hand them on through _given_settings.
MODEL_OPTIONS = (
    click.option("--preset", type=click.Choice(list(PRESETS)), default="trvae", show_default=True,
                 help="Starting settings: trvae; mmd-cvae / cvae (MMD on z / no MMD, all else equal); scgen "
                 "(scGen's VAE, predictions by latent arithmetic). Options given explicitly win."),
    click.option("--hidden", callback=_int_list, default=",".join(map(str, D.hidden)), show_default=True,
                 metavar="SIZES",
                 help="Hidden layer sizes of the decoder after its MMD layer (mirrored) and, unless "
                      "--encoder-hidden is given, of the encoder."),
    cells_option("--encoder-hidden", callback=_int_list, default=None, metavar="SIZES",
                 help="Hidden layer sizes of the encoder alone [default: those of --hidden]. A narrower encoder "
                      "halves the cost of its gene-wide layer (cells only)."),
    click.option("--mmd-dim", type=click.IntRange(min=1), default=D.mmd_dim, show_default=True, metavar="N",
                 help="Width of the MMD layer (first decoder layer) and last encoder layer "
                      "(images: 32 unless given)."),
    click.option("--latent-dim", type=click.IntRange(min=1), default=D.latent_dim, show_default=True, metavar="N"),
    click.option("--mmd-on", type=click.Choice(MMD_PLACEMENTS), default=D.mmd_on, show_default=True,
                 help="decoder: trVAE (MMD on g1); latent: MMD-CVAE (on z); none: plain CVAE."),
    click.option("--condition-injection", type=click.Choice(CONDITION_INJECTIONS), default=D.condition_injection,
                 show_default=True, help="Where the decoder gets the condition: first = only its first (MMD) layer, "
                 "as in the paper; all = every decoder layer (past the MMD layer too); hidden = every decoder layer but "
                 "the output layer (images: the same as all)."),
    click.option("--norm", type=click.Choice(NORMS), default=D.norm, show_default=True,
                 help="Normalisation in each dense layer: batch = BatchNorm, as the original trVAE; layer = "
                 "LayerNorm over each cell, as scArches' TRVAE (cells only)."),
    click.option("--conditional/--no-conditional", default=D.conditional, show_default=True,
                 help="Feed the condition to encoder and decoder; --no-conditional is scGen's plain VAE."),
    click.option("--alpha", type=float, default=D.alpha, show_default=True, help="KL weight (images: 1e-4 unless given)."),
    click.option("--beta", type=float, default=D.beta, show_default=True, help="MMD weight."),
    click.option("--eta", type=float, default=D.eta, show_default=True, help="Reconstruction weight."),
    click.option("--reconstruction", type=click.Choice(RECONSTRUCTION_LOSSES), default=D.reconstruction,
                 show_default=True),
    click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=D.dropout, show_default=True,
                 metavar="FLOAT", help="Dropout after each dense block (images: 0 unless given)."),
    click.option("--output-activation", type=click.Choice(OUTPUT_ACTIVATIONS), default=D.output_activation,
                 show_default=True),
)
TRAINING_OPTIONS = (
    click.option("--epochs", type=click.IntRange(min=1), default=D.epochs, show_default=True, metavar="N"),
    click.option("--batch-size", type=click.IntRange(min=2), default=D.batch_size, show_default=True, metavar="N",
                 help="The largest batch: an epoch's items are split into ceil(items / N) batches of equal size "
                      "(--backed: batches of N, the last one smaller)."),
    click.option("--learning-rate", "--lr", type=float, default=D.learning_rate, show_default=True,
                 help="Adam's learning rate (images: 1e-3 unless given)."),
    click.option("--validation-fraction", type=click.FloatRange(0, 1, max_open=True),
                 default=D.validation_fraction, show_default=True, metavar="FLOAT"),
    click.option("--early-stopping-patience", type=click.IntRange(min=0), default=D.early_stopping_patience,
                 show_default=True, metavar="N",
                 help="Epochs without validation improvement before stopping (0: never); the best weights are "
                      "restored."),
    click.option("--lr-patience", type=click.IntRange(min=0), default=D.lr_patience, show_default=True, metavar="N",
                 help="Epochs without improvement before the learning rate is multiplied by --lr-factor (0: off)."),
    click.option("--lr-factor", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                 default=D.lr_factor, show_default=True, metavar="FLOAT"),
    click.option("--kl-warmup", type=click.IntRange(min=0), default=D.kl_warmup, show_default=True, metavar="N",
                 help="Epochs over which the KL weight ramps from 0 to --alpha."),
    click.option("--balanced-batches/--no-balanced-batches", default=D.balanced_batches, show_default=True,
                 help="Equal share of every condition in each batch (else plain shuffling); either way every "
                 "batch of an epoch has one size, at most --batch-size."),
    click.option("--seed", type=int, default=D.seed, show_default=True),
    click.option("--precision", type=click.Choice(PRECISIONS), default=D.precision,
                 show_default=True, help="Keras dtype policy: mixed_* compute in 16 bits (GPU), keep weights and "
                 "losses in float32."),
    click.option("--jit/--no-jit", default=D.jit, show_default=True,
                 help="Compile the training step with XLA (about 2x faster on CPU under TensorFlow)."),
)


def _options(*groups):
    """Apply groups of click options as if they were written out as decorators, in order."""
    def apply(f):
        for group in reversed(groups):
            for option in reversed(group):
                f = option(f)
        return f
    return apply


@main.command(cls=SectionedCommand, sections=TRAIN_SECTIONS,
              short_help="Train on cells (.h5ad) or images and write a model directory.")
# Data
@click.argument("data", type=click.Path(path_type=str), cls=DescribedArgument,
                help="An .h5ad file, or an image folder ROOT/<condition>/[<domain>/] or CSV manifest.")
@cells_option("--condition", "--condition-key", "condition_key", default=None, metavar="KEY",
              help="obs column holding each cell's condition (required for .h5ad input).")
@cells_option("--cell-type-key", default=None, metavar="KEY",
              help="obs column holding cell types (needed by --exclude).")
@click.option("--exclude", multiple=True, metavar="CELLTYPE:CONDITION",
              help="Drop these cells from training (repeatable), e.g. NK:stimulated for out-of-sample; "
                   "for images DOMAIN:CONDITION, e.g. 3:thick.")
@_options(MATRIX_OPTIONS)
@click.option("--out", "-o", default="trvae_model", show_default=True, metavar="DIR", help="Model directory to write.")
# Model, Training
@_options(MODEL_OPTIONS, TRAINING_OPTIONS)
@cells_option("--validate", "validate_first", is_flag=True,
              help="First hold out each cell type in turn (trvae validate, same settings; needs --cell-type-key, "
                   "--from, --to), then train the model on everything; the result lands in OUT/validation/, and "
                   "trvae transform --decode auto uses it.")
@cells_option("--validation", "validation_dir", default=None, metavar="DIR",
              help="Attach this existing validation (trvae validate --out, e.g. the one trvae compare "
                   "recommended) to the model, in OUT/validation/, for --decode auto; it must have been trained with "
                   "these settings (the seed aside), checked before training.")
@cells_option("--from", "source", default=None, metavar="CONDITION",
              help="With --validate: the condition predicted from.")
@cells_option("--to", "target", default=None, metavar="CONDITION", help="With --validate: the condition predicted.")
@_options(VALIDATION_OPTIONS)
# Images only
@images_option("--image-size", callback=_image_size, default=None, metavar="H[xW]",
               help="Read every image at this size (needed when sizes differ).")
@images_option("--arch", type=click.Choice(ARCHS), default=D.arch,
               help="Network: conv (Table 1) or unet (deeper, for 64x64 RGB) [default: conv for images; "
                    ".h5ad input always uses mlp].")
@images_option("--filters", callback=_int_list, default=",".join(map(str, D.filters)), show_default=True,
               metavar="SIZES",
               help="Filters of the conv blocks (each halves the image size).")
# Batch job
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Write a checkpoint into OUT/checkpoint/ every N epochs (0: only on SIGTERM/SIGINT).")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoint/ (same command otherwise); the result equals an uninterrupted run.")
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N", help="Cap the CPU threads used.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="none",
              show_default=True, help="Data-parallel training with tf.distribute: mirrored = all local GPUs; "
              "multiworker = one process per node, cluster from TF_CONFIG or Slurm (only worker 0 writes OUT).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS[:-1]), default="auto",
              show_default=True, help="Progress on stderr: auto = a progress bar on a terminal, JSON lines otherwise.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--force", is_flag=True, help="Overwrite an existing model directory.")
@click.pass_context
def train(ctx, data, condition_key, out, cell_type_key, exclude, image_size, layer, quiet, force, preset,
          checkpoint_every, resume, threads, log_format, backed, strategy, validate_first, validation_dir, source,
          target, cell_types, decodes, n_degs, n_subsamples, jobs, seeds, **opts):
    """Train trVAE on DATA (.h5ad, or an image folder / CSV manifest) and write a model directory."""
    from . import api

    options = RunOptions(progress="none" if quiet else log_format, checkpoint_every=checkpoint_every,
                         resume=resume, threads=threads, strategy=strategy, force=force,
                         command=lambda settings: _invocation(ctx, settings.to_dict(), kind=_input_kind(data)))
    if validate_first and validation_dir is not None:
        raise TrvaeError("--validate makes a new validation and --validation attaches an existing one: give one")
    if validate_first:
        from .validate import DEFAULT_DECODES, train_with_validation

        if _input_kind(data) != "cells":
            raise TrvaeError("--validate holds out cell types of .h5ad cells; it does not apply to images")
        path = train_with_validation(
            data, condition_key, out, cell_type_key=cell_type_key, source=source, target=target, exclude=exclude,
            layer=layer, backed=backed, settings=_given_settings(ctx, opts), preset=preset, options=options,
            cell_types=cell_types, decodes=decodes or DEFAULT_DECODES, jobs=jobs, n_degs=n_degs or 100,
            n_subsamples=n_subsamples or 100, seeds=seeds, log=None if quiet else _err,
            command=_invocation(ctx, kind="cells"))
    else:
        given = [flag for flag, v in (("--from", source), ("--to", target), ("--cell-types", cell_types),
                                      ("--decodes", decodes), ("--n-degs", n_degs), ("--n-subsamples", n_subsamples),
                                      ("--jobs", jobs), ("--seeds", seeds)) if v is not None]
        if given:
            raise TrvaeError(f"{', '.join(given)} only apply with --validate")
        path = api.train(data, condition_key, out, cell_type_key=cell_type_key, exclude=exclude, layer=layer,
                         backed=backed, image_size=image_size, settings=_given_settings(ctx, opts), preset=preset,
                         options=options, validation=validation_dir)
    if path is None:     # a multi-worker run's other workers: the chief wrote the model
        return
    if not quiet:
        _err(f"model written to {path}" + (f" (its validation: {path}/validation/)" if validate_first
                                           else f" (its validation: {path}/validation/, from {validation_dir})"
                                           if validation_dir else ""))
    click.echo(str(path))


VALIDATE_SECTIONS = {
    "Data": "DATA --condition --cell-type-key --from --to --cell-types --layer --backed --out",
    "Model": TRAIN_SECTIONS["Model"],
    "Training": TRAIN_SECTIONS["Training"].split(" --validate")[0],
    "Validation": "--decodes --n-degs --n-subsamples --jobs --seeds --threads --keep-models",
    "Output": "--quiet --force --help",
}


@main.command(name="validate", cls=SectionedCommand, sections=VALIDATE_SECTIONS,
              short_help="Hold out each cell type in turn: the R² to expect on an unseen cell type, and the best "
                         "--decode.")
# Data
@click.argument("data", type=click.Path(path_type=str), cls=DescribedArgument,
                help="An .h5ad file (log-normalised X, as for train).")
@click.option("--condition", "--condition-key", "condition_key", required=True, metavar="KEY",
              help="obs column holding each cell's condition.")
@click.option("--cell-type-key", required=True, metavar="KEY",
              help="obs column of cell types: each is held out in turn.")
@click.option("--from", "source", required=True, metavar="CONDITION",
              help="Condition the held-out cells are predicted from.")
@click.option("--to", "target", required=True, metavar="CONDITION",
              help="Condition predicted: each fold trains without one cell type's cells of it (--exclude T:TO).")
@_options(MATRIX_OPTIONS)
@click.option("--out", "-o", default="trvae_validation", show_default=True, metavar="DIR",
              help="Validation folder (an existing one of the same settings is resumed).")
# Model, Training: exactly train's
@_options(MODEL_OPTIONS, TRAINING_OPTIONS)
# Validation
@_options(VALIDATION_OPTIONS)
@click.option("--threads", type=click.IntRange(min=1), default=None, metavar="N", help="CPU threads of each fold.")
@click.option("--keep-models", is_flag=True, help="Keep each fold's model and predictions in DIR/models/ (default: "
              "deleted once scored).")
# Output
@click.option("--quiet", "-q", is_flag=True, help="Say nothing on stderr (no cost line, progress or verdict).")
@click.option("--force", is_flag=True, help="Start over: delete a validation folder trvae wrote, of any settings.")
@click.pass_context
def validate_command(ctx, data, condition_key, cell_type_key, source, target, layer, backed, out, preset, cell_types,
                     decodes, n_degs, n_subsamples, jobs, seeds, threads, keep_models, quiet, force, **opts):
    """Leave one cell type out at a time: for each cell type T with cells in both --from and --to, train
    without T's --to cells, transform T's --from cells with each of --decodes, and score them against
    T's real --to cells (trvae evaluate, with the identity and mean-shift references). Costs one training
    per cell type. Writes DIR/validation.json, .csv, .md and .png; says on stderr the R² to expect on an
    unseen cell type, and which decode did best over the folds.
    """
    from .validate import DEFAULT_DECODES, validate

    report = validate(data, condition_key, cell_type_key, source, target, out, cell_types=cell_types,
                      decodes=decodes or DEFAULT_DECODES, jobs=jobs, threads=threads,
                      settings=_given_settings(ctx, opts), preset=preset, layer=layer, backed=backed,
                      n_degs=n_degs or 100, n_subsamples=n_subsamples or 100, seeds=seeds, keep_models=keep_models,
                      force=force, log=None if quiet else _err, command=_invocation(ctx))
    for path in report["outputs"]:
        click.echo(path)


COMPARE_SECTIONS = {"Input": "VALIDATIONS", "Output": "--out --force --help"}


@main.command(name="compare", cls=SectionedCommand, sections=COMPARE_SECTIONS,
              short_help="Compare the validations of other training settings on the same data: which settings to "
                         "train with.")
@click.argument("validations", nargs=-1, required=True, type=click.Path(path_type=str), cls=DescribedArgument,
                help="Two or more validation folders (trvae validate --out, or a model directory of train "
                     "--validate), of the same data, --from/--to and folds; the first is the baseline.")
@click.option("--out", "-o", default=None, metavar="DIR", help="Also write DIR/comparison.json, .md, .csv and .png.")
@click.option("--force", is_flag=True, help="Replace a comparison folder trvae wrote.")
@click.pass_context
def compare_command(ctx, validations, out, force):
    """Score each validation's setting as a new cell type would be served by it (per fold, the average of
    the DEG-mean and DEG-variance R² of the decode its rule gives that fold from the other folds), pair
    each with the first, fold by fold, and print one line per setting and the recommendation: the best
    setting only when it leads the baseline by more than twice the standard error of the paired
    differences, else the baseline. Trains nothing.
    """
    from .compare import compare

    report = compare(validations, out, force=force, command=_invocation(ctx))
    for line in report["verdict"]:
        click.echo(line)
    for path in report.get("outputs", []):
        _err(f"written: {path}")


_model_option = click.option("--model", "model_dir", default="trvae_model", show_default=True, metavar="DIR",
                             help="Model directory.")
_data_option = click.option("--data", default=None,
                            help="Input .h5ad or image folder [default: what the model was trained on].")

TRANSFORM_SECTIONS = {
    "Data": "--model --data --from --to --cell-type --condition --cell-type-key --backed",
    "Prediction": "--decode --residual-scale --seed --draws",
    "Images only": "--domain",
    "Output": "--out --force --quiet --help",
}


@main.command(cls=SectionedCommand, sections=TRANSFORM_SECTIONS,
              short_help="Transform cells or images from condition --from to --to.")
# Data
@_model_option
@_data_option
@click.option("--from", "source", required=True, metavar="CONDITION", help="Condition of the cells to transform.")
@click.option("--to", "target", required=True, metavar="CONDITION", help="Condition to transform them to.")
@cells_option("--cell-type", default=None, help="Only transform cells of this cell type.")
@cells_option("--condition", "--condition-key", "condition_key", default=None, metavar="KEY",
              help="obs column of the condition in DATA [default: the model's].")
@cells_option("--cell-type-key", default=None, metavar="KEY",
              help="obs column of cell types in DATA [default: the model's].")
@cells_option("--backed", is_flag=True, help="Read the selected cells from disk in blocks instead of loading DATA.")
# Prediction
@click.option("--decode", type=click.Choice(DECODE_MODES), default=None,
              help="counterfactual: each cell plus the model's change f(z,TO) - f(z,FROM), keeping its own noise; "
                   "mean: decode the posterior mean of z (smooth conditional means); sample: one draw of q(z|x); "
                   "auto: the mode the model's validation (train --validate) found best on held-out cell types, "
                   "else the default. Given --seed, every mode is reproducible. [default: auto when the model holds "
                   "a validation of this --from/--to, else counterfactual for cells, mean for images]")
@cells_option("--residual-scale", type=click.Choice(RESIDUAL_SCALES), default="auto",
              show_default=True,
              help="How --decode counterfactual applies the change: counts = move each cell's own counts "
                   "(recovered from log1p-normalised X) by a Poisson coupling, which keeps real zeros; log1p = add "
                   "it to the normalised counts (expm1, add, log1p); linear = add it to the data as they are; "
                   "auto = counts where X holds them, else log1p (images: linear, clipped to [0, 1]).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the random draws of --decode sample and --residual-scale counts.")
@cells_option("--draws", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Write K independent draws of every cell (random decodings only): a larger sample of the "
                   "same predicted distribution, draw-major, obs['trvae_draw'] = 0..K-1.")
# Images only
@images_option("--domain", default=None, help="Only transform this domain (e.g. the digit 3).")
# Output
@click.option("--out", "-o", default=None,
              help="Output .h5ad (images: a folder) [default: MODEL/<FROM>_to_<TO>[_<CELLTYPE>].h5ad; images: "
                   "MODEL/<FROM>_to_<TO>/<DOMAIN|all>/].")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--quiet", "-q", is_flag=True, help="Do not report defaults on stderr.")
@click.pass_context
def transform(ctx, model_dir, data, source, target, out, cell_type, domain, condition_key, cell_type_key,
              decode, residual_scale, seed, draws, backed, force, quiet):
    """Transform cells (or images) from one condition (--from) to another (--to).

    For a model trained on images, DATA is the image folder or manifest, --out a folder
    (PNG files mirroring the input tree, transformed.npz, trvae.json), and --decode mean
    is the default.
    """
    from click.core import ParameterSource

    from . import api

    pred = api.transform(
        model_dir, data, source=source, target=target, out=out, cell_type=cell_type, domain=domain,
        condition_key=condition_key, cell_type_key=cell_type_key, decode=decode, residual_scale=residual_scale,
        seed=seed, draws=draws, force=force, backed=backed, command=_invocation(ctx),
    )
    if not quiet:
        if ctx.get_parameter_source("model_dir") == ParameterSource.DEFAULT:
            _err(f"using default --model {model_dir}")
        choice = pred.adata.uns.get("trvae", {}).get("decode_choice")
        for key, value in pred.defaults_used.items():
            if key != "decode" or choice is None:
                _err(f"using default --{key} {value}")
        if choice is not None:
            if choice["by"] == "validation" and choice.get("nearest"):
                from .validation_report import DATA_SET_RULE, NEAREST_RULE

                rule = {k: float(v) for k, v in dict(choice.get("rule_scores") or {}).items()}
                _err(f"--decode auto: {choice['chosen']}, the best on {choice['nearest']}, the validated cell type "
                     f"nearest to {cell_type} (over the model's {int(choice['folds'])} held-out cell types, the "
                     f"nearest one's choice scored {rule.get(NEAREST_RULE, float('nan')):.3f}"
                     f" against {rule.get(DATA_SET_RULE, float('nan')):.3f} for one choice for all; "
                     f"the data set's choice: {choice['data_set_choice']})")
            elif choice["by"] == "validation":
                scores = ", ".join(f"{m} {float(v):.3f}" for m, v in dict(choice["scores"]).items())
                _err(f"--decode auto: {choice['chosen']}, the best over the model's {int(choice['folds'])} held-out "
                     f"cell types (mean of DEG-mean and DEG-var R²: {scores})")
            else:
                _err(f"--decode auto: {choice['chosen']}, the default ({choice.get('reason', 'no validation result')})")
        expected = pred.adata.uns.get("trvae", {}).get("expected")
        if expected is not None:
            from .validation_report import expected_line

            _err(expected_line(expected))
        what = "transformed images" if pred.images is not None else "predicted cells"
        _err(f"wrote {pred.adata.n_obs} {what} ({source} -> {target}) to {pred.path}")
    click.echo(str(pred.path))


EMBED_SECTIONS = {
    "Data": "--model --data --condition --max-cells --seed",
    "Output": "--out --force --quiet --help",
}


@main.command(cls=SectionedCommand, sections=EMBED_SECTIONS,
              short_help="Write the latent space (z and the MMD layer) of DATA as .h5ad.")
# Data
@_model_option
@_data_option
@cells_option("--condition", "--condition-key", "condition_key", default=None, metavar="KEY",
              help="obs column of the condition in DATA [default: the model's].")
@click.option("--max-cells", type=click.IntRange(min=1), default=None, metavar="N",
              help="Embed a random subset of this size.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --max-cells subset.")
# Output
@click.option("--out", "-o", required=True, metavar="OUT.h5ad", help="Where to write the embedding.")
@click.option("--force", is_flag=True, help="Overwrite an embedding trvae wrote.")
@click.option("--quiet", "-q", is_flag=True, help="Say nothing on stderr.")
@click.pass_context
def embed(ctx, model_dir, data, out, condition_key, max_cells, seed, force, quiet):
    """Write the latent space of DATA's cells as .h5ad: obs of the cells, obsm["X_trvae"] (z, the
    posterior mean) and obsm["X_trvae_mmd"] (the MMD layer), for scanpy (sc.pp.neighbors(a, use_rep="X_trvae"))."""
    from . import api

    emb = api.embed(model_dir, data, condition_key=condition_key, max_cells=max_cells, seed=seed, out=out,
                    force=force, command=_invocation(ctx))
    if not quiet:
        _err(f"wrote the embedding of {emb.n_obs} cells ({emb.obsm['X_trvae'].shape[1]} latent dimensions) to {out}")
    click.echo(str(out))


EVALUATE_SECTIONS = {
    "Data": "--pred --label --real --condition --from --to --cell-type-key --cell-type --layer",
    "Metrics": "--n-degs --n-subsamples --subsample-fraction --n-pcs --no-references --seed",
    "Output": "--json --csv --force --quiet --help",
}


@main.command(cls=SectionedCommand, sections=EVALUATE_SECTIONS,
              short_help="Score predicted cells against real ones (R², MMD, DEGs).")
# Data
@click.option("--pred", "preds", multiple=True, required=True, metavar="PRED.h5ad",
              help="Predicted cells (repeatable: several models in one table).")
@click.option("--label", "labels", multiple=True, help="Name of each --pred, in order [default: its model's name].")
@click.option("--real", default=None, metavar="REAL.h5ad",
              help="Real cells (.h5ad) [default: the data the prediction was made from].")
@click.option("--condition", "--condition-key", "condition_key", default=None, metavar="KEY",
              help="obs column of the condition [default: the prediction's].")
@click.option("--from", "source", default=None, metavar="CONDITION",
              help="Source condition [default: the prediction's].")
@click.option("--to", "target", default=None, metavar="CONDITION", help="Target condition [default: the prediction's].")
@click.option("--cell-type-key", default=None, metavar="KEY",
              help="obs column of cell types [default: the prediction's].")
@click.option("--cell-type", default=None, help="Cell type to score [default: the prediction's].")
@click.option("--layer", default=None, metavar="LAYER", help="Matrix of --real to use [default: the model's].")
# Metrics
@click.option("--n-degs", type=click.IntRange(min=1), default=100, show_default=True, metavar="N",
              help="Top DEGs (wilcoxon, real target vs real source).")
@click.option("--n-subsamples", type=click.IntRange(min=1), default=100, show_default=True, metavar="N")
@click.option("--subsample-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              metavar="FLOAT")
@click.option("--n-pcs", type=click.IntRange(min=1), default=50, show_default=True, metavar="N",
              help="PCA components of the space where MMD and E-distance are measured.")
@click.option("--no-references", is_flag=True, help="Leave out the identity and mean-shift rows.")
@click.option("--seed", type=int, default=0, show_default=True)
# Output
@click.option("--json", "json_out", default=None, metavar="OUT.json", help="Write the report as JSON ('-': stdout).")
@click.option("--csv", "csv_out", default=None, metavar="OUT.csv", help="Write tidy rows (one per metric) as CSV.")
@click.option("--force", is_flag=True, help="Overwrite existing output files.")
@click.option("--quiet", "-q", is_flag=True, help="No table on stderr.")
@click.pass_context
def evaluate(ctx, preds, labels, real, condition_key, source, target, cell_type_key, cell_type, layer,
             n_degs, n_subsamples, subsample_fraction, n_pcs, no_references, seed, json_out, csv_out,
             force, quiet):
    """Score predicted cells against real ones: R² of gene means and variances (all genes,
    top DEGs), change correlation, MMD, E-distance, DEG recovery, next to the identity
    and mean-shift references."""
    from . import evaluation as ev
    from . import report as rp
    from .outputs import check_target, is_plain_file

    if json_out == "-" and csv_out == "-":
        raise TrvaeError("--json - and --csv - both ask for stdout: write one of them to a file")
    outputs = {}
    for value, render in ((json_out, rp.report_json), (csv_out, rp.report_csv)):
        if value and value != "-":
            outputs[check_target(value, force, what="report", inputs=[*preds, real], marker=is_plain_file)] = render
    report = ev.evaluate(
        preds, real, labels=labels, condition_key=condition_key, source=source, target=target,
        cell_type_key=cell_type_key, cell_type=cell_type, layer=layer, n_degs=n_degs,
        n_subsamples=n_subsamples, subsample_fraction=subsample_fraction, n_pcs=n_pcs, seed=seed,
        references=not no_references, command=_invocation(ctx),
    )
    rp.write_texts({path: render(report) for path, render in outputs.items()})
    if not quiet:
        from .console import stderr_console

        console = stderr_console()
        if not console.is_terminal:   # a log file: no reason to wrap at 80 columns
            from rich.console import Console

            console = Console(stderr=True, width=160)
        console.print(rp.rich_table(report))
        for name, why in report["skipped"].items():
            _err(f"note: no {name} row: {why}")
        for note in report.get("notes", []):
            _err(f"note: {note}")
    for value, render in ((json_out, rp.report_json), (csv_out, rp.report_csv)):
        if value == "-":
            text = render(report)
            click.echo(text if text.endswith("\n") else text + "\n", nl=False)
    for path in outputs:
        click.echo(str(path))


from .cli_plot import plot  # noqa: E402  (the plot group, in its own module)

main.add_command(plot)


if __name__ == "__main__":  # pragma: no cover  (python -m trvae_cli.cli: the program, as the console script)
    console()
