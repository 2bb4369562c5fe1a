"""``trvae plot``: each figure's content (checked on the Figure objects) and each command's file."""

import json
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import anndata as ad
import numpy as np
import pytest
from cli_helpers import assert_ok, assert_user_error, invoke

from trvae_cli.plotting import plot_compare, plot_gene, plot_history, plot_latent, plot_regression
from trvae_cli.plotting.commands import expression_scale, held_out_mask, held_out_text
from trvae_cli.plotting.figures import history_figure, regression_figure

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}


@pytest.fixture(scope="module")
def pred(trained_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("plot_preds") / "nk.h5ad"
    assert_ok(invoke("transform", "--model", trained_model, "--from", "control", "--to", "stimulated",
                     "--cell-type", "NK", "--out", path, "-q"))
    return path


@pytest.fixture(scope="module")
def eval_json(pred, tmp_path_factory):
    path = tmp_path_factory.mktemp("plot_eval") / "e.json"
    assert_ok(invoke("evaluate", "--pred", pred, "--n-degs", "10", "--n-subsamples", "5", "--json", path, "-q"))
    return path


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


def n_points(ax):
    return sum(len(c.get_offsets()) for c in ax.collections)


def assert_image(path, fmt):
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(MAGIC[fmt]), (path, data[:20])


# --------------------------------------------------------------------------- figure contents


def title_r2(title):
    """The R² figures of the regression title's second line: (all, degs), or (all, sd, degs, sd)."""
    return [float(v) for v in re.findall(r"-?\d+\.\d{3}", title.split("\n")[1])]


def overlapping_labels(ax):
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]


def test_regression_has_a_point_per_gene_and_labels_the_top_degs(pred, tiny_h5ad):
    fig = plot_regression(pred, n_degs=10, n_label=4, n_subsamples=5)
    (ax,) = fig.axes
    assert n_points(ax) == 40                     # every gene once: other, DEG, top-DEG layers
    assert len(ax.texts) == 4 and overlapping_labels(ax) == []
    assert "R² all genes = " in ax.get_title() and "top 10 DEGs = " in ax.get_title()
    # the scale comes from the prediction's record: counterfactual decoding found log1p-normalised counts
    assert ax.get_xlabel() == "real stimulated: mean expression (X, log1p-normalised counts)"
    assert ax.get_ylabel() == "predicted stimulated: mean expression (X, log1p-normalised counts)"
    var = plot_regression(pred, n_degs=10, variance=True, n_subsamples=5)
    assert var.axes[0].get_xlabel().startswith("real stimulated: expression variance (X, ")
    assert len(var.axes[0].texts) == 10


def test_regression_title_states_evaluates_subsample_r2(pred, eval_json):
    """The title's R² is evaluate's (mean ± sd over the same subsamples), and says so; with
    --n-subsamples 0 it is the full-set R², and says that instead."""
    model = json.loads(eval_json.read_text())["results"][-1]["metrics"]   # 10 DEGs, 5 subsamples, seed 0
    for variance, key in ((False, "mean"), (True, "var")):
        title = plot_regression(pred, n_degs=10, n_subsamples=5, variance=variance).axes[0].get_title()
        assert "mean ± sd over 5 subsamples of 80% of the cells, as trvae evaluate" in title
        r2_all, sd_all, r2_degs, sd_degs = title_r2(title)
        np.testing.assert_allclose([r2_all, r2_degs], [model[f"r2_{key}_all"]["mean"], model[f"r2_{key}_degs"]["mean"]],
                                   atol=5e-4)
        np.testing.assert_allclose([sd_all, sd_degs], [model[f"r2_{key}_all"]["sd"], model[f"r2_{key}_degs"]["sd"]],
                                   atol=5e-4)
    full = plot_regression(pred, n_degs=10, n_subsamples=0).axes[0].get_title()
    assert "full sets of cells" in full and "subsamples" not in full and "±" not in full
    np.testing.assert_allclose(title_r2(full), [model["r2_mean_all"]["full"], model["r2_mean_degs"]["full"]],
                               atol=5e-4)


def test_regression_labels_do_not_overlap_on_crowded_points():
    rng = np.random.default_rng(0)
    real = rng.uniform(0, 3, 300)
    pred = real + rng.normal(0, 0.2, 300)
    real[:10], pred[:10] = 2.5 + rng.normal(0, 0.02, 10), 2.5 + rng.normal(0, 0.02, 10)   # ten DEGs in one spot
    genes = ["IRF7", "SAT1", "RSAD2", "SAMD9", "ISG15", "IFIT1", "IFIT3", "MX1", "ISG20", "OAS1"] + \
        [f"g{i}" for i in range(10, 300)]
    fig = regression_figure(real, pred, genes, np.arange(20), r2_all=0.9, r2_degs=0.8)
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(genes[:10])
    assert overlapping_labels(ax) == []
    inside = ax.get_window_extent(fig.canvas.get_renderer())
    for text in ax.texts:                        # and none is pushed out of the axes
        box = text.get_window_extent(fig.canvas.get_renderer())
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1


def test_expression_scale_follows_the_prediction_record():
    assert expression_scale({"residual_scale": "counts"}, None) == "X, log1p-normalised counts"
    assert expression_scale({"residual_scale": "log1p"}, "lognorm") == "layer lognorm, log1p scale"
    assert expression_scale({"residual_scale": "linear"}, "scaled") == "layer scaled"
    assert expression_scale({"decode": "mean", "residual_scale": ""}, None) == "X"
    assert expression_scale({}, None) == "X"          # not made by trvae transform: the matrix only


def test_gene_has_a_violin_per_group(pred):
    fig = plot_gene("gene000", [pred, pred], labels=["a", "b"])
    (ax,) = fig.axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) == 4 and ticks[0].startswith("real control") and ticks[1].startswith("real stimulated")
    assert ticks[2].startswith("a") and ticks[3].startswith("b")
    assert "gene000" in ax.get_title()
    assert ax.get_ylabel() == "gene000 expression (X, log1p-normalised counts)"
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["mean", "cells"]
    means = [c for c in ax.collections if c.get_label() == "mean"]      # the bar in each violin is labelled
    assert len(means) == 1 and len(means[0].get_segments()) == 4


def test_latent_has_z_and_mmd_panels_by_condition_and_cell_type(trained_model):
    from trvae_cli.api import embed

    fig = plot_latent(trained_model, max_cells=150, seed=0)
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("latent z") and titles[2].startswith("MMD layer")
    assert "condition" in titles[0] and "cell_type" in titles[1]
    obs = embed(trained_model, max_cells=150, seed=0).obs        # the same 150 cells
    held = int(((obs["cell_type"] == "NK") & (obs["condition"] == "stimulated")).sum())
    assert held > 0                      # the training data hold the held-out cells (exclude only kept them out)
    for ax, n_labels in zip(fig.axes, [3, 4, 3, 4]):   # 3 conditions, 4 cell types
        cells, ring = ax.collections[0], ax.collections[-1]
        assert len(cells.get_offsets()) == 150
        assert len(ring.get_offsets()) == held and len(ring.get_facecolors()) == 0   # hollow rings on them
        assert len(ax.get_legend().get_texts()) == n_labels
    (legend,) = fig.legends                     # one entry for the figure, not one per panel
    assert [t.get_text() for t in legend.get_texts()] == [f"held out from training (NK, stimulated): {held} cells"]


def test_held_out_cells_are_found_by_the_models_exclusions():
    import pandas as pd

    obs = pd.DataFrame({"cell_type": ["NK", "NK", "B", "B"], "condition": ["stimulated", "control"] * 2})
    np.testing.assert_array_equal(held_out_mask(obs, ["NK:stimulated"], "cell_type", "condition"), [1, 0, 0, 0])
    np.testing.assert_array_equal(held_out_mask(obs, ["NK:stimulated", "B:control"], "cell_type", "condition"),
                                  [1, 0, 0, 1])
    assert not held_out_mask(obs, [], "cell_type", "condition").any()
    assert not held_out_mask(obs[["condition"]], ["NK:stimulated"], "cell_type", "condition").any()  # no such column
    assert held_out_text(["NK:stimulated", "B:control"]) == "held out from training (NK, stimulated; B, control)"


def test_history_has_a_panel_per_term_with_validation(trained_model):
    import csv

    with open(trained_model / "history.csv", newline="") as fh:   # what training writes
        columns = next(csv.reader(fh))
    assert {"loss", "reconstruction", "kl", "mmd", "learning_rate", "val_loss"} <= set(columns)
    fig = plot_history(trained_model)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["total loss (η=100, α=0.03, β=1)", "reconstruction error", "KL divergence", "MMD",
                      "learning rate"]
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "η·recon. + α·KL + β·MMD", "½ squared error, mean over genes", "KL(q(z|x) ‖ N(0, I)) per latent dim",
        "MMD between conditions (decoder layer)", "learning rate"]
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    assert [len(ax.lines) for ax in fig.axes[:4]] == [3, 3, 3, 3]   # training, validation, best epoch
    assert all(ax.get_legend() is None for ax in fig.axes)            # one legend, for the figure
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["training", "validation", "best epoch (2)"]


def test_history_figure_without_validation():
    rows = [{"epoch": i + 1, "loss": 10.0 / (i + 1)} for i in range(5)]
    fig = history_figure(rows, ["loss"], best_epoch=5)
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2


def test_compare_has_a_bar_per_prediction_and_metric(eval_json, tmp_path):
    fig = plot_compare([eval_json])
    assert [ax.get_title() for ax in fig.axes] == ["all genes", "top-10 DEGs"]   # each panel names its genes
    assert "DEGs" not in fig.get_suptitle()
    assert fig.get_suptitle() == "NK: control → stimulated\nR², mean ± sd over 5 subsamples of 80% of the cells"
    for ax in fig.axes:
        assert len(ax.patches) == 3 * 2          # identity, mean shift, model x (mean, variance)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["mean", "variance"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["identity", "mean shift", "model"]
    report = json.loads(eval_json.read_text())
    other = json.loads(json.dumps(report))
    other["task"]["cell_type"] = "B"
    second = tmp_path / "b.json"
    second.write_text(json.dumps(other))
    fig = plot_compare([eval_json, second], references=False)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["model (NK)", "model (B)"]
    model = report["results"][2]["metrics"]
    for ax, genes in zip(fig.axes, ("all", "degs")):
        heights = [p.get_height() for p in ax.patches[:2]]        # model (NK): mean, variance
        np.testing.assert_allclose(heights, [model[f"r2_mean_{genes}"]["mean"], model[f"r2_var_{genes}"]["mean"]])


# --------------------------------------------------------------------------- commands and files


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_regression_command_writes_each_format(pred, work, fmt):
    out = work / f"reg.{fmt}"
    res = invoke("plot", "regression", "--pred", pred, "--n-degs", "10", "-o", out)
    assert_ok(res)
    assert res.stdout.strip() == str(out)
    assert_image(out, fmt)


def test_each_plot_command_writes_an_image(pred, eval_json, trained_model, work):
    cases = {
        "gene.png": ["gene", "gene003", "--pred", pred, "--label", "trVAE"],
        "history.svg": ["history", "--model", trained_model],
        "history_positional.png": ["history", trained_model],      # the older form still works
        "compare.pdf": ["compare", eval_json],
        "latent.png": ["latent", "--model", trained_model, "--max-cells", "120"],
    }
    for name, args in cases.items():
        assert_ok(invoke("plot", *args, "-o", work / name))
        assert_image(work / name, name.rsplit(".", 1)[1])


def test_plot_errors_leave_no_file(pred, eval_json, trained_model, work):
    assert_user_error(invoke("plot", "regression", "--pred", pred, "-o", work / "x.jpg"), ".png, .pdf or .svg")
    assert_user_error(invoke("plot", "gene", "NOPE", "--pred", pred, "-o", work / "g.png"), "NOPE")
    assert_user_error(invoke("plot", "compare", trained_model / "config.json", "-o", work / "c.png"),
                      "not a trvae evaluate --json file")
    assert_user_error(invoke("plot", "history", work / "nope", "-o", work / "h.png"), "not found")
    assert_user_error(invoke("plot", "latent", "--model", trained_model, "--color", "batch", "-o", work / "l.png"),
                      "batch")
    assert list(work.iterdir()) == []
    (work / "h.png").write_bytes(b"old")
    assert_user_error(invoke("plot", "history", trained_model, "-o", work / "h.png"), "--force")
    assert (work / "h.png").read_bytes() == b"old"
    assert_ok(invoke("plot", "history", trained_model, "-o", work / "h.png", "--force"))
    assert_image(work / "h.png", "png")
    # more top DEGs (the default 100) than the 40 genes: all of them are the DEGs, said as evaluate says it
    res = invoke("plot", "regression", "--pred", pred, "-o", work / "r.png")
    assert_ok(res)
    assert "note: --n-degs 100 is more than the 40 genes: scoring the top 40" in res.stderr
    assert_image(work / "r.png", "png")
    from trvae_cli.errors import TrvaeNote
    from trvae_cli.plotting import plot_regression

    with pytest.warns(TrvaeNote, match="more than the 40 genes"):     # a notebook is told too
        plot_regression(pred, n_subsamples=0)


def test_plot_help_lists_subcommands():
    res = invoke("plot", "--help")
    assert_ok(res)
    listing = res.stdout.split("Commands:")[1].strip().splitlines()
    names = ("compare", "gene", "history", "images", "latent", "regression")
    assert [line.split()[0] for line in listing] == list(names)      # one line each
    for line in listing:                                             # a whole description, not cut short
        assert "..." not in line and "(Fig" not in line and line.rstrip().endswith("."), line
        assert len(line.split(None, 1)[1]) > 30, line


def test_plot_history_and_latent_take_the_model_the_same_way(trained_model, work, monkeypatch):
    for command in ("history", "latent"):
        res = invoke("plot", command, "--help")
        assert re.search(r"--model DIR +Model directory.*\[default: trvae_model\]", res.stdout), res.stdout
    assert_user_error(invoke("plot", "history", "--model", trained_model, work / "other", "-o", work / "h.png"),
                      "two model directories")
    assert_ok(invoke("plot", "history", "--model", trained_model, trained_model, "-o", work / "same.png"))
    (work / "trvae_model").symlink_to(trained_model)
    monkeypatch.chdir(work)                            # the default, like transform's
    assert_ok(invoke("plot", "history", "-o", work / "default.png"))
    assert_image(work / "default.png", "png")


def test_latent_uses_only_conditions_the_model_knows(trained_model, tiny_h5ad):
    from trvae_cli.api import embed

    emb = embed(trained_model, max_cells=200, seed=1)
    known = set(json.loads((trained_model / "config.json").read_text())["data"]["conditions"])
    assert set(emb.obs["condition"].astype(str)) <= known and emb.n_obs == 200
    assert emb.obsm["X_trvae"].shape == (200, 4) and emb.obsm["X_trvae_mmd"].shape == (200, 8)
    full = ad.read_h5ad(tiny_h5ad)
    assert emb.obs_names.isin(full.obs_names).all()
