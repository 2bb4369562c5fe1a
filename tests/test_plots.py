"""``trvae plot``: each figure's content (checked on the Figure objects) and each command's file."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import anndata as ad
import numpy as np
import pytest
from cli_helpers import assert_ok, assert_user_error, invoke

from trvae_cli.plotting import plot_compare, plot_gene, plot_history, plot_latent, plot_regression
from trvae_cli.plotting.figures import history_figure

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


def test_regression_has_a_point_per_gene_and_labels_the_top_degs(pred, tiny_h5ad):
    fig = plot_regression(pred, n_degs=10, n_label=4)
    (ax,) = fig.axes
    assert n_points(ax) == 40                     # every gene once: other, DEG, top-DEG layers
    assert len(ax.texts) == 4
    assert "R² all genes = " in ax.get_title() and "top 10 DEGs = " in ax.get_title()
    assert "mean" in ax.get_xlabel() and "stimulated" in ax.get_xlabel()
    var = plot_regression(pred, n_degs=10, variance=True)
    assert "variance" in var.axes[0].get_xlabel() and len(var.axes[0].texts) == 10


def test_gene_has_a_violin_per_group(pred):
    fig = plot_gene("gene000", [pred, pred], labels=["a", "b"])
    (ax,) = fig.axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) == 4 and ticks[0].startswith("real control") and ticks[1].startswith("real stimulated")
    assert ticks[2].startswith("a") and ticks[3].startswith("b")
    assert "gene000" in ax.get_title()


def test_latent_has_z_and_mmd_panels_by_condition_and_cell_type(trained_model):
    fig = plot_latent(trained_model, max_cells=150, seed=0)
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("latent z") and titles[2].startswith("MMD layer")
    assert "condition" in titles[0] and "cell_type" in titles[1]
    for ax, n_labels in zip(fig.axes, [3, 4, 3, 4]):   # 3 conditions, 4 cell types
        assert n_points(ax) == 150
        assert len(ax.get_legend().get_texts()) == n_labels


def test_history_has_a_panel_per_term_with_validation(trained_model):
    fig = plot_history(trained_model)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "reconstruction", "kl", "mmd", "learning_rate"]
    assert [len(ax.lines) for ax in fig.axes[:4]] == [3, 3, 3, 3]   # training, validation, best epoch


def test_history_figure_without_validation():
    rows = [{"epoch": i + 1, "loss": 10.0 / (i + 1)} for i in range(5)]
    fig = history_figure(rows, ["loss"], best_epoch=5)
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2


def test_compare_has_a_bar_per_prediction_and_metric(eval_json, tmp_path):
    fig = plot_compare([eval_json])
    (ax,) = fig.axes
    assert len(ax.patches) == 3 * 4              # identity, mean shift, model x 4 R² figures
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["identity", "mean shift", "model"]
    report = json.loads(eval_json.read_text())
    other = json.loads(json.dumps(report))
    other["task"]["cell_type"] = "B"
    second = tmp_path / "b.json"
    second.write_text(json.dumps(other))
    fig = plot_compare([eval_json, second], references=False)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["model (NK)", "model (B)"]
    heights = [p.get_height() for p in fig.axes[0].patches[:4]]
    means = [report["results"][2]["metrics"][m]["mean"] for m in
             ("r2_mean_all", "r2_mean_degs", "r2_var_all", "r2_var_degs")]
    np.testing.assert_allclose(heights, means)


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
        "history.svg": ["history", trained_model],
        "compare.pdf": ["compare", eval_json],
        "latent.png": ["latent", "--model", trained_model, "--max-cells", "120"],
    }
    for name, args in cases.items():
        assert_ok(invoke("plot", *args, "-o", work / name))
        assert_image(work / name, name.rsplit(".", 1)[1])


def test_plot_errors_leave_no_file(pred, eval_json, trained_model, work):
    assert_user_error(invoke("plot", "regression", "--pred", pred, "-o", work / "x.jpg"), ".png, .pdf or .svg")
    assert_user_error(invoke("plot", "gene", "NOPE", "--pred", pred, "-o", work / "g.png"), "NOPE")
    assert_user_error(invoke("plot", "regression", "--pred", pred, "-o", work / "r.png"), "--n-degs", "40")
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


def test_plot_help_lists_subcommands():
    res = invoke("plot", "--help")
    assert_ok(res)
    for name in ("regression", "gene", "latent", "history", "compare"):
        assert name in res.stdout


def test_latent_uses_only_conditions_the_model_knows(trained_model, tiny_h5ad):
    from trvae_cli.api import embed

    emb = embed(trained_model, max_cells=200, seed=1)
    known = set(json.loads((trained_model / "config.json").read_text())["data"]["conditions"])
    assert set(emb.obs["condition"].astype(str)) <= known and emb.n_obs == 200
    assert emb.obsm["X_trvae"].shape == (200, 4) and emb.obsm["X_trvae_mmd"].shape == (200, 8)
    full = ad.read_h5ad(tiny_h5ad)
    assert emb.obs_names.isin(full.obs_names).all()
