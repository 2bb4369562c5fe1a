"""``trvae plot ...``: thin click commands over :mod:`trvae_cli.plotting` (click only)."""

from __future__ import annotations

import click


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


@click.group()
def plot():
    """Draw the paper's figures (png, pdf or svg, from the --out extension)."""


@plot.command("regression", short_help="Real vs predicted per-gene mean or variance, with R².")
@click.option("--pred", required=True, metavar="PRED.h5ad", help="Predicted cells.")
@_task_options
@click.option("--variance", is_flag=True, help="Per-gene variance instead of mean.")
@click.option("--n-degs", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--n-label", type=click.IntRange(min=0), default=10, show_default=True,
              help="Label this many top DEGs.")
@click.option("--n-subsamples", type=click.IntRange(min=0), default=100, show_default=True,
              help="R² in the title: mean ± sd over this many subsamples, as evaluate; 0: R² of all cells.")
@click.option("--subsample-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the subsamples (as evaluate's).")
@_out_option
@_force_option
def plot_regression(pred, out, force, **kw):
    """Real vs predicted per-gene mean (or variance) of the target cells: fitted line, y = x, top
    DEGs labelled, R² of all genes and of the DEGs in the title (the paper's Fig. 5b-c). The R² is
    evaluate's: the mean ± sd over subsamples, unless --n-subsamples 0."""
    from .plotting import plot_regression as run

    run(pred, out, force=force, **kw)
    click.echo(out)


@plot.command("gene", short_help="Violins of one gene: real source, real target, predictions.")
@click.argument("gene")
@click.option("--pred", "preds", multiple=True, required=True, metavar="PRED.h5ad", help="Repeatable.")
@click.option("--label", "labels", multiple=True, help="Name of each --pred, in order.")
@_task_options
@_out_option
@_force_option
def plot_gene(gene, preds, labels, out, force, **kw):
    """Violins of GENE in the real source cells, the real target cells and each prediction, with
    each group's mean marked (the paper's Fig. 5d)."""
    from .plotting import plot_gene as run

    run(gene, preds, out, labels=labels, force=force, **kw)
    click.echo(out)


@plot.command("latent", short_help="UMAPs of latent z and MMD layer; held-out cells ringed.")
@click.option("--model", "model_dir", default="trvae_model", show_default=True, metavar="DIR",
              help="Model directory.")
@click.option("--data", default=None, help="Cells to embed [default: the model's training data].")
@click.option("--color", "color", multiple=True, help="obs columns to colour by [default: condition, cell type].")
@click.option("--max-cells", type=click.IntRange(min=3), default=None, help="Embed a random subset of this size.")
@click.option("--seed", type=int, default=0, show_default=True)
@_out_option
@_force_option
def plot_latent(model_dir, data, color, max_cells, seed, out, force):
    """UMAPs of the latent z and of the MMD layer, by condition and cell type (the paper's Fig. 2).
    Cells of the groups held out from training (train --exclude) are ringed in black."""
    from .plotting import plot_latent as run

    run(model_dir, out, data=data, color=color or None, max_cells=max_cells, seed=seed, force=force)
    click.echo(out)


@plot.command("images", short_help="Grid of source, transformed and true images.")
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


@plot.command("history", short_help="Loss curves per term, training vs validation.")
@click.option("--model", "model_dir", default="trvae_model", show_default=True, metavar="DIR",
              help="Model directory.")
@click.argument("model_arg", required=False, metavar="[MODEL_DIR]")
@_out_option
@_force_option
@click.pass_context
def plot_history(ctx, model_dir, model_arg, out, force):
    """Loss curves of a trained model, one panel per term (total loss, reconstruction, KL, MMD,
    learning rate), training vs validation, best epoch marked. The model is --model DIR, as for
    the other commands (a positional MODEL_DIR is still accepted)."""
    from click.core import ParameterSource

    from .plotting import plot_history as run

    if model_arg is not None:
        if ctx.get_parameter_source("model_dir") is not ParameterSource.DEFAULT and model_dir != model_arg:
            raise click.UsageError(f"two model directories: --model {model_dir} and {model_arg}; give one")
        model_dir = model_arg
    run(model_dir, out, force=force)
    click.echo(out)


@plot.command("compare", short_help="Bars of R² (mean ± sd) from evaluate --json files.")
@click.argument("reports", nargs=-1, required=True, metavar="EVAL.json...")
@click.option("--no-references", is_flag=True, help="Leave out the identity and mean-shift bars.")
@_out_option
@_force_option
def plot_compare(reports, no_references, out, force):
    """Bars of R² (mean ± sd over subsamples) of every prediction in one or more evaluate --json
    files, one panel for all genes and one for the top DEGs (the paper's Fig. 5e)."""
    from .plotting import plot_compare as run

    run(reports, out, references=not no_references, force=force)
    click.echo(out)
