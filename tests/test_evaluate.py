"""``trvae evaluate``: figures against independent computations, the JSON/CSV outputs, user errors."""

import csv
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from cli_helpers import assert_ok, assert_user_error, dense, invoke

from trvae_cli.evaluation import POINT_METRICS, R2_METRICS, evaluate
from trvae_cli.report import report_frame

FAST = ["--n-degs", "10", "--n-subsamples", "8", "-q"]


@pytest.fixture(scope="module")
def tiny(tiny_h5ad):
    return ad.read_h5ad(tiny_h5ad)


@pytest.fixture(scope="module")
def preds(trained_model, tmp_path_factory):
    """Three predictions of the held-out NK stimulated cells: the default (counterfactual), decoded means, samples."""
    d = tmp_path_factory.mktemp("preds")
    out = {}
    for key, extra in (("cf", ()), ("mean", ("--decode", "mean")), ("sample", ("--decode", "sample"))):
        path = d / f"nk_{key}.h5ad"
        assert_ok(invoke("transform", "--model", trained_model, "--from", "control", "--to", "stimulated",
                         "--cell-type", "NK", "--out", path, "-q", *extra))
        out[key] = path
    return out


@pytest.fixture(scope="module")
def report(preds):
    return evaluate([preds["cf"]], n_degs=10, n_subsamples=8)


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


def _groups(tiny, cell_type="NK"):
    ct = tiny.obs["cell_type"].astype(str).values
    cond = tiny.obs["condition"].astype(str).values
    x = tiny.X.toarray()
    return x[(ct == cell_type) & (cond == "control")], x[(ct == cell_type) & (cond == "stimulated")], x, ct, cond


def _r2(a, b):
    return np.corrcoef(a, b)[0, 1] ** 2


# --------------------------------------------------------------------------- figures


def test_provenance_fills_every_default(report, tiny_h5ad):
    t = report["task"]
    assert (t["from"], t["to"], t["cell_type"], t["condition_key"]) == ("control", "stimulated", "NK", "condition")
    assert t["real"] == str(tiny_h5ad.resolve())
    assert (t["n_real_source"], t["n_real_target"], t["n_genes"]) == (67, 121, 40)
    assert [r["label"] for r in report["results"]] == ["identity", "mean shift", "model"]


def test_r2_agrees_with_an_independent_implementation(report, preds, tiny):
    """The paper's R² (squared Pearson of per-gene means / variances), computed here with np.corrcoef."""
    import scanpy as sc

    src, dst, *_ = _groups(tiny)
    pred = dense(ad.read_h5ad(preds["cf"]).X)
    nk = tiny[tiny.obs["cell_type"] == "NK"].copy()
    sc.tl.rank_genes_groups(nk, "condition", groups=["stimulated"], reference="control", method="wilcoxon")
    degs = [list(tiny.var_names).index(g) for g in [row[0] for row in nk.uns["rank_genes_groups"]["names"]][:10]]
    assert report["degs"] == [tiny.var_names[i] for i in degs]
    m = {r["label"]: r["metrics"] for r in report["results"]}
    for label, x in (("model", pred), ("identity", src)):
        assert m[label]["r2_mean_all"]["full"] == pytest.approx(_r2(dst.mean(0), x.mean(0)), abs=5e-4)
        assert m[label]["r2_var_all"]["full"] == pytest.approx(_r2(dst.var(0), x.var(0)), abs=5e-4)
        assert m[label]["r2_mean_degs"]["full"] == pytest.approx(_r2(dst.mean(0)[degs], x.mean(0)[degs]), abs=5e-4)
        assert m[label]["r2_var_degs"]["full"] == pytest.approx(_r2(dst.var(0)[degs], x.var(0)[degs]), abs=5e-4)
    p, r = (pred.mean(0) - src.mean(0))[degs], (dst.mean(0) - src.mean(0))[degs]
    assert m["model"]["change_scale_degs"] == pytest.approx(float(p @ r / (r @ r)), rel=1e-3, abs=1e-4)


def test_mean_shift_reference_is_computed_from_the_other_cell_types(report, tiny):
    src, dst, x, ct, cond = _groups(tiny)
    delta = x[(ct != "NK") & (cond == "stimulated")].mean(0) - x[(ct != "NK") & (cond == "control")].mean(0)
    shifted = np.maximum(src + delta, 0)
    m = {r["label"]: r["metrics"] for r in report["results"]}["mean shift"]
    assert m["r2_mean_all"]["full"] == pytest.approx(_r2(dst.mean(0), shifted.mean(0)), abs=5e-4)
    assert m["change_pearson_all"] == pytest.approx(
        np.corrcoef(shifted.mean(0) - src.mean(0), dst.mean(0) - src.mean(0))[0, 1], abs=5e-4)
    assert report["results"][0]["metrics"]["change_scale_degs"] == 0.0     # the identity moves nothing


def test_every_figure_is_present_and_in_range(report):
    for r in report["results"]:
        for name in R2_METRICS:
            v = r["metrics"][name]
            assert set(v) == {"mean", "sd", "full", "n_subsamples"} and v["n_subsamples"] == 8
            assert 0 <= v["mean"] <= 1 and v["sd"] >= 0
        for name in POINT_METRICS:
            assert name in r["metrics"]
        assert r["metrics"]["mmd_pca"] >= 0 and r["metrics"]["edistance_pca"] >= 0
    identity = report["results"][0]["metrics"]
    assert identity["edistance_ratio"] == pytest.approx(1.0)
    assert np.isnan(identity["change_pearson_degs"]) and np.isnan(identity["deg_recovery"])
    model = report["results"][2]["metrics"]
    assert 0 <= model["deg_recovery"] <= 1


def test_full_subsamples_reproduce_the_full_estimate(preds):
    rep = evaluate([preds["cf"]], n_degs=10, n_subsamples=2, subsample_fraction=1.0)
    for r in rep["results"]:
        for name in R2_METRICS:
            v = r["metrics"][name]
            assert v["mean"] == pytest.approx(v["full"], abs=1e-12) and v["sd"] == pytest.approx(0, abs=1e-12)


def test_subsampling_is_seeded_and_stable_when_predictions_are_added(preds, report):
    again = evaluate([preds["cf"]], n_degs=10, n_subsamples=8)
    other_seed = evaluate([preds["cf"]], n_degs=10, n_subsamples=8, seed=1)
    both = evaluate([preds["cf"], preds["sample"]], labels=["cf", "sample"], n_degs=10, n_subsamples=8)
    values = [r["metrics"]["r2_var_all"]["mean"] for r in report["results"]]
    assert values == [r["metrics"]["r2_var_all"]["mean"] for r in again["results"]]
    assert values != [r["metrics"]["r2_var_all"]["mean"] for r in other_seed["results"]]
    assert values == [r["metrics"]["r2_var_all"]["mean"] for r in both["results"][:3]]
    assert [r["label"] for r in both["results"]] == ["identity", "mean shift", "cf", "sample"]


def test_without_a_cell_type_the_mean_shift_is_skipped(preds, tiny_h5ad):
    """A prediction without provenance: every task argument explicit; no held-out type, no mean shift."""
    plain = ad.read_h5ad(preds["cf"])
    del plain.uns["trvae"]
    path = preds["cf"].with_name("plain.h5ad")
    plain.write_h5ad(path)
    rep = evaluate([path], tiny_h5ad, condition_key="condition", source="control", target="stimulated",
                   n_degs=10, n_subsamples=4)
    assert [r["label"] for r in rep["results"]] == ["identity", "plain"]
    assert "mean shift" in rep["skipped"]
    assert rep["task"]["n_real_target"] == 411


# --------------------------------------------------------------------------- CLI and outputs


def test_cli_pred_alone_writes_json_and_csv(preds, work):
    res = invoke("evaluate", "--pred", preds["cf"], "--n-degs", "10", "--n-subsamples", "8",
                 "--json", work / "e.json", "--csv", work / "e.csv")
    assert_ok(res)
    assert res.stdout.split() == [str(work / "e.json"), str(work / "e.csv")]
    assert "R² mean, top 10 DEGs" in res.stderr and "mean shift" in res.stderr
    rep = json.loads((work / "e.json").read_text())
    assert rep["format"] == "trvae-evaluation" and rep["format_version"] == 1
    assert set(rep) >= {"created", "command", "task", "settings", "degs", "results", "versions", "skipped"}
    assert rep["command"].startswith("trvae evaluate --pred")
    assert rep["versions"]["scanpy"] and rep["versions"]["trvae"]
    assert rep["results"][0]["metrics"]["deg_recovery"] is None           # NaN is written as null
    rows = list(csv.DictReader(open(work / "e.csv")))
    assert len(rows) == 3 * (len(R2_METRICS) + len(POINT_METRICS))
    assert set(rows[0]) == {"label", "kind", "cell_type", "from", "to", "metric", "value", "sd", "full",
                            "n_cells", "path"}
    r2 = [r for r in rows if r["label"] == "model" and r["metric"] == "r2_mean_degs"][0]
    assert float(r2["value"]) == pytest.approx(rep["results"][2]["metrics"]["r2_mean_degs"]["mean"])


def test_cli_json_to_stdout(preds):
    res = invoke("evaluate", "--pred", preds["cf"], "--json", "-", *FAST)
    assert_ok(res)
    assert json.loads(res.stdout)["results"][2]["label"] == "model"


def test_report_frame_is_tidy(report):
    df = report_frame(report)
    assert len(df) == 3 * (len(R2_METRICS) + len(POINT_METRICS))
    assert df.groupby(["label", "metric"]).size().max() == 1


def test_several_predictions_with_labels(preds, work):
    res = invoke("evaluate", "--pred", preds["cf"], "--label", "trVAE mean", "--pred", preds["sample"],
                 "--json", work / "e.json", *FAST)
    assert_ok(res)
    labels = [r["label"] for r in json.loads((work / "e.json").read_text())["results"]]
    assert labels == ["identity", "mean shift", "trVAE mean", "model (sample)"]


# --------------------------------------------------------------------------- user errors: one line, no file


def _variant(preds, work, name, change):
    a = ad.read_h5ad(preds["cf"])
    a = change(a) or a
    path = work.parent / f"{name}.h5ad"
    a.write_h5ad(path)
    return path


@pytest.mark.parametrize("extra, fragments", [
    (["--cell-type", "Neutrophil"], ["Neutrophil"]),
    (["--to", "inhibited-typo"], ["inhibited-typo"]),
    (["--condition", "nope"], ["nope"]),
    (["--real", "missing.h5ad"], ["not found"]),
])
def test_bad_arguments(preds, work, extra, fragments):
    args = ["--n-degs", "10", *extra] if "--n-degs" not in extra else extra
    assert_user_error(invoke("evaluate", "--pred", preds["cf"], "--json", work / "e.json", "-q", *args),
                      *fragments)
    assert list(work.iterdir()) == []


def test_more_degs_than_genes_scores_them_all_with_a_note(preds, work):
    """A small panel (here 40 genes) at evaluate's default of 100 DEGs: every gene is scored, and the
    note says so (as validate does); it used to be an error about an option the user never gave."""
    res = invoke("evaluate", "--pred", preds["cf"], "--n-subsamples", "4", "--json", work / "e.json")
    assert_ok(res)
    assert "note: --n-degs 100 is more than the 40 genes: scoring the top 40" in res.stderr
    rep = json.loads((work / "e.json").read_text())
    assert rep["settings"]["n_degs"] == 40 and len(rep["degs"]) == 40
    assert any("scoring the top 40" in n for n in rep["notes"])


def test_gene_set_mismatch(preds, work):
    def rename(a):
        a.var_names = [f"other{i}" if i < 3 else g for i, g in enumerate(a.var_names)]
    path = _variant(preds, work, "renamed", rename)
    assert_user_error(invoke("evaluate", "--pred", path, "--json", work / "e.json", *FAST),
                      "gene set mismatch", "3 of")
    assert list(work.iterdir()) == []


def test_two_predictions_with_different_genes(preds, work):
    path = _variant(preds, work, "fewer", lambda a: a[:, 2:].copy())
    assert_user_error(invoke("evaluate", "--pred", preds["cf"], "--pred", path, *FAST), "gene set mismatch")


def test_fewer_than_two_predicted_cells(preds, work):
    path = _variant(preds, work, "one_cell", lambda a: a[:1].copy())
    assert_user_error(invoke("evaluate", "--pred", path, "--csv", work / "e.csv", *FAST), "1 cell", "at least 2")
    assert list(work.iterdir()) == []


def test_fewer_than_two_real_cells(preds, tiny, work):
    keep = ~((tiny.obs["cell_type"] == "NK") & (tiny.obs["condition"] == "stimulated")).values
    keep[np.flatnonzero(~keep)[0]] = True
    real = work.parent / "one_real.h5ad"
    tiny[keep].copy().write_h5ad(real)
    assert_user_error(invoke("evaluate", "--pred", preds["cf"], "--real", real, *FAST),
                      "stimulated", "1 cell")


def test_nan_in_prediction(preds, work):
    def poison(a):
        a.X = dense(a.X).copy()
        a.X[0, 0] = np.nan
    path = _variant(preds, work, "nan", poison)
    assert_user_error(invoke("evaluate", "--pred", path, *FAST), "NaN")


def test_prediction_of_another_cell_type(preds, work):
    assert_user_error(invoke("evaluate", "--pred", preds["cf"], "--cell-type", "B", *FAST), "'NK'", "'B'")


def test_prediction_without_provenance_needs_real(preds, work):
    def strip(a):
        del a.uns["trvae"]
    path = _variant(preds, work, "bare", strip)
    assert_user_error(invoke("evaluate", "--pred", path, *FAST), "--real")


def test_output_exists_without_force(preds, work):
    (work / "e.json").write_text("{}")
    assert_user_error(invoke("evaluate", "--pred", preds["cf"], "--json", work / "e.json", *FAST), "--force")
    assert (work / "e.json").read_text() == "{}"


def test_sparse_prediction_scores_like_dense(preds, report, work):
    path = _variant(preds, work, "sparse", lambda a: setattr(a, "X", sp.csr_matrix(a.X)))
    rep = evaluate([path], n_degs=10, n_subsamples=8)
    a = report["results"][2]["metrics"]
    b = rep["results"][2]["metrics"]
    for name in R2_METRICS:
        assert b[name]["mean"] == pytest.approx(a[name]["mean"], abs=1e-6)


def test_condition_absent_from_real(preds, tiny_h5ad, work):
    def strip(a):
        del a.uns["trvae"]
    path = _variant(preds, work, "bare2", strip)
    assert_user_error(invoke("evaluate", "--pred", path, "--real", tiny_h5ad, "--condition", "condition",
                             "--from", "control", "--to", "washed", *FAST), "washed", "condition")


def test_real_data_with_other_gene_order_and_extra_genes_scores_the_same(preds, report, tiny, work):
    rng = np.random.default_rng(5)
    order = rng.permutation(tiny.n_vars)
    x = np.hstack([tiny.X.toarray()[:, order], rng.random((tiny.n_obs, 2)).astype(np.float32)])
    shuffled = ad.AnnData(X=sp.csr_matrix(x), obs=tiny.obs.copy())
    shuffled.var_names = [*tiny.var_names[order], "extra1", "extra2"]
    path = work.parent / "shuffled_real.h5ad"
    shuffled.write_h5ad(path)
    rep = evaluate([preds["cf"]], path, n_degs=10, n_subsamples=8)
    assert rep["degs"] == report["degs"] and rep["task"]["n_genes"] == 40
    for a, b in zip(report["results"], rep["results"]):
        for name in R2_METRICS:
            assert b["metrics"][name]["mean"] == pytest.approx(a["metrics"][name]["mean"], abs=1e-9)


def test_in_sample_target_cells_are_noted(trained_model, preds, work):
    """The model held out NK stimulated cells but trained on B stimulated ones: scoring B is in-sample."""
    held_out = evaluate([preds["cf"]], n_degs=10, n_subsamples=2)
    assert held_out["notes"] == [] and held_out["results"][-1]["in_sample"] is False
    b = work / "b.h5ad"
    assert_ok(invoke("transform", "--model", trained_model, "--from", "control", "--to", "stimulated",
                     "--cell-type", "B", "--out", b, "-q"))
    result = invoke("evaluate", "--pred", b, "--n-degs", "10", "--n-subsamples", "2")
    assert_ok(result)
    assert "note: model: the real B stimulated cells scored here were in its model's training data" in result.stderr
    assert "in-sample" in result.stderr
    rep = evaluate([b], n_degs=10, n_subsamples=2)
    assert rep["results"][-1]["in_sample"] is True and rep["results"][0]["in_sample"] is None   # identity: no model
