"""``benchmarks/holdout.py``: the plan, one real (tiny) run, the CSV, resuming, the summary."""

import csv

import pytest

from cli_helpers import load_benchmark

@pytest.fixture(scope="module")
def holdout():
    return load_benchmark("holdout")


def test_plan_runs_the_tuned_cell_type_first(holdout):
    plan = holdout.run_plan(["B", "NK", "T"], ["trvae", "cvae"], [0, 1], "NK")
    assert plan[:4] == [("trvae", "NK", 0), ("cvae", "NK", 0), ("trvae", "NK", 1), ("cvae", "NK", 1)]
    assert plan[4:6] == [("trvae", "B", 0), ("cvae", "B", 0)]
    assert len(plan) == len(set(plan)) == 12


def test_one_run_writes_rows_resumes_and_summarises(holdout, tiny_h5ad, tmp_path, capsys):
    out = tmp_path / "bench.csv"
    args = ["--data", str(tiny_h5ad), "--out", str(out), "--work-dir", str(tmp_path / "work"),
            "--presets", "trvae", "--cell-types", "NK", "--seeds", "0", "--n-degs", "10", "--n-subsamples", "3",
            "--", "--epochs", "1", "--hidden", "16", "--mmd-dim", "8", "--latent-dim", "4", "--batch-size", "64",
            "--no-jit"]
    assert holdout.main(args) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["preset"] for r in rows] == ["identity", "mean shift", "trvae", "trvae (counterfactual:log1p)",
                                           "trvae (mean)"]
    model = rows[2]
    assert model["cell_type"] == "NK" and model["seed"] == "0" and model["epochs"] == "1"
    assert 0 <= float(model["r2_mean_degs"]) <= 1 and float(model["train_seconds"]) > 0
    assert not list((tmp_path / "work").glob("*.h5ad"))           # predictions removed, evaluations kept
    assert len(list((tmp_path / "work").glob("*.eval.json"))) == 1
    assert "| trvae | trvae (counterfactual:log1p) | trvae (mean) |" in out.with_suffix(".md").read_text()
    for suffix in (".md", ".meta.json"):
        assert out.with_suffix(suffix).exists()
    assert (tmp_path / "bench_heatmap.png").stat().st_size > 1000
    assert (tmp_path / "bench_compare_NK.png").stat().st_size > 1000
    assert "| NK |" in out.with_suffix(".md").read_text()

    capsys.readouterr()
    assert holdout.main(args) == 0                                 # resumed: nothing left to do
    assert "0 runs to do (5 rows already" in capsys.readouterr().err
    assert len(list(csv.DictReader(open(out)))) == 5

    with pytest.raises(SystemExit, match="other settings"):
        holdout.main(args[:-1] + ["32"])                         # other train options: refused


def test_rows_appended_to_an_older_file_keep_its_header(holdout, tmp_path):
    """A CSV written before a column was added: new rows follow its header, still aligned."""
    import csv

    path = tmp_path / "old.csv"
    path.write_text("preset,cell_type,epochs\ntrvae,NK,100\n")
    holdout.append_rows(path, [{"preset": "trvae", "cell_type": "B", "epochs": 90, "change_scale_degs": 0.9}],
                        holdout.COLUMNS)
    rows = list(csv.DictReader(open(path)))
    assert [r["cell_type"] for r in rows] == ["NK", "B"] and rows[1]["epochs"] == "90"
    assert list(rows[1]) == ["preset", "cell_type", "epochs"]
