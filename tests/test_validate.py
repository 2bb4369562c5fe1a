"""``trvae validate`` and ``trvae train --validate`` on the tiny data: the folds, the verdict against a
NumPy reference, resuming, refusals, outputs never half-written, and ``transform --decode auto``.

One validation run is shared by the module (2 folds at once); the train --validate test resumes a copy
of it with one fold file deleted, so only that fold trains again.
"""

import csv
import errno
import json
import shutil
import subprocess

import anndata as ad
import click
import numpy as np
import pytest
from cli_helpers import assert_ok, assert_user_error, invoke

from trvae_cli import validate as V
from trvae_cli import validation_report as R
from trvae_cli.cli import SectionedCommand, main

TINY = ["--epochs", "2", "--hidden", "16", "--mmd-dim", "8", "--latent-dim", "4", "--batch-size", "64", "--no-jit"]
FAST = ["--n-degs", "10", "--n-subsamples", "10"]
KEYS = ["--condition", "condition", "--cell-type-key", "cell_type"]
TASK = [*KEYS, "--from", "control", "--to", "stimulated"]
METHODS = ["identity", "mean shift", "counterfactual", "mean"]


@pytest.fixture(scope="module")
def partial_data(tiny_h5ad, tmp_path_factory):
    """The tiny data without NK's control and Mono's stimulated cells: only T and B have both conditions."""
    adata = ad.read_h5ad(tiny_h5ad)
    ct, cond = adata.obs["cell_type"].astype(str), adata.obs["condition"].astype(str)
    drop = ((ct == "NK") & (cond == "control")) | ((ct == "Mono") & (cond == "stimulated"))
    path = tmp_path_factory.mktemp("partial") / "partial.h5ad"
    adata[~drop.values].copy().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def run(partial_data, tmp_path_factory):
    """(validation folder, CliRunner result) of one validate run, both folds at once."""
    out = tmp_path_factory.mktemp("validate") / "val"
    result = invoke("validate", partial_data, *TASK, "--out", out, "--jobs", "2", *FAST, *TINY)
    assert_ok(result)
    return out, result


def folds_of(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "folds").glob("*.json") if p.stem != "settings"}


def leftovers(folder):
    return [p for p in folder.parent.rglob("*") if ".trvae-" in p.name and folder.name in str(p)]


# --------------------------------------------------------------------------- the run

def test_a_fold_runs_this_code_whatever_the_working_directory_holds(tmp_path):
    """A ``trvae_cli`` folder in the working directory (another checkout) was imported by the fold
    processes (``python -m`` puts the working directory first), so the folds trained other code."""
    decoy = tmp_path / "trvae_cli"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("print('DECOY')\nraise SystemExit(3)\n")
    (decoy / "validate.py").write_text("")
    command = V.fold_command({})[:-3] + ["-c", "import trvae_cli; print(trvae_cli.__file__)"]
    out = subprocess.run(command, cwd=tmp_path, env=V._fold_env(1), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == V.__file__.replace("validate.py", "__init__.py")
    assert V.fold_command({"a": 1})[-3:] == ["-m", "trvae_cli.validate", '{"a": 1}']



def test_folds_are_listed_run_and_written(run):
    out, result = run
    assert result.stdout.split() == [str(out / n) for n in V.REPORT_NAMES]      # stdout: the paths, nothing else
    err = result.stderr
    assert "validate trains 2 models (one per cell type with both conditions: T, B)" in err
    assert "about 2 times one `trvae train`" in err and "2 at a time, 1 thread each" in err
    assert "skipping NK: no control cells" in err and "skipping Mono: no stimulated cells" in err
    assert err.index("validate trains") < err.index("[1/2]")                       # the cost is said first
    report = json.loads((out / "validation.json").read_text())
    assert report["format"] == V.FORMAT
    assert report["cell_types"]["folds"] == ["T", "B"]
    assert report["cell_types"]["skipped"] == {"NK": "no control cells", "Mono": "no stimulated cells"}
    assert report["settings"]["training"]["epochs"] == 2 and report["settings"]["decodes"] == ["counterfactual", "mean"]
    assert report["training"] == report["settings"]["training"]
    assert all(report["versions"].get(k) for k in ("trvae", "keras", "backend_version", "numpy", "scanpy"))
    folds = folds_of(out)
    assert sorted(folds) == ["B", "T"]
    for t, fold in folds.items():
        assert fold["evaluation"]["task"]["cell_type"] == t
        labels = [r["label"] for r in fold["evaluation"]["results"]]
        assert labels == METHODS
        assert all(r["in_sample"] is False for r in fold["evaluation"]["results"] if r["kind"] == "prediction")
        model_cmd = fold["evaluation"]["results"][2]["path"]
        assert f"models/{t}/" in model_cmd
    assert not (out / "models").exists()                 # models deleted once scored (no --keep-models)
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["B.log", "T.log"]
    rows = list(csv.DictReader(open(out / "validation.csv")))
    assert [(r["cell_type"], r["method"]) for r in rows] == [(t, m) for t in ("T", "B") for m in METHODS]
    assert float(rows[2]["r2_mean_degs"]) == pytest.approx(
        folds["T"]["evaluation"]["results"][2]["metrics"]["r2_mean_degs"]["mean"])
    md = (out / "validation.md").read_text()
    assert "| T |" in md and "| B |" in md and all(line in md for line in report["verdict"])
    assert (out / "validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert leftovers(out) == []


def test_verdict_is_the_mean_and_sd_over_the_fold_files(run):
    out, result = run
    report = json.loads((out / "validation.json").read_text())
    folds = [folds_of(out)[t] for t in ("T", "B")]

    def value(fold, method, metric):
        r = next(r for r in fold["evaluation"]["results"] if r["label"] == method)
        v = r["metrics"][metric]
        return v["mean"] if isinstance(v, dict) else v

    scores = {}
    for decode in ("counterfactual", "mean"):
        for metric, what, of in R.VERDICT_METRICS:
            xs = np.array([value(f, decode, metric) for f in folds])
            shift = np.array([value(f, "mean shift", metric) for f in folds])
            entry = report["summary"][decode][metric]
            assert entry["mean"] == pytest.approx(xs.mean(), abs=1e-12)
            assert entry["sd"] == pytest.approx(xs.std(ddof=1), abs=1e-12)
            assert entry["beats_mean_shift"] == int((xs > shift).sum()) and entry["compared_mean_shift"] == 2
            line = (f"{decode}: expected {what} on an unseen cell type ({of}): {xs.mean():.3f} ± {xs.std(ddof=1):.3f} "
                    f"over 2 cell types; beats the mean shift on {int((xs > shift).sum())} of 2")
            assert line in report["verdict"] and line in result.stderr
        scores[decode] = np.mean([(value(f, decode, "r2_mean_degs") + value(f, decode, "r2_var_degs")) / 2
                                  for f in folds])
        sizes = np.array([value(f, decode, "change_scale_degs") for f in folds])
        shift = np.mean([value(f, "mean shift", "change_scale_degs") for f in folds])
        line = (f"{decode}: expected size of the change on an unseen cell type (top DEGs, 1 = the real size): "
                f"{sizes.mean():.2f} ± {sizes.std(ddof=1):.2f} over 2 cell types; the mean shift's {shift:.2f}")
        assert line in report["verdict"] and line in result.stderr
        assert "beats_mean_shift" not in report["summary"][decode]["change_scale_degs"]
    choice = report["chosen_decode"]
    assert choice["scores"] == pytest.approx(scores, abs=1e-12)
    assert choice["chosen"] == max(scores, key=scores.get) and choice["folds"] == 2 and choice["by"] == "validation"
    assert f"best decode across the folds: {choice['chosen']}" in result.stderr


def test_a_tie_goes_to_counterfactual():
    def fold(cf, mean):
        results = [{"label": label, "metrics": {"r2_mean_degs": {"mean": v}, "r2_var_degs": {"mean": v},
                                                 "change_pearson_all": v}}
                   for label, v in (("identity", 0.1), ("mean shift", 0.2), ("mean", mean), ("counterfactual", cf))]
        return {"evaluation": {"results": results}}

    tied = R.summarize([fold(0.5, 0.5), fold(0.7, 0.7)], ["mean", "counterfactual"])
    assert tied["chosen_decode"]["chosen"] == "counterfactual"
    single = R.summarize([fold(0.5, 0.9)], ["mean", "counterfactual"])
    assert single["chosen_decode"]["chosen"] == "mean"
    assert single["summary"]["mean"]["r2_mean_degs"]["sd"] is None          # one fold: no spread
    assert "0.900 over 1 cell type; beats the mean shift on 1 of 1" in single["verdict"][0]


# --------------------------------------------------------------------------- refusals


def test_other_settings_are_refused_naming_the_difference(run, partial_data):
    out, _ = run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    line = assert_user_error(invoke("validate", partial_data, *TASK, "--out", out, *FAST, *TINY[:1], "3", *TINY[2:]),
                             "other settings", "training.epochs 2 (recorded) vs 3 (now)", "--force")
    assert "decodes" not in line
    assert_user_error(invoke("validate", partial_data, *TASK, "--out", out, "--decodes", "mean", *FAST, *TINY),
                      'decodes ["counterfactual", "mean"] (recorded) vs ["mean"] (now)')
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_foreign_folders_and_impossible_tasks_are_refused(partial_data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for extra in ((), ("--force",)):
        assert_user_error(invoke("validate", partial_data, *TASK, "--out", mine, *extra, *TINY), "did not write")
    assert (mine / "notes.txt").read_text() == "mine"
    assert_user_error(invoke("validate", partial_data, *TASK, "--cell-types", "NK", "--out", tmp_path / "v", *TINY),
                      "none of --cell-types NK", "NK: no control cells")
    assert_user_error(invoke("validate", partial_data, *KEYS, "--from", "control", "--to", "inhibited",
                             "--cell-types", "Elf", "--out", tmp_path / "v"), "'Elf' is not a value")
    one = tmp_path / "one.h5ad"           # T and NK: only T has control cells
    adata = ad.read_h5ad(partial_data)
    adata[adata.obs["cell_type"].isin(["T", "NK"]).values].copy().write_h5ad(one)
    assert_user_error(invoke("validate", one, *TASK, "--out", tmp_path / "v"), "at least 2 cell types", "has 1 (T)")
    assert_user_error(invoke("validate", partial_data, *TASK, "--out", partial_data.parent), "the input")
    assert_user_error(invoke("train", partial_data, *KEYS, "--from", "control", "--out", tmp_path / "m"),
                      "--from only apply with --validate")
    assert not (tmp_path / "v").exists() and not (tmp_path / "m").exists()


def test_outputs_are_never_half_written(run, partial_data, tmp_path, monkeypatch):
    """A disk that fills while the reports are written leaves the previous ones, whole, and no temporary."""
    out = tmp_path / "val"
    shutil.copytree(run[0], out)
    before = {n: (out / n).read_bytes() for n in V.REPORT_NAMES}

    class FullDisk:
        def savefig(self, path, **kwargs):
            with open(path, "wb") as fh:
                fh.write(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(R, "validation_figure", lambda report: FullDisk())
    result = invoke("validate", partial_data, *TASK, "--out", out, *FAST, *TINY)     # every fold done: no training
    assert result.exit_code == 74, result.output
    assert "No space left on device" in result.stderr and result.stdout == ""
    assert {n: (out / n).read_bytes() for n in V.REPORT_NAMES} == before
    assert leftovers(out) == []


# --------------------------------------------------------------------------- train --validate, --decode auto


def test_train_validate_resumes_the_folds_then_decode_auto_uses_them(run, partial_data, tmp_path):
    model = tmp_path / "model"
    side = V.side_folder(model)
    shutil.copytree(run[0], side)          # an interrupted train --validate: fold B never finished
    (side / "folds" / "B.json").unlink()
    t_file = side / "folds" / "T.json"
    t_stat, t_text = t_file.stat().st_mtime_ns, t_file.read_text()
    result = invoke("train", partial_data, *KEYS, "--validate", "--from", "control", "--to", "stimulated",
                    *FAST, *TINY, "--out", model, "--log-format", "text")
    assert_ok(result)
    assert result.stdout.split() == [str(model)]
    assert "1 of 2 folds already done (T)" in result.stderr and "[2/2] B:" in result.stderr
    assert "T: trained" not in result.stderr                         # only the missing fold ran again
    assert not side.exists()
    validation = model / "validation"
    assert (validation / "folds" / "T.json").read_text() == t_text
    assert (validation / "folds" / "T.json").stat().st_mtime_ns == t_stat
    assert (validation / "folds" / "B.json").is_file()
    report = json.loads((validation / "validation.json").read_text())
    cfg = json.loads((model / "config.json").read_text())
    assert report["training"] == cfg["training"] and cfg["data"]["exclude"] == []
    chosen = report["chosen_decode"]

    expected = {}

    def choice_of(*args):
        pred = tmp_path / f"p{len(list(tmp_path.glob('p*.h5ad')))}.h5ad"
        res = invoke("transform", *args, "--out", pred)
        assert_ok(res)
        uns = ad.read_h5ad(pred).uns["trvae"]
        expected["last"] = uns.get("expected")
        return uns.get("decode_choice"), uns["decode"], res.stderr

    for extra in ((), ("--decode", "auto")):     # a validated model: auto is the default
        choice, decode, err = choice_of("--model", model, "--from", "control", "--to", "stimulated", "--cell-type", "T",
                                        *extra)
        assert choice["by"] == "validation" and choice["chosen"] == decode == chosen["chosen"]
        assert int(choice["folds"]) == 2
        assert {k: float(v) for k, v in choice["scores"].items()} == pytest.approx(chosen["scores"])
        assert f"--decode auto: {chosen['chosen']}, the best over the model's 2 held-out cell types" in err
        # how far to trust it: the verdict's figures for this decode, and T's own fold (T was held out there)
        got, summary = expected["last"], report["summary"][decode]
        assert got["decode"] == decode and int(got["folds"]) == 2
        for metric in ("r2_mean_degs", "r2_var_degs", "change_pearson_all"):
            assert float(got["over_folds"][metric]["mean"]) == pytest.approx(summary[metric]["mean"])
            assert float(got["over_folds"][metric]["sd"]) == pytest.approx(summary[metric]["sd"])
        own = {f["cell_type"]: f for f in report["folds"]}["T"]["methods"][decode]["metrics"]
        assert got["own_fold"]["cell_type"] == "T" and "nearest" not in got
        assert float(got["own_fold"]["r2_mean_degs"]) == pytest.approx(own["r2_mean_degs"]["mean"])
        m = summary["r2_mean_degs"]
        assert (f"expected quality, from the model's validation ({decode}, over 2 held-out cell types): "
                f"R² of DEG means {m['mean']:.3f} ± {m['sd']:.3f}") in err
        assert f"; T, its own fold: {own['r2_mean_degs']['mean']:.3f} / " in err
    choice, decode, _ = choice_of("--model", model, "--from", "stimulated", "--to", "control", "--decode", "auto")
    assert choice["by"] == "default" and decode == "counterfactual" and "not stimulated -> control" in choice["reason"]
    choice, decode, _ = choice_of("--model", model, "--from", "control", "--to", "stimulated", "--decode", "mean")
    assert choice is None and decode == "mean"                       # an explicit mode is just that
    assert expected["last"]["decode"] == "mean" and "own_fold" not in expected["last"]   # ... with its figures
    assert float(expected["last"]["over_folds"]["r2_var_degs"]["mean"]) == pytest.approx(
        report["summary"]["mean"]["r2_var_degs"]["mean"])
    # the folds' seed is a replicate (train --validate --seeds 1,2 trains the model at --seed): another seed
    # still takes the validation's choice, another setting does not
    def direct(training):
        return V.decode_choice(model, {**cfg, "training": training}, source="control", target="stimulated",
                               default="counterfactual")
    assert direct({**cfg["training"], "seed": cfg["training"]["seed"] + 7})["by"] == "validation"
    other = direct({**cfg["training"], "epochs": cfg["training"]["epochs"] + 1})
    assert other["by"] == "default" and "training settings are not the model's" in other["reason"]

    # a model without a validation: auto falls back to the default and says so; no --decode is today's default
    unvalidated = tmp_path / "unvalidated"
    shutil.copytree(model, unvalidated, ignore=shutil.ignore_patterns("validation", "*.h5ad"))
    choice, decode, err = choice_of("--model", unvalidated, "--from", "control", "--to", "stimulated",
                                    "--cell-type", "T", "--decode", "auto")
    assert choice["by"] == "default" and choice["chosen"] == decode == "counterfactual" and int(choice["folds"]) == 0
    assert "the default (the model holds no validation result" in err
    choice, decode, err = choice_of("--model", unvalidated, "--from", "control", "--to", "stimulated",
                                    "--cell-type", "T")
    assert choice is None and decode == "counterfactual"
    assert expected["last"] is None and "expected quality" not in err    # nothing measured, nothing said


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("name", ["validate", "train"])
def test_every_option_is_in_one_section(name):
    cmd = main.commands[name]
    top = click.Context(main, info_name="trvae", **main.context_settings)
    with click.Context(cmd, info_name=name, parent=top) as ctx:
        assert cmd.unknown_names(ctx) == []
        layout = cmd.layout(ctx)
        assert SectionedCommand.OTHER not in layout
        listed = [p.name for params in layout.values() for p in params]
        assert sorted(listed) == sorted(p.name for p in cmd.get_params(ctx) if p.get_help_record(ctx) is not None)


def test_validate_takes_train_s_model_and_training_options_from_one_definition():
    from trvae_cli.config import SETTING_NAMES

    def options(name):
        return {p.name: (p.opts, p.secondary_opts, p.default, p.type.name, p.help, getattr(p.type, "choices", None))
                for p in main.commands[name].params if isinstance(p, click.Option)}

    train, validate = options("train"), options("validate")
    settings = [n for n in train if n in SETTING_NAMES and n not in ("arch", "filters")]   # images only: not here
    assert len(settings) == len(SETTING_NAMES) - 2
    for name in [*settings, "preset", "layer", "backed", "cell_types", "decodes", "n_degs", "n_subsamples", "jobs"]:
        assert validate[name] == train[name], name


# --------------------------------------------------------------------------- a decode per cell type


def _fold(name, cf, mean):
    """A fold record with the criterion's two R² equal to ``cf`` / ``mean`` for the two decodes."""
    results = [{"label": label, "metrics": {"r2_mean_degs": {"mean": v}, "r2_var_degs": {"mean": v},
                                             "change_pearson_all": v}}
               for label, v in (("identity", 0.1), ("mean shift", 0.2), ("counterfactual", cf), ("mean", mean))]
    return {"cell_type": name, "evaluation": {"results": results}}


def test_the_nearest_fold_rule_is_adopted_only_where_it_wins_on_the_folds():
    decodes = ["counterfactual", "mean"]
    # two lymphoid folds that want counterfactual, two myeloid that want mean; each one's nearest is its pair
    folds = [_fold("T", 0.8, 0.6), _fold("NK", 0.7, 0.5), _fold("Mono", 0.5, 0.7), _fold("DC", 0.6, 0.65)]
    pairs = {"T": "NK", "NK": "T", "Mono": "DC", "DC": "Mono"}
    r = R.decode_rules(folds, decodes, pairs)
    own = {f["cell_type"]: {"counterfactual": v[0], "mean": v[1]}
           for f, v in zip(folds, [(0.8, 0.6), (0.7, 0.5), (0.5, 0.7), (0.6, 0.65)])}
    # the reference, by hand: leave each fold out, choose from the others (pooled) or from its pair
    by_set, by_near = [], []
    for t in own:
        pooled = {d: np.mean([own[u][d] for u in own if u != t]) for d in decodes}
        by_set.append(own[t][max(pooled, key=pooled.get)])
        by_near.append(own[t][max(own[pairs[t]], key=own[pairs[t]].get)])
    assert r["scores"] == pytest.approx({R.DATA_SET_RULE: np.mean(by_set), R.NEAREST_RULE: np.mean(by_near)}, abs=1e-12)
    assert np.mean(by_near) > np.mean(by_set) and r["rule"] == R.NEAREST_RULE
    assert r["fold_best"] == {"T": "counterfactual", "NK": "counterfactual", "Mono": "mean", "DC": "mean"}
    assert r["per_fold"]["Mono"] == {"nearest": "DC", R.DATA_SET_RULE: "counterfactual", R.NEAREST_RULE: "mean"}
    # neighbours that mislead: the nearest rule does no better on the folds (0.55 both) and is not adopted
    crossed = {"T": "Mono", "NK": "DC", "Mono": "T", "DC": "NK"}
    r = R.decode_rules(folds, decodes, crossed)
    assert r["scores"] == pytest.approx({R.DATA_SET_RULE: 0.55, R.NEAREST_RULE: 0.55}, abs=1e-12)
    assert r["rule"] == R.DATA_SET_RULE
    worse = R.decode_rules([*folds[:3], _fold("DC", 0.9, 0.65)], decodes, crossed)
    assert worse["scores"][R.NEAREST_RULE] < worse["scores"][R.DATA_SET_RULE] and worse["rule"] == R.DATA_SET_RULE
    # two folds (the rules coincide), no neighbours, or a neighbour that is no fold: one choice for the data set
    for args in ((folds[:2], {"T": "NK", "NK": "T"}), (folds, None), (folds, {**pairs, "T": "B"})):
        r = R.decode_rules(args[0], decodes, args[1])
        assert r["rule"] == R.DATA_SET_RULE and r["scores"] == {}
    summary = R.summarize(folds, decodes, pairs)
    assert summary["chosen_decode"]["rule"] == R.NEAREST_RULE
    assert any("the nearest fold's own best" in line for line in summary["verdict"])


def test_nearest_folds_by_mean_expression():
    means = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.0, 4.0]])
    assert R.nearest_folds(means, ["a", "b", "c", "d"]) == {"a": "b", "b": "a", "c": "d", "d": "c"}
    assert R.nearest_folds(means[:1], ["a"]) == {}


def test_decode_auto_takes_the_nearest_validated_cell_type_s_choice(run, partial_data, tmp_path):
    model = tmp_path / "model"
    assert_ok(invoke("train", partial_data, *KEYS, *TINY, "--out", model))
    validation = model / V.VALIDATION_DIR
    validation.mkdir()
    report = json.loads((run[0] / "validation.json").read_text())
    cfg = json.loads((model / "config.json").read_text())
    assert report["training"] == cfg["training"]
    report["chosen_decode"].update(chosen="counterfactual", rule=R.NEAREST_RULE,
                                   fold_best={"T": "counterfactual", "B": "mean", "X": "sample"},
                                   rule_scores={R.NEAREST_RULE: 0.61, R.DATA_SET_RULE: 0.58})
    (validation / "validation.json").write_text(json.dumps(report))
    adata = ad.read_h5ad(partial_data)
    genes = list(adata.var_names)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    control = (adata.obs["condition"] == "control").values
    t_mean = x[control & (adata.obs["cell_type"] == "T").values].mean(0)
    b_mean = x[control & (adata.obs["cell_type"] == "B").values].mean(0)
    # B's fold is where T's cells are, X's is far from both; the genes are stored in another order
    means = np.stack([t_mean, t_mean + 1e-3, b_mean + 100.0])[:, ::-1]
    with open(validation / R.CENTROIDS, "wb") as fh:
        np.savez_compressed(fh, cell_types=np.array(["T", "B", "X"]), var_names=np.array(genes[::-1]), means=means)

    def predict(cell_type):
        pred = tmp_path / f"{cell_type}{len(list(tmp_path.glob('*.h5ad')))}.h5ad"
        res = invoke("transform", "--model", model, "--from", "control", "--to", "stimulated",
                     "--cell-type", cell_type, "--decode", "auto", "--out", pred)
        assert_ok(res)
        uns = ad.read_h5ad(pred).uns["trvae"]
        return uns["decode_choice"], uns["decode"], res.stderr

    choice, decode, err = predict("T")      # T's own fold is never its answer: B is the nearest other
    assert choice["nearest"] == "B" and decode == choice["chosen"] == "mean"
    expected = ad.read_h5ad(sorted(tmp_path.glob("T*.h5ad"))[-1]).uns["trvae"]["expected"]
    folds = {f["cell_type"]: f for f in report["folds"]}
    assert expected["nearest"]["cell_type"] == "B" and expected["own_fold"]["cell_type"] == "T"
    assert float(expected["nearest"]["r2_var_degs"]) == pytest.approx(
        folds["B"]["methods"]["mean"]["metrics"]["r2_var_degs"]["mean"])
    assert "; B, the validated cell type nearest to these cells: " in err
    assert choice["data_set_choice"] == "counterfactual" and choice["rule"] == R.NEAREST_RULE
    assert float(choice["distance"]) == pytest.approx(1e-3 * np.sqrt(len(genes)), rel=1e-3)
    assert "--decode auto: mean, the best on B, the validated cell type nearest to T" in err
    choice, decode, _ = predict("B")        # B's nearest other fold: T (X is far)
    assert choice["nearest"] == "T" and decode == "counterfactual"
    # no single cell type: the data set's choice, and why
    res = invoke("transform", "--model", model, "--from", "control", "--to", "stimulated", "--decode", "auto",
                 "--out", tmp_path / "all.h5ad")
    assert_ok(res)
    choice = ad.read_h5ad(tmp_path / "all.h5ad").uns["trvae"]["decode_choice"]
    assert choice["chosen"] == "counterfactual" and choice["rule"] == "data set" and "--cell-type" in choice["rule_reason"]
    # the centroids gone: the data set's choice, said
    (validation / R.CENTROIDS).unlink()
    choice, decode, _ = predict("T")
    assert decode == "counterfactual" and "missing or unreadable" in choice["rule_reason"]


# --------------------------------------------------------------------------- several seeds per fold


def _fake_run(seed, values, epochs, wall):
    """A fold record of one seed: identity and counterfactual, every figure given."""
    def method(label, r2, point):
        return {"label": label, "kind": "prediction", "n_cells": 5,
                "metrics": {"r2_mean_degs": {"mean": r2, "sd": r2 / 10, "full": r2 + 0.01, "n_subsamples": 10},
                            "change_pearson_all": point}}
    return {"cell_type": "T", "seed": seed, "train_wall_seconds": wall, "seconds": wall + 1,
            "result": {"epochs_run": epochs, "best_epoch": epochs - 2, "train_seconds": wall - 1},
            "evaluation": {"task": {"n_real_source": 5, "n_real_target": 6}, "degs": ["g"], "notes": [],
                           "results": [method("identity", values[0], None), method("counterfactual", *values[1:])]}}


def test_merge_seeds_averages_every_figure_and_sums_the_cost():
    runs = [_fake_run(0, (0.5, 0.8, 0.6), 10, 30.0), _fake_run(1, (0.7, 0.9, 0.8), 14, 50.0)]
    merged = R.merge_seeds(runs)
    cf = next(r for r in merged["evaluation"]["results"] if r["label"] == "counterfactual")["metrics"]
    assert cf["r2_mean_degs"]["mean"] == pytest.approx(0.85) and cf["r2_mean_degs"]["full"] == pytest.approx(0.86)
    assert cf["r2_mean_degs"]["sd"] == pytest.approx(0.085)
    assert cf["r2_mean_degs"]["seed_sd"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert cf["change_pearson_all"] == pytest.approx(0.7)
    ident = next(r for r in merged["evaluation"]["results"] if r["label"] == "identity")["metrics"]
    assert ident["change_pearson_all"] is None                  # undefined on every seed stays undefined
    assert merged["result"]["epochs_run"] == 12 and merged["train_wall_seconds"] == 80.0 and merged["seconds"] == 82.0
    assert merged["seeds"] == [0, 1] and [r["epochs_run"] for r in merged["per_seed"]] == [10, 14]
    assert R.fold_value(merged, "counterfactual", "r2_mean_degs") == pytest.approx(0.85)
    assert R.merge_seeds(runs[:1]) == runs[0]                    # one seed: the record as it is


def test_validate_at_two_seeds_trains_each_fold_twice_and_averages(partial_data, tmp_path, run):
    out = tmp_path / "val2"
    result = invoke("validate", partial_data, *TASK, "--out", out, "--jobs", "2", "--seeds", "0,1", *FAST, *TINY)
    assert_ok(result)
    assert "validate trains 4 models (one per cell type with both conditions, at each of 2 seeds: T, B)" in result.stderr
    assert "T (seed 1): trained" in result.stderr
    runs = folds_of(out)
    assert sorted(runs) == ["B.seed0", "B.seed1", "T.seed0", "T.seed1"]
    assert {(r["cell_type"], r["seed"], r["training"]["seed"]) for r in runs.values()} == {
        (t, s, s) for t in ("T", "B") for s in (0, 1)}
    report = json.loads((out / "validation.json").read_text())
    assert report["settings"]["seeds"] == [0, 1]
    assert report["training"]["seed"] == report["settings"]["seed"] == 0     # the model's seed, not a fold's
    for decode in ("counterfactual", "mean"):
        per_fold = [np.mean([R.fold_value(runs[f"{t}.seed{s}"], decode, "r2_mean_degs") for s in (0, 1)])
                    for t in ("T", "B")]
        assert report["summary"][decode]["r2_mean_degs"]["mean"] == pytest.approx(np.mean(per_fold), abs=1e-12)
    # seed 0's runs are the one-seed validation's folds (same settings, same seed): the same figures
    one = folds_of(run[0])
    assert R.fold_value(runs["T.seed0"], "counterfactual", "r2_mean_degs") == pytest.approx(
        R.fold_value(one["T"], "counterfactual", "r2_mean_degs"), abs=1e-12)
    again = invoke("validate", partial_data, *TASK, "--out", out, "--seeds", "0,1", *FAST, *TINY)
    assert_ok(again)
    assert "4 of 4 fold runs already done" in again.stderr and "trained in" not in again.stderr
    assert_user_error(invoke("validate", partial_data, *TASK, "--out", out, "--seeds", "0,2", *FAST, *TINY),
                      "other settings", "seeds")
    assert_user_error(invoke("validate", partial_data, *TASK, "--out", tmp_path / "v3", "--seeds", "1,1", *FAST),
                      "--seeds")


# --------------------------------------------------------------------------- train --validation DIR, trvae compare


def test_train_attaches_an_existing_validation_of_its_settings(run, partial_data, tmp_path):
    model = tmp_path / "model"
    result = invoke("train", partial_data, *KEYS, *TINY, "--seed", "5", "--validation", run[0], "--out", model)
    assert_ok(result)
    assert f"(its validation: {model}/validation/, from {run[0]})" in result.stderr
    attached = model / "validation"
    assert (attached / "validation.json").read_text() == (run[0] / "validation.json").read_text()
    assert sorted(p.name for p in (attached / "folds").iterdir()) == sorted(p.name for p in (run[0] / "folds").iterdir())
    pred = tmp_path / "p.h5ad"
    assert_ok(invoke("transform", "--model", model, "--from", "control", "--to", "stimulated", "--cell-type", "T",
                     "--out", pred))
    choice = ad.read_h5ad(pred).uns["trvae"]["decode_choice"]
    assert choice["by"] == "validation"                     # another --seed: the validation still applies
    # other settings: refused before training, nothing written
    other = tmp_path / "other"
    assert_user_error(invoke("train", partial_data, *KEYS, *TINY, "--dropout", "0.3", "--validation", run[0],
                             "--out", other), "--validation", "other settings", "dropout")
    assert not other.exists()
    assert_user_error(invoke("train", partial_data, *KEYS, *TINY, "--validation", tmp_path, "--out", other),
                      "no validation result")
    assert_user_error(invoke("train", partial_data, *KEYS, *TINY, "--encoder-hidden", "8", "--validation", run[0],
                             "--out", other), "other settings", "encoder_hidden")
    # a validation recorded before --encoder-hidden existed (no such key) is of the same, mirrored network
    legacy = tmp_path / "legacy"
    shutil.copytree(run[0], legacy)
    recorded = json.loads((legacy / "validation.json").read_text())
    assert recorded["training"].pop("encoder_hidden", "absent") is None
    (legacy / "validation.json").write_text(json.dumps(recorded))
    from trvae_cli.validate import check_attachable

    assert check_attachable(legacy, settings=recorded["training"], data=partial_data)["training"] == recorded["training"]
    copy = tmp_path / "copy.h5ad"
    shutil.copy(partial_data, copy)                         # the same cells, another file: not what was validated
    assert_user_error(invoke("train", copy, *KEYS, *TINY, "--validation", run[0], "--out", other),
                      "another data file")
    assert_user_error(invoke("train", partial_data, *TASK, *TINY, "--validate", "--validation", run[0], "--out", other),
                      "give one")
    assert not other.exists()
    # the attached model compares like the folder it came from
    report = invoke("compare", run[0], model)
    assert_ok(report)
    assert "not distinguishable" in report.stdout or "baseline scores highest" in report.stdout
    # the library flow of the README: the recommended setting's training settings and folder, as given
    from trvae_cli import api
    from trvae_cli.compare import compare
    from trvae_cli.config import RunOptions

    best = compare([run[0], model])["recommended"]
    lib = api.train(partial_data, "condition", tmp_path / "lib", cell_type_key="cell_type", settings=best["training"],
                    validation=best["path"], options=RunOptions(progress="none"))
    assert json.loads((lib / "config.json").read_text())["training"] == best["training"]
    assert (lib / "validation" / "validation.json").is_file()


def test_a_fold_recorded_before_a_setting_existed_still_counts_as_finished(tmp_path):
    """A fold file lacking a setting that is ``None`` now (``encoder_hidden``, added later) is of the same
    settings; one that differs in a value is not."""
    compared = {"data": "/d.h5ad", "training": {"hidden": [128], "encoder_hidden": None, "seed": 0}}
    units = V.fold_units(["T", "B"], [0])
    for name, training in (("T", {"hidden": [128], "seed": 0}), ("B", {"hidden": [64], "seed": 0})):
        path = V.fold_path(tmp_path, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format": V.FOLD_FORMAT, "cell_type": name, "seed": 0,
                                    "settings": {"data": "/d.h5ad", "training": training}}))
    assert list(V._finished(tmp_path, units, compared)) == ["T"]


def test_expected_quality_is_what_the_validation_measured_for_that_decode():
    fold = {"cell_type": "T", "methods": {"mean": {"metrics": {"r2_mean_degs": {"mean": 0.9, "full": 0.95},
                                                               "r2_var_degs": {"mean": 0.5}, "change_pearson_all": 0.8}}}}
    report = {"folds": [fold, {"cell_type": "B", "methods": {}}],
              "summary": {"mean": {"r2_mean_degs": {"mean": 0.85, "sd": 0.05}, "r2_var_degs": {"mean": 0.4, "sd": 0.1}}}}
    got = V.expected_quality(report, "mean", group="T", nearest="X")       # X: not a validated cell type
    assert got == {"decode": "mean", "folds": 2,
                   "over_folds": {"r2_mean_degs": {"mean": 0.85, "sd": 0.05}, "r2_var_degs": {"mean": 0.4, "sd": 0.1}},
                   "own_fold": {"cell_type": "T", "r2_mean_degs": 0.9, "r2_var_degs": 0.5, "change_pearson_all": 0.8}}
    assert V.expected_quality(report, "counterfactual") is None           # not scored: nothing to say
    line = R.expected_line(got)
    assert line == ("expected quality, from the model's validation (mean, over 2 held-out cell types): R² of DEG "
                    "means 0.850 ± 0.050, of DEG variances 0.400 ± 0.100; T, its own fold: 0.900 / 0.500 / 0.800 "
                    "(DEG means / variances / change)")
