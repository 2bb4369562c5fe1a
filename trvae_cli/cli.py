"""The ``trvae`` command line: thin click commands over :mod:`trvae_cli.api`.

Nothing here imports TensorFlow at module level, so ``trvae --help`` is instant.
Human-readable logs go to stderr; stdout carries only the paths written, so
``pred=$(trvae transform ...)`` works in pipelines.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from . import __version__
from .counterfactual import DECODE_MODES
from .errors import TrvaeError
from .settings import PRESETS, TrainSettings

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


def _invocation(ctx: click.Context) -> str:
    """The command as it ran, every parameter spelled out (defaults included): reproducible."""
    words = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            words.append(str(value))
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
            if isinstance(v, tuple):
                v = ",".join(map(str, v))
            words += [param.opts[0], str(v)]
    return shlex.join(words)


class TrvaeGroup(click.Group):
    """Turns TrvaeError into one line on stderr and its exit code (2; 75 when interrupted), no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TrvaeError as exc:
            _err(f"error: {exc}")
            ctx.exit(exc.exit_code)


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


@main.command()
@click.argument("data", type=click.Path(path_type=str))
@click.option("--condition", "--condition-key", "condition_key", default=None,
              help="obs column holding each cell's condition (.h5ad input; required there).")
@click.option("--out", "-o", default="trvae_model", show_default=True, help="Model directory to write.")
@click.option("--cell-type-key", default=None, help="obs column holding cell types (needed by --exclude).")
@click.option("--exclude", multiple=True, metavar="CELLTYPE:CONDITION",
              help="Drop these cells from training (repeatable), e.g. NK:stimulated for out-of-sample; "
                   "for images DOMAIN:CONDITION, e.g. 3:thick.")
@click.option("--image-size", default=None, metavar="H[xW]",
              help="Images: read every image at this size (needed when sizes differ).")
@click.option("--arch", type=click.Choice(["mlp", "conv", "unet"]), default=None,
              help="Network: mlp for cells; conv (Table 1) or unet (deeper, for 64x64 RGB) for images "
                   "[default: mlp for .h5ad, conv for image folders].")
@click.option("--filters", callback=_int_list, default=",".join(map(str, D.filters)), show_default=True,
              help="Images: filters of the conv blocks (each halves the image size).")
@click.option("--layer", default=None, help="Use adata.layers[LAYER] instead of X.")
@click.option("--epochs", type=click.IntRange(min=1), default=D.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=D.batch_size, show_default=True)
@click.option("--learning-rate", "--lr", type=float, default=D.learning_rate, show_default=True)
@click.option("--validation-fraction", type=click.FloatRange(0, 1, max_open=True),
              default=D.validation_fraction, show_default=True)
@click.option("--early-stopping-patience", type=click.IntRange(min=0), default=D.early_stopping_patience,
              show_default=True, help="Epochs without validation improvement before stopping (0: never); "
              "the best weights are restored.")
@click.option("--lr-patience", type=click.IntRange(min=0), default=D.lr_patience, show_default=True,
              help="Epochs without improvement before the learning rate is multiplied by --lr-factor (0: off).")
@click.option("--lr-factor", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=D.lr_factor, show_default=True)
@click.option("--kl-warmup", type=click.IntRange(min=0), default=D.kl_warmup, show_default=True,
              help="Epochs over which the KL weight ramps from 0 to --alpha.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="trvae", show_default=True,
              help="Starting settings: trvae; mmd-cvae / cvae (MMD on z / no MMD, all else equal); scgen "
              "(scGen's VAE, predictions by latent arithmetic). Options given explicitly win.")
@click.option("--mmd-on", type=click.Choice(["decoder", "latent", "none"]), default=D.mmd_on, show_default=True,
              help="decoder: trVAE (MMD on g1); latent: MMD-CVAE (on z); none: plain CVAE.")
@click.option("--condition-injection", type=click.Choice(["first", "all"]), default=D.condition_injection,
              show_default=True, help="Where the decoder gets the condition: first = only its first (MMD) layer, "
              "as in the paper; all = every decoder layer (past the MMD layer too).")
@click.option("--conditional/--no-conditional", default=D.conditional, show_default=True,
              help="Feed the condition to encoder and decoder; --no-conditional is scGen's plain VAE.")
@click.option("--alpha", type=float, default=D.alpha, show_default=True, help="KL weight.")
@click.option("--beta", type=float, default=D.beta, show_default=True, help="MMD weight.")
@click.option("--eta", type=float, default=D.eta, show_default=True, help="Reconstruction weight.")
@click.option("--reconstruction", type=click.Choice(["mse", "sse"]), default=D.reconstruction, show_default=True)
@click.option("--hidden", callback=_int_list, default=",".join(map(str, D.hidden)), show_default=True,
              help="Hidden layer sizes of the encoder (the decoder mirrors them).")
@click.option("--mmd-dim", type=click.IntRange(min=1), default=D.mmd_dim, show_default=True,
              help="Width of the MMD layer (first decoder layer) and last encoder layer.")
@click.option("--latent-dim", type=click.IntRange(min=1), default=D.latent_dim, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=D.dropout, show_default=True)
@click.option("--output-activation", type=click.Choice(["relu", "linear"]), default=D.output_activation,
              show_default=True)
@click.option("--balanced-batches/--no-balanced-batches", default=D.balanced_batches, show_default=True,
              help="Equal share of every condition in each batch.")
@click.option("--seed", type=int, default=D.seed, show_default=True)
@click.option("--precision", type=click.Choice(["float32", "mixed_bfloat16", "mixed_float16"]), default=D.precision,
              show_default=True, help="Keras dtype policy: mixed_* compute in 16 bits (GPU), keep weights and "
              "losses in float32.")
@click.option("--jit/--no-jit", default=D.jit, show_default=True,
              help="Compile the training step with XLA (about 2x faster on CPU under TensorFlow).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="Write a checkpoint into OUT/checkpoint/ every N epochs (0: only on SIGTERM/SIGINT).")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoint/ (same command otherwise); the result equals an uninterrupted run.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Cap the CPU threads used.")
@click.option("--backed", is_flag=True,
              help="Leave the matrix on disk and read blocks of rows (memory does not grow with the cells).")
@click.option("--strategy", type=click.Choice(["none", "mirrored", "multiworker"]), default="none",
              show_default=True, help="Data-parallel training with tf.distribute: mirrored = all local GPUs; "
              "multiworker = one process per node, cluster from TF_CONFIG or Slurm (only worker 0 writes OUT).")
@click.option("--log-format", type=click.Choice(["auto", "rich", "text", "json"]), default="auto",
              show_default=True, help="Progress on stderr: auto = a progress bar on a terminal, JSON lines otherwise.")
@click.option("--force", is_flag=True, help="Overwrite an existing model directory.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.pass_context
def train(ctx, data, condition_key, out, cell_type_key, exclude, layer, quiet, force, preset,
          checkpoint_every, resume, threads, log_format, backed, strategy, **opts):
    """Train trVAE on DATA (.h5ad) and write a model directory."""
    from click.core import ParameterSource

    from . import api

    for name, value in PRESETS[preset].items():   # the preset fills what the command line left at default
        if ctx.get_parameter_source(name) == ParameterSource.DEFAULT:
            opts[name] = ctx.params[name] = value
    image_input = Path(data).is_dir() or Path(data).suffix.lower() == ".csv"
    arch = opts.pop("arch") or ("conv" if image_input else "mlp")
    image_size = _image_size(opts.pop("image_size"))
    settings = TrainSettings(arch=arch, **opts)
    if image_input:
        from . import images_api

        if layer is not None or cell_type_key is not None or backed:
            raise TrvaeError("--layer, --cell-type-key and --backed apply to .h5ad input, not to images")
        path = images_api.train_images(
            data, out, exclude=exclude, image_size=image_size, settings=settings, force=force,
            progress="none" if quiet else log_format, command=_invocation(ctx), preset=preset,
            checkpoint_every=checkpoint_every, resume=resume, threads=threads, strategy=strategy)
        _report_model(path, quiet)
        return
    if arch != "mlp":
        raise TrvaeError(f"--arch {arch} is for image input; cells use --arch mlp")
    if condition_key is None:
        raise TrvaeError("--condition-key is required for .h5ad input (the obs column of the conditions)")
    path = api.train(
        data, condition_key, out, cell_type_key=cell_type_key, exclude=exclude, layer=layer,
        settings=settings, force=force, progress="none" if quiet else log_format, command=_invocation(ctx),
        preset=preset, checkpoint_every=checkpoint_every, resume=resume, threads=threads, backed=backed,
        strategy=strategy,
    )
    _report_model(path, quiet)


def _image_size(text):
    """``28`` or ``64x48`` (H x W) -> (H, W)."""
    if text is None:
        return None
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise TrvaeError(f"--image-size must be H or HxW (integers), got {text!r}") from None
    if len(size) not in (1, 2) or min(size) < 1:
        raise TrvaeError(f"--image-size must be H or HxW (positive integers), got {text!r}")
    return size * 2 if len(size) == 1 else size


def _report_model(path, quiet: bool) -> None:
    if path is None:     # a multi-worker run's other workers: the chief wrote the model
        return
    if not quiet:
        _err(f"model written to {path}")
    click.echo(str(path))


@main.command()
@click.option("--model", "model_dir", default="trvae_model", show_default=True, help="Model directory.")
@click.option("--data", default=None, help="Input .h5ad [default: the file the model was trained on].")
@click.option("--from", "source", required=True, help="Condition of the cells to transform.")
@click.option("--to", "target", required=True, help="Condition to transform them to.")
@click.option("--out", "-o", default=None, help="Output .h5ad [default: MODEL/<FROM>_to_<TO>[_<CELLTYPE>].h5ad].")
@click.option("--cell-type", default=None, help="Only transform cells of this cell type.")
@click.option("--domain", default=None, help="Images: only transform this domain (e.g. the digit 3).")
@click.option("--condition", "--condition-key", "condition_key", default=None,
              help="obs column of the condition in DATA [default: the model's].")
@click.option("--cell-type-key", default=None, help="obs column of cell types in DATA [default: the model's].")
@click.option("--decode", type=click.Choice(DECODE_MODES), default=DECODE_MODES[0],
              show_default=True,
              help="counterfactual: each cell plus the model's change f(z,TO) - f(z,FROM), keeping its own noise; "
                   "mean: decode the posterior mean of z (smooth conditional means); sample: one draw of q(z|x). "
                   "Given --seed, every mode is reproducible.")
@click.option("--residual-scale", type=click.Choice(["auto", "counts", "log1p", "linear"]), default="auto",
              show_default=True,
              help="How --decode counterfactual applies the change: counts = move each cell's own counts "
                   "(recovered from log1p-normalised X) by a Poisson coupling, which keeps real zeros; log1p = add "
                   "it to the normalised counts (expm1, add, log1p); linear = add it to the data as they are; "
                   "auto = counts where X holds them, else log1p.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the random draws of --decode sample and --residual-scale counts.")
@click.option("--draws", type=click.IntRange(min=1), default=1, show_default=True, metavar="K",
              help="Write K independent draws of every cell (random decodings only): a larger sample of the "
                   "same predicted distribution, draw-major, obs['trvae_draw'] = 0..K-1.")
@click.option("--backed", is_flag=True, help="Read the selected cells from disk in blocks instead of loading DATA.")
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
    from . import api
    from .images_api import model_input_kind

    if model_input_kind(model_dir) == "images":
        from .images_api import transform_images

        if draws != 1:
            raise TrvaeError("--draws applies to cells; image transforms write one image per source image")

        src = ctx.get_parameter_source("decode")
        from click.core import ParameterSource

        pred = transform_images(
            model_dir, data, source=source, target=target, out=out, domain=domain or cell_type,
            decode="mean" if src == ParameterSource.DEFAULT else decode, seed=seed, force=force,
            command=_invocation(ctx))
        if not quiet:
            _err(f"wrote {len(pred.images)} transformed images ({source} -> {target}) to {pred.path}")
        click.echo(str(pred.path))
        return

    pred = api.transform(
        model_dir, data, source=source, target=target, out=out, cell_type=cell_type,
        condition_key=condition_key, cell_type_key=cell_type_key, decode=decode, residual_scale=residual_scale, seed=seed,
        draws=draws, force=force, backed=backed,
        command=_invocation(ctx),
    )
    if not quiet:
        if model_dir == "trvae_model":
            _err("using default --model trvae_model")
        for key, value in pred.defaults_used.items():
            _err(f"using default --{key} {value}")
        _err(f"wrote {pred.adata.n_obs} predicted cells ({source} -> {target}) to {pred.path}")
    click.echo(str(pred.path))


@main.command()
@click.option("--pred", "preds", multiple=True, required=True, metavar="PRED.h5ad",
              help="Predicted cells (repeatable: several models in one table).")
@click.option("--label", "labels", multiple=True, help="Name of each --pred, in order [default: its model's name].")
@click.option("--real", default=None, help="Real cells (.h5ad) [default: the data the prediction was made from].")
@click.option("--condition", "--condition-key", "condition_key", default=None,
              help="obs column of the condition [default: the prediction's].")
@click.option("--from", "source", default=None, help="Source condition [default: the prediction's].")
@click.option("--to", "target", default=None, help="Target condition [default: the prediction's].")
@click.option("--cell-type-key", default=None, help="obs column of cell types [default: the prediction's].")
@click.option("--cell-type", default=None, help="Cell type to score [default: the prediction's].")
@click.option("--layer", default=None, help="Matrix of --real to use [default: the model's].")
@click.option("--n-degs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Top DEGs (wilcoxon, real target vs real source).")
@click.option("--n-subsamples", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--subsample-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True)
@click.option("--n-pcs", type=click.IntRange(min=1), default=50, show_default=True,
              help="PCA components of the space where MMD and E-distance are measured.")
@click.option("--no-references", is_flag=True, help="Leave out the identity and mean-shift rows.")
@click.option("--seed", type=int, default=0, show_default=True)
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
    from pathlib import Path

    from . import evaluation as ev
    from . import report as rp
    from .model_dir import check_writable_target

    outputs = {}
    for value, render in ((json_out, rp.report_json), (csv_out, rp.report_csv)):
        if value and value != "-":
            check_writable_target(Path(value), force)
            outputs[Path(value)] = render
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
    if json_out == "-":
        click.echo(rp.report_json(report))
    for path in outputs:
        click.echo(str(path))


# --- plot ------------------------------------------------------------------------------------

def _task_options(f):
    """The options that say which real cells a prediction is scored against (default: its own record)."""
    for opt in reversed([
        click.option("--real", default=None, help="Real cells (.h5ad) [default: the prediction's data]."),
        click.option("--condition", "--condition-key", "condition_key", default=None,
                     help="obs column of the condition [default: the prediction's]."),
        click.option("--from", "source", default=None, help="Source condition [default: the prediction's]."),
        click.option("--to", "target", default=None, help="Target condition [default: the prediction's]."),
        click.option("--cell-type-key", default=None, help="obs column of cell types [default: the prediction's]."),
        click.option("--cell-type", default=None, help="Cell type [default: the prediction's]."),
        click.option("--layer", default=None, help="Matrix of --real to use [default: the model's]."),
    ]):
        f = opt(f)
    return f


_out_option = click.option("--out", "-o", required=True, metavar="FILE.png|pdf|svg",
                           help="Image to write; the format follows the extension.")
_force_option = click.option("--force", is_flag=True, help="Overwrite an existing image.")


@main.group()
def plot():
    """Draw the paper's figures (png, pdf or svg, from the --out extension)."""


@plot.command("regression")
@click.option("--pred", required=True, metavar="PRED.h5ad", help="Predicted cells.")
@_task_options
@click.option("--variance", is_flag=True, help="Per-gene variance instead of mean.")
@click.option("--n-degs", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--n-label", type=click.IntRange(min=0), default=10, show_default=True,
              help="Label this many top DEGs.")
@_out_option
@_force_option
def plot_regression(pred, out, force, **kw):
    """Real vs predicted per-gene mean (or variance), fitted line, R² in the title (Fig. 5b-c)."""
    from .plotting import plot_regression as run

    run(pred, out, force=force, **kw)
    click.echo(out)


@plot.command("gene")
@click.argument("gene")
@click.option("--pred", "preds", multiple=True, required=True, metavar="PRED.h5ad", help="Repeatable.")
@click.option("--label", "labels", multiple=True, help="Name of each --pred, in order.")
@_task_options
@_out_option
@_force_option
def plot_gene(gene, preds, labels, out, force, **kw):
    """Violins of GENE in real source, real target and each prediction (Fig. 5d)."""
    from .plotting import plot_gene as run

    run(gene, preds, out, labels=labels, force=force, **kw)
    click.echo(out)


@plot.command("latent")
@click.option("--model", "model_dir", default="trvae_model", show_default=True, help="Model directory.")
@click.option("--data", default=None, help="Cells to embed [default: the model's training data].")
@click.option("--color", "color", multiple=True, help="obs columns to colour by [default: condition, cell type].")
@click.option("--max-cells", type=click.IntRange(min=3), default=None, help="Embed a random subset of this size.")
@click.option("--seed", type=int, default=0, show_default=True)
@_out_option
@_force_option
def plot_latent(model_dir, data, color, max_cells, seed, out, force):
    """UMAPs of the latent z and of the MMD layer, by condition and cell type (Fig. 2)."""
    from .plotting import plot_latent as run

    run(model_dir, out, data=data, color=color or None, max_cells=max_cells, seed=seed, force=force)
    click.echo(out)


@plot.command("images")
@click.argument("pred_dir")
@click.option("--truth", default=None, metavar="ROOT",
              help="Folder holding each true target image at the transformed image's relative path "
                   "(for sample_data/digits: that folder).")
@click.option("--n", "n", type=click.IntRange(min=1), default=10, show_default=True, help="Images to show.")
@_out_option
@_force_option
def plot_images(pred_dir, truth, n, out, force):
    """Grid of source / transformed / true images from an image transform's PRED_DIR."""
    from .plotting import plot_images as run

    run(pred_dir, out, truth=truth, n=n, force=force)
    click.echo(out)


@plot.command("history")
@click.argument("model_dir", default="trvae_model")
@_out_option
@_force_option
def plot_history(model_dir, out, force):
    """Loss curves per term of MODEL_DIR, training vs validation."""
    from .plotting import plot_history as run

    run(model_dir, out, force=force)
    click.echo(out)


@plot.command("compare")
@click.argument("reports", nargs=-1, required=True, metavar="EVAL.json...")
@click.option("--no-references", is_flag=True, help="Leave out the identity and mean-shift bars.")
@_out_option
@_force_option
def plot_compare(reports, no_references, out, force):
    """Bars of R² (mean ± sd) of every prediction in one or more evaluate --json files (Fig. 5e)."""
    from .plotting import plot_compare as run

    run(reports, out, references=not no_references, force=force)
    click.echo(out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
