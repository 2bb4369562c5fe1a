"""``trvae compare``: settings scored fold by fold from their validations, paired with the baseline.

The validations are written here as JSON with known figures (no training): what is tested is the
scoring (the decode each fold gets from the *other* folds), the paired statistics against NumPy and
SciPy, the recommendation rule, the refusals and the outputs.
"""

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from cli_helpers import assert_ok, assert_user_error, invoke
from trvae_cli import compare as C
from trvae_cli.errors import TrvaeError
from trvae_cli.validate import FORMAT as VALIDATION_FORMAT

FOLDS = ["T", "B", "NK", "Mono"]
TASK = {"data": "/data/kang.h5ad", "data_bytes": 123, "condition_key": "condition", "cell_type_key": "cell_type",
        "from": "control", "to": "stimulated", "exclude": [], "layer": None, "backed": False, "n_degs": 100,
        "n_subsamples": 30}


def _fold(cell_type, figures):
    """``figures``: {decode: (DEG-mean R², DEG-var R²)}."""
    methods = {d: {"kind": "prediction", "n_cells": 5,
                   "metrics": {"r2_mean_degs": {"mean": m, "sd": 0.01, "full": m},
                               "r2_var_degs": {"mean": v, "sd": 0.01, "full": v}, "change_pearson_all": 0.8}}
               for d, (m, v) in figures.items()}
    return {"cell_type": cell_type, "epochs_run": 100, "train_wall_seconds": 10.0, "methods": methods}


def write_validation(folder, per_fold, rule_per_fold=None, training=None, task=None, seeds=None, rule="data set"):
    """A validation.json: ``per_fold`` {cell type: {decode: (means, vars)}}; ``rule_per_fold`` {cell type: decode}."""
    folder.mkdir(parents=True)
    folds = [_fold(t, f) for t, f in per_fold.items()]
    chosen = {"chosen": "counterfactual", "by": "validation", "scores": {}, "folds": len(folds), "rule": rule,
              "rule_per_fold": {t: {rule: d} for t, d in (rule_per_fold or {}).items()}}
    report = {"format": VALIDATION_FORMAT, "format_version": 1,
              "settings": {**TASK, **(task or {}), "seed": 0, "seeds": seeds or [0], "decodes": ["counterfactual", "mean"]},
              "training": {"seed": 0, "dropout": 0.1, "condition_injection": "first", **(training or {})},
              "folds": folds, "chosen_decode": chosen}
    (folder / "validation.json").write_text(json.dumps(report))
    return folder


def _even(values, decode="counterfactual"):
    """Folds whose criterion under ``decode`` is ``values`` (means = vars = the value)."""
    return {t: {decode: (v, v), "mean" if decode == "counterfactual" else "counterfactual": (0.0, 0.0)}
            for t, v in zip(FOLDS, values)}


def _rules(decode="counterfactual"):
    return {t: decode for t in FOLDS}


def test_each_fold_is_scored_with_the_decode_it_gets_from_the_other_folds(tmp_path):
    # fold NK's own best is "mean" (0.9), but the rule, from the other folds, gave it the counterfactual (0.5)
    figures = {"T": {"counterfactual": (0.8, 0.6), "mean": (0.7, 0.5)},
               "B": {"counterfactual": (0.9, 0.7), "mean": (0.6, 0.4)},
               "NK": {"counterfactual": (0.6, 0.4), "mean": (0.95, 0.85)},
               "Mono": {"counterfactual": (0.5, 0.3), "mean": (0.8, 0.6)}}
    rules = {"T": "counterfactual", "B": "counterfactual", "NK": "counterfactual", "Mono": "mean"}
    s = C.setting_scores(json.loads(write_validation(tmp_path / "v", figures, rules).joinpath("validation.json")
                                    .read_text()))
    assert [r["decode"] for r in s["folds"]] == ["counterfactual", "counterfactual", "counterfactual", "mean"]
    assert [r["criterion"] for r in s["folds"]] == pytest.approx([0.7, 0.8, 0.5, 0.7])
    assert s["score"] == pytest.approx(np.mean([0.7, 0.8, 0.5, 0.7]))
    assert s["r2_mean_degs"] == pytest.approx(np.mean([0.8, 0.9, 0.6, 0.8]))
    assert "other folds" in s["decodes_by"]
    # without per-fold choices (fewer than 3 folds), the one chosen decode, said
    report = json.loads((tmp_path / "v" / "validation.json").read_text())
    report["chosen_decode"]["rule_per_fold"] = {}
    s = C.setting_scores(report)
    assert {r["decode"] for r in s["folds"]} == {"counterfactual"} and "fewer than 3 folds" in s["decodes_by"]


def test_paired_statistics_against_numpy_and_scipy():
    base, other = [0.80, 0.70, 0.75, 0.60, 0.90], [0.82, 0.69, 0.80, 0.66, 0.90]
    d = np.subtract(other, base)
    p = C.paired(base, other)
    assert p["mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert p["sd"] == pytest.approx(d.std(ddof=1), abs=1e-12)
    assert p["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(5), abs=1e-12)
    assert (p["wins"], p["losses"], p["n"]) == (3, 1, 5)                  # the tie counts for neither side
    assert p["sign_test_p"] == pytest.approx(binomtest(3, 4, 0.5).pvalue)
    assert C.paired([0.5, np.nan], [0.6, 0.7])["n"] == 1                   # an undefined fold is left out


def test_the_baseline_stays_unless_the_lead_exceeds_two_standard_errors(tmp_path):
    base = write_validation(tmp_path / "base", _even([0.80, 0.70, 0.75, 0.60]), _rules())
    noisy = write_validation(tmp_path / "noisy", _even([0.85, 0.66, 0.80, 0.58]), _rules(),
                             training={"condition_injection": "hidden"})
    clear = write_validation(tmp_path / "clear", _even([0.83, 0.74, 0.77, 0.64]), _rules(),
                             training={"dropout": 0.2}, seeds=[0, 1])
    report = C.compare([base, noisy, clear])
    by = {s["label"]: s for s in report["settings"]}
    assert by["#1 noisy"]["differences"] == ['condition_injection: "first" -> "hidden"']
    assert by["#2 clear"]["differences"] == ["dropout: 0.1 -> 0.2", "seeds: [0] -> [0, 1]"]
    lead = by["#2 clear"]["against_baseline"]
    assert lead["mean"] == pytest.approx(0.0325) and lead["wins"] == 4
    assert report["recommended"]["label"] == "#2 clear" and "more than 2 standard errors" in report["recommended"]["why"]
    assert report["recommended"]["training"]["dropout"] == 0.2 and report["recommended"]["path"] == str(clear)
    assert report["verdict"][1].endswith(": not distinguishable") and report["verdict"][2].endswith(": better beyond 2 se")
    assert report["verdict"][-1].startswith("recommended: #2 clear")
    # the noisy one alone: a higher mean, but within 2 standard errors of the paired differences
    report = C.compare([base, noisy])
    assert report["settings"][1]["score"] > report["settings"][0]["score"]
    assert report["recommended"]["label"] == "#0 base" and "not distinguishable" in report["recommended"]["why"]
    # a worse one: the baseline scores highest
    worse = write_validation(tmp_path / "worse", _even([0.70, 0.60, 0.65, 0.50]), _rules(), training={"dropout": 0.0})
    report = C.compare([base, worse])
    assert report["recommended"]["why"] == "the baseline scores highest" and report["verdict"][1].endswith("worse beyond 2 se")
    # a baseline undefined on every fold: nothing to pair, the baseline stays, said
    blank = write_validation(tmp_path / "blank", _even([np.nan] * 4), _rules())
    report = C.compare([blank, clear])
    assert report["settings"][0]["score"] is None and report["settings"][1]["against_baseline"]["n"] == 0
    assert report["recommended"]["label"] == "#0 blank" and "no fold scores both" in report["recommended"]["why"]


def test_a_model_directory_is_read_through_its_validation_folder(tmp_path):
    base = write_validation(tmp_path / "base", _even([0.8, 0.7, 0.75, 0.6]), _rules())
    write_validation(tmp_path / "model" / "validation", _even([0.8, 0.7, 0.75, 0.6]), _rules(), training={"dropout": 0.2})
    report = C.compare([base, tmp_path / "model"])
    assert report["settings"][1]["path"] == str(tmp_path / "model" / "validation")


def test_refusals_are_one_line(tmp_path):
    base = write_validation(tmp_path / "base", _even([0.8, 0.7, 0.75, 0.6]), _rules())
    other_task = write_validation(tmp_path / "to_ctrl", _even([0.8, 0.7, 0.75, 0.6]), _rules(), task={"to": "control"})
    other_folds = write_validation(tmp_path / "three", {t: f for t, f in _even([0.8, 0.7, 0.75]).items()}, _rules())
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "validation.json").write_text("{not json")
    cases = [((base,), "at least two"), ((base, base), "twice"), ((base, other_task), "another task", "to"),
             ((base, other_folds), "other folds"), ((base, tmp_path / "empty"), "no validation result"),
             ((base, tmp_path / "junk"), "unreadable")]
    for paths, *fragments in cases:
        with pytest.raises(TrvaeError):
            C.compare(paths)
        assert_user_error(invoke("compare", *paths), *fragments)


def test_cli_prints_the_verdict_and_writes_all_three_files(tmp_path):
    base = write_validation(tmp_path / "base", _even([0.8, 0.7, 0.75, 0.6]), _rules())
    other = write_validation(tmp_path / "other", _even([0.82, 0.71, 0.77, 0.62]), _rules(), training={"dropout": 0.2})
    out = tmp_path / "cmp"
    result = invoke("compare", base, other, "--out", out)
    assert_ok(result)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("#0 base (baseline): score 0.713") and lines[2].startswith("recommended:")
    assert sorted(p.name for p in out.iterdir()) == sorted(C.REPORT_NAMES)
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["format"] == C.FORMAT and saved["verdict"] == lines and saved["command"].startswith("trvae compare")
    assert saved["versions"]["trvae"] and set(saved["versions"]["validations"]) == {"#0 base", "#1 other"}
    rows = (out / "comparison.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * len(FOLDS) and rows[0].startswith("setting,path,cell_type,decode,criterion")
    assert "| **mean** | 0.713 | 0.730 |" in (out / "comparison.md").read_text()
    assert_user_error(invoke("compare", base, other, "--out", out), "exists", "--force")
    assert_ok(invoke("compare", base, other, "--out", out, "--force"))       # ours: replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert_user_error(invoke("compare", base, other, "--out", mine, "--force"), "did not write")
    assert (mine / "notes.txt").read_text() == "keep" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert_user_error(invoke("compare", base, other, "--out", base / "inside"), "input")
