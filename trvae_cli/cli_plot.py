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
