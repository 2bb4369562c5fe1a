"""Faults and hostile inputs: nothing outside --out, --force only on trvae's outputs, one writer, every
option checked up front, full or unwritable disks, signals in every phase, tampered files."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from cli_helpers import assert_ok, assert_user_error, bar_images, invoke, dense

TINY = ["--condition", "condition", "--epochs", "1", "--hidden", "8", "--mmd-dim", "4", "--latent-dim", "2",
        "--batch-size", "64", "--no-jit", "-q"]
KANG = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang_pbmc_valid.h5ad"


def _sha(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _exit_with(result, code, *fragments):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# -- 1. nothing outside --out --------------------------------------------------------------------

def test_manifest_labels_cannot_lead_outside_out(tmp_path):
    from trvae_cli.data.images import write_png

    images, conditions, domains = bar_images(4)
    rows = ["path,condition,domain"]
    for i, (img, c, d) in enumerate(zip(images, conditions, domains)):
        write_png(img, tmp_path / "imgs" / f"{i}.png")
        rows.append(f"imgs/{i}.png,{c},{'../../../escape' if d == 'b' else d}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    model = tmp_path / "model"
    assert_ok(invoke("train", tmp_path / "m.csv", "--exclude", "../../../escape:bold", "--out", model,
                     "--filters", "8,16", "--mmd-dim", "8", "--latent-dim", "2", "--batch-size", "8", "--epochs", "1",
                     "--no-jit", "-q"))
    before = set(tmp_path.parent.rglob("*"))
    out = tmp_path / "pred"
    assert_ok(invoke("transform", "--model", model, "--from", "plain", "--to", "bold", "--domain",
                     "../../../escape", "--out", out, "-q"))
    new = set(tmp_path.parent.rglob("*")) - before
    assert new and all(p.resolve().is_relative_to(out.resolve()) for p in new)


def test_inside_refuses_escapes(tmp_path):
    from trvae_cli.errors import TrvaeError
    from trvae_cli.outputs import inside

    assert inside(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    for rel in ("../x.png", "/etc/x.png", "a/../../x.png"):
        with pytest.raises(TrvaeError, match="outside"):
            inside(tmp_path, rel)


# -- 2. --force replaces only what trvae wrote -------------------------------------------------------

def test_force_never_replaces_an_input(tiny_h5ad, trained_model, tmp_path):
    data = tmp_path / "data" / "d.h5ad"
    data.parent.mkdir()
    data.write_bytes(tiny_h5ad.read_bytes())
    digest = _sha(data)
    assert_user_error(invoke("train", data, *TINY, "--out", data, "--force"), "is the input")
    assert_user_error(invoke("train", data, *TINY, "--out", data.parent, "--force"), "holds the input")
    assert_user_error(invoke("train", data, *TINY, "--out", tmp_path, "--force"), "holds the input")
    assert_user_error(invoke("train", data, *TINY, "--out", ".", "--force"))
    assert _sha(data) == digest
    cwd = os.getcwd()
    try:   # --out . names the folder the run is in: not a trvae output, so never replaced
        os.chdir(tmp_path / "data")
        assert_user_error(invoke("train", tiny_h5ad, *TINY, "--out", ".", "--force"), "did not write")
    finally:
        os.chdir(cwd)
    base = ["transform", "--model", trained_model, "--data", data, "--from", "control", "--to", "stimulated", "-q"]
    assert_user_error(invoke(*base, "--out", data, "--force"), "is the input")
    assert_user_error(invoke(*base, "--out", trained_model, "--force"), "is the input")
    assert _sha(data) == digest
    other = tmp_path / "other.h5ad"                 # an AnnData trvae did not write
    other.write_bytes(tiny_h5ad.read_bytes())
    assert_user_error(invoke(*base, "--out", other, "--force"), "did not write")
    assert_ok(invoke(*base, "--out", tmp_path / "p.h5ad"))
    assert_ok(invoke(*base, "--out", tmp_path / "p.h5ad", "--force"))     # its own output: replaced
    assert_user_error(invoke("evaluate", "--pred", tmp_path / "p.h5ad", "--json", tmp_path / "p.h5ad", "--force",
                             "-q"), "is the input")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    assert_user_error(invoke("train", tiny_h5ad, *TINY, "--out", folder, "--force"), "did not write")
    assert (folder / "mine.txt").read_text() == "keep"


def test_force_replaces_an_image_folder_never(tmp_path):
    from trvae_cli.data.images import write_png

    images, conditions, domains = bar_images(2)
    for i, (img, c, d) in enumerate(zip(images, conditions, domains)):
        write_png(img, tmp_path / "tree" / c / d / f"{i}.png")
    digest = _sha(tmp_path / "tree")
    assert_user_error(invoke("train", tmp_path / "tree", "--out", tmp_path / "tree", "--force", "-q"), "is the input")
    assert_user_error(invoke("train", tmp_path / "tree", "--out", tmp_path / "tree" / "plain" / "m", "--force", "-q"),
                      "lies inside")
    assert _sha(tmp_path / "tree") == digest


# -- 3. one writer at a time ---------------------------------------------------------------------

def test_a_second_run_on_the_same_out_is_refused(tiny_h5ad, tmp_path):
    from trvae_cli.outputs import claim

    out = tmp_path / "m"
    with claim(out):
        result = invoke("train", tiny_h5ad, *TINY, "--out", out)
        assert_user_error(result, "being written by another trvae run", f"pid {os.getpid()}")
    assert not out.exists()
    assert_ok(invoke("train", tiny_h5ad, *TINY, "--out", out))    # the lock went with its holder
    assert not list(tmp_path.glob(".m.trvae-*"))


# -- 4. every option checked up front ----------------------------------------------------------

@pytest.mark.parametrize("option", [("--learning-rate", "inf"), ("--beta", "nan"), ("--eta", "nan"),
                                    ("--alpha", "-1"), ("--seed", "-1")])
def test_non_finite_and_out_of_range_options(tiny_h5ad, tmp_path, option):
    assert_user_error(invoke("train", tiny_h5ad, *TINY, *option, "--out", tmp_path / "m"), option[0])
    assert not (tmp_path / "m").exists()


def test_labels_genes_and_batch_size(tiny_h5ad, tmp_path):
    data = ad.read_h5ad(tiny_h5ad)
    nan = data.copy()
    nan.obs["condition"] = nan.obs["condition"].astype(object)
    nan.obs.iloc[3, nan.obs.columns.get_loc("condition")] = np.nan
    nan.write_h5ad(tmp_path / "nan.h5ad")
    assert_user_error(invoke("train", tmp_path / "nan.h5ad", *TINY, "--out", tmp_path / "a"), "missing", "NaN")
    data[:, :0].copy().write_h5ad(tmp_path / "nogenes.h5ad")
    assert_user_error(invoke("train", tmp_path / "nogenes.h5ad", *TINY, "--out", tmp_path / "b"), "0 genes")
    result = invoke("train", tiny_h5ad, *TINY, "--batch-size", "100000", "--out", tmp_path / "c")
    assert_ok(result)
    assert "more than the" in result.stderr
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["training"]["batch_size"] == cfg["data"]["n_cells_train"]


def test_repeated_gene_names_and_listed_exclusions_are_one_line(tiny_h5ad, trained_model, tmp_path):
    """Repeated var_names used to train a model that no command could load ("damaged, retrain it",
    and retraining made the same); a comma-separated --exclude was read as one odd cell type."""
    data = ad.read_h5ad(tiny_h5ad)
    data.var_names = ["g"] + [f"gene{i}" for i in range(1, data.n_vars - 2)] + ["g", "g"]
    data.write_h5ad(tmp_path / "dup.h5ad")
    result = invoke("train", tmp_path / "dup.h5ad", *TINY, "--out", tmp_path / "m")
    _exit_with(result, 2, "var_names", "not unique", "1 repeated, e.g. g", "var_names_make_unique")
    assert not (tmp_path / "m").exists()
    result = invoke("transform", "--data", tmp_path / "dup.h5ad", "--model", trained_model, "--from", "control",
                    "--to", "stimulated", "--out", tmp_path / "p.h5ad")
    _exit_with(result, 2, "not unique")
    result = invoke("train", tiny_h5ad, *TINY, "--cell-type-key", "cell_type", "--exclude",
                    "NK:stimulated,B:stimulated", "--out", tmp_path / "m2")
    _exit_with(result, 2, "--exclude NK:stimulated --exclude B:stimulated")


def test_a_transform_to_the_same_condition_says_what_it_is(trained_model, tiny_h5ad, tmp_path):
    result = invoke("transform", "--data", tiny_h5ad, "--model", trained_model, "--from", "control", "--to",
                    "control", "--out", tmp_path / "same.h5ad")
    assert_ok(result)
    assert "note: --from and --to are both control: the output is the model's reconstruction" in result.stderr
    assert ad.read_h5ad(tmp_path / "same.h5ad").uns["trvae"]["notes"][0].startswith("--from and --to are both")
    from trvae_cli import api
    from trvae_cli.errors import TrvaeNote

    with pytest.warns(TrvaeNote, match="reconstruction"):       # a notebook is told too
        api.transform(trained_model, tiny_h5ad, source="control", target="control", write=False)


def test_cells_are_written_only_to_an_h5ad_name(trained_model, tiny_h5ad, tmp_path):
    """transform and embed wrote HDF5 under any name (pred.csv held an .h5ad)."""
    for command in (["transform", "--from", "control", "--to", "stimulated"], ["embed"]):
        result = invoke(*command, "--data", tiny_h5ad, "--model", trained_model, "--out", tmp_path / "pred.csv")
        _exit_with(result, 2, "pred.csv", "pred.h5ad")
        assert not (tmp_path / "pred.csv").exists()


def test_negative_values_are_handled_alike_in_train_and_transform(tiny_h5ad, tmp_path):
    data = ad.read_h5ad(tiny_h5ad)
    x = data.X.toarray()
    data.X = (x - x.mean(0)) / (x.std(0) + 1e-6)           # scaled: negative values
    data.write_h5ad(tmp_path / "scaled.h5ad")
    result = invoke("train", tmp_path / "scaled.h5ad", *TINY, "--out", tmp_path / "m")
    assert_ok(result)
    assert "negative values" in result.stderr and "--output-activation linear" in result.stderr
    base = ["transform", "--model", tmp_path / "m", "--from", "control", "--to", "stimulated"]
    auto = invoke(*base, "--out", tmp_path / "p.h5ad")
    assert_ok(auto)
    assert "using default --residual-scale linear" in auto.stderr
    assert_user_error(invoke(*base, "--residual-scale", "counts", "--out", tmp_path / "q.h5ad"), "negative")


# -- 5. full or unwritable disks ------------------------------------------------------------------

def test_no_space_is_one_line_before_training(tiny_h5ad, tmp_path, monkeypatch):
    import shutil

    from trvae_cli import outputs

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    _exit_with(invoke("train", tiny_h5ad, *TINY, "--out", tmp_path / "m"), 74, "not enough space")
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m*"))


def test_enospc_while_writing_leaves_nothing(trained_model, tmp_path, monkeypatch):
    from trvae_cli import outputs

    def full(tmp, final):
        raise OSError(errno.ENOSPC, "No space left on device", str(final))

    monkeypatch.setattr(outputs, "publish", full)
    out = tmp_path / "p.h5ad"
    _exit_with(invoke("transform", "--model", trained_model, "--from", "control", "--to", "stimulated", "--out", out,
                      "-q"), 74, "No space left", "free some space")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_one_line_before_training(tiny_h5ad, tmp_path, monkeypatch):
    from trvae_cli import outputs

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(outputs.tempfile, "NamedTemporaryFile", denied)
    _exit_with(invoke("train", tiny_h5ad, *TINY, "--out", tmp_path / "m"), 74, "Permission denied")


# -- 6. signals in every phase ------------------------------------------------------------------

def _child(hook: str, *args):
    """Run ``trvae ARGS`` in a child process after ``hook`` (Python) has patched something."""
    code = f"import os, signal, sys\n{hook}\nfrom trvae_cli.cli import main\nmain(args=sys.argv[1:], prog_name='trvae')\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_sigterm_before_the_first_epoch_then_resume(tiny_h5ad, tmp_path):
    args = ["train", tiny_h5ad, *TINY, "--epochs", "2"]
    assert_ok(invoke(*args, "--out", tmp_path / "full"))
    hook = ("from trvae_cli.engine import checkpoint as C\n"
            "orig = C.Checkpointer.on_train_begin\n"
            "def begin(self, logs=None):\n"
            "    orig(self, logs); os.kill(os.getpid(), signal.SIGTERM)\n"
            "C.Checkpointer.on_train_begin = begin\n")
    stopped = _child(hook, *args, "--out", tmp_path / "m")
    assert stopped.returncode == 75, stopped.stderr
    assert "stopped after epoch 0" in stopped.stderr
    assert_ok(invoke(*args, "--out", tmp_path / "m", "--resume"))
    weights = [json.loads((tmp_path / d / "config.json").read_text())["result"]["weights_sha256"] for d in ("full", "m")]
    assert weights[0] == weights[1]


def test_sigterm_during_the_save_finishes_the_model(tiny_h5ad, tmp_path):
    hook = ("from trvae_cli import model_dir as M\n"
            "orig = M.write_model_dir\n"
            "def save(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGTERM); return orig(*a, **k)\n"
            "M.write_model_dir = save\n")
    done = _child(hook, "train", tiny_h5ad, *TINY, "--out", tmp_path / "m")
    assert done.returncode == 0, done.stderr
    assert "the model is complete" in done.stderr
    assert (tmp_path / "m" / "model.keras").is_file() and not (tmp_path / "m" / "checkpoint").exists()


def test_a_killed_runs_leftovers_are_cleaned(tiny_h5ad, tmp_path):
    leftover = tmp_path / ".m.trvae-dead.partial"
    leftover.mkdir()
    (leftover / "model.keras").write_text("half")
    assert_ok(invoke("train", tiny_h5ad, *TINY, "--out", tmp_path / "m"))
    assert not leftover.exists()
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~mask      # the user's umask, not mkdtemp's 0700


def test_an_epoch_short_of_its_steps_is_an_error():
    from trvae_cli.engine.callbacks import EveryStepRan
    from trvae_cli.errors import TrvaeError

    check = EveryStepRan(4)
    check.on_epoch_begin(0)
    for b in range(4):
        check.on_train_batch_end(b)
    check.on_epoch_end(0)                      # a whole epoch passes
    check.on_epoch_begin(1)
    check.on_train_batch_end(0)
    with pytest.raises(TrvaeError, match="epoch 2 ran 1 of its 4 training steps"):
        check.on_epoch_end(1)


def test_a_diverging_training_is_one_line_and_writes_nothing(tiny_h5ad, tmp_path):
    """A loss that turns NaN (here: a learning rate of 1e6) used to train on and save NaN weights with
    exit status 0."""
    result = invoke("train", tiny_h5ad, *TINY, "--epochs", "3", "--learning-rate", "1e6", "--out", tmp_path / "m")
    _exit_with(result, 2, "training diverged", "at epoch 1", "--learning-rate")
    assert not (tmp_path / "m").exists()


def test_a_model_with_nan_weights_is_one_line_at_transform(trained_model, tiny_h5ad, tmp_path):
    """A diverged model saved by an older trvae: transform said so in a traceback (NumPy's Poisson draw
    refusing NaN rates); now one line, naming the cause, and no output."""
    import shutil

    from trvae_cli.model_dir import MODEL_FILE, load_model

    model_dir = tmp_path / "nan_model"
    shutil.copytree(trained_model, model_dir)
    _, model = load_model(model_dir)
    weights = model.get_weights()
    weights[0] = np.full_like(weights[0], np.nan)
    model.set_weights(weights)
    model.save(model_dir / MODEL_FILE)
    result = invoke("transform", "--data", tiny_h5ad, "--model", model_dir, "--from", "control", "--to",
                    "stimulated", "--out", tmp_path / "pred.h5ad")
    _exit_with(result, 2, "NaN or infinite weights", "retrain")
    assert not (tmp_path / "pred.h5ad").exists()


def test_a_training_that_diverges_after_a_checkpoint_leaves_nothing(tiny_h5ad, tmp_path):
    """With --checkpoint-every, epochs before the divergence had written OUT/checkpoint/: a run no one
    can continue (resuming repeats it). It goes, with the folder the run created; a resumed run's
    checkpoint would stay, and the message says which."""
    hook = ("from trvae_cli.engine import callbacks as C\n"
            "orig = C.FiniteLoss.on_epoch_end\n"
            "def end(self, epoch, logs=None):\n"
            "    if epoch == 2: logs['loss'] = float('nan')\n"
            "    return orig(self, epoch, logs)\n"
            "C.FiniteLoss.on_epoch_end = end\n")
    done = _child(hook, "train", tiny_h5ad, *TINY, "--epochs", "5", "--checkpoint-every", "1", "--out", tmp_path / "m")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "training diverged: loss was nan at epoch 3" in lines[0], done.stderr
    assert lines[0].endswith("nothing was written")
    assert not (tmp_path / "m").exists() and list(tmp_path.iterdir()) == []


#: a _child hook: SIGTERM once epoch 2 has ended (its snapshot taken), so the run stops with a checkpoint
SIGTERM_AFTER_EPOCH_2 = ("from trvae_cli.engine import checkpoint as C\n"
                         "orig = C.Checkpointer.on_epoch_end\n"
                         "def end(self, epoch, logs=None):\n"
                         "    orig(self, epoch, logs)\n"
                         "    if epoch == 1: os.kill(os.getpid(), signal.SIGTERM)\n"
                         "C.Checkpointer.on_epoch_end = end\n")


def test_a_resumed_training_that_diverges_keeps_the_checkpoint_it_resumed_from(tiny_h5ad, tmp_path):
    args = ["train", tiny_h5ad, *TINY, "--epochs", "5", "--checkpoint-every", "1", "--out", tmp_path / "m"]
    stopped = _child(SIGTERM_AFTER_EPOCH_2, *args)
    assert stopped.returncode == 75, stopped.stderr
    diverge = ("from trvae_cli.engine import callbacks as C\n"
               "orig = C.FiniteLoss.on_epoch_end\n"
               "def end(self, epoch, logs=None):\n"
               "    if epoch == 3: logs['loss'] = float('nan')\n"
               "    return orig(self, epoch, logs)\n"
               "C.FiniteLoss.on_epoch_end = end\n")
    failed = _child(diverge, *args, "--resume")
    assert failed.returncode == 2, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "at epoch 4" in lines[0] and "the checkpoint it resumed from stays" in lines[0]
    assert (tmp_path / "m" / "checkpoint" / "state.json").is_file()


def test_a_diverging_force_run_keeps_the_checkpoint_an_earlier_run_left(tiny_h5ad, tmp_path):
    """--force over an interrupted run's folder: a new run that diverges before writing a checkpoint
    of its own leaves the earlier run's checkpoint where it was (it removes only what it wrote)."""
    assert _child(SIGTERM_AFTER_EPOCH_2, "train", tiny_h5ad, *TINY, "--epochs", "5", "--out", tmp_path / "m").returncode == 75
    state = (tmp_path / "m" / "checkpoint" / "state.json").read_bytes()
    result = invoke("train", tiny_h5ad, *TINY, "--learning-rate", "1e6", "--force", "--out", tmp_path / "m")
    _exit_with(result, 2, "training diverged", "nothing was written")
    assert (tmp_path / "m" / "checkpoint" / "state.json").read_bytes() == state


def test_a_damaged_xla_cache_entry_is_one_line_not_an_untrained_model(tiny_h5ad, tmp_path):
    """A user's persistent XLA cache (TF_XLA_FLAGS) with a truncated entry makes the compiled step
    raise TensorFlow's end-of-input error. Keras took it for the end of the data, ended every epoch at
    its first step, and the untrained model was saved with exit status 0. Now: one line, no model."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow is not installed")
    cache = tmp_path / "xla"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["TF_XLA_FLAGS"] = f"--tf_xla_persistent_cache_directory={cache}"
    args = ["train", tiny_h5ad, *[a for a in TINY if a != "--no-jit"], "--epochs", "2"]   # XLA: the cache's user
    code = "import sys\nfrom trvae_cli.cli import console\nsys.argv = ['trvae', *sys.argv[1:]]\nconsole()\n"

    def run(out):
        return subprocess.run([sys.executable, "-c", code, *map(str, args), "--out", str(out)],
                              capture_output=True, text=True, timeout=300, env=env)

    first = run(tmp_path / "m1")
    assert first.returncode == 0, first.stderr
    entries = list(cache.iterdir())
    assert entries, "TensorFlow wrote no cache entry: the test no longer exercises the damaged cache"
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    second = run(tmp_path / "m2")
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: epoch 1 ran 0 of its"), second.stderr
    assert "persistent XLA cache" in lines[0]
    assert not (tmp_path / "m2").exists()


# -- 7. tampered model directories and checkpoints ---------------------------------------------------

@pytest.mark.parametrize("tamper, field", [
    (lambda c: c.update(var_names=c["var_names"][:-3]), "var_names"),
    (lambda c: c["data"].update(conditions=c["data"]["conditions"][:2]), "n_conditions"),
    (lambda c: c.pop("data"), "data"),
    (lambda c: c["training"].update(precision="float8"), "training.precision"),
])
def test_tampered_model_directory(trained_model, tmp_path, tamper, field):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    cfg = json.loads((model / "config.json").read_text())
    tamper(cfg)
    (model / "config.json").write_text(json.dumps(cfg))
    assert_user_error(invoke("transform", "--model", model, "--from", "control", "--to", "stimulated", "--out",
                             tmp_path / "p.h5ad"), field)
    assert not (tmp_path / "p.h5ad").exists()


@pytest.fixture(scope="module")
def interrupted(tiny_h5ad, tmp_path_factory):
    """A run of 12 epochs stopped by SIGTERM after its first: (its model directory, its arguments)."""
    hook = ("from trvae_cli.engine import checkpoint as C\n"
            "orig = C.Checkpointer.on_epoch_end\n"
            "def end(self, epoch, logs=None):\n"
            "    orig(self, epoch, logs)\n"
            "    if epoch == 0: os.kill(os.getpid(), signal.SIGTERM)\n"
            "C.Checkpointer.on_epoch_end = end\n")
    out = tmp_path_factory.mktemp("interrupted") / "m"
    args = ["train", tiny_h5ad, *TINY, "--epochs", "12"]
    stopped = _child(hook, *args, "--out", out)
    assert stopped.returncode == 75, stopped.stderr
    return out, args


def _copy(interrupted, tmp_path) -> Path:
    import shutil

    out = tmp_path / "m"
    shutil.copytree(interrupted[0], out)
    return out


@pytest.mark.parametrize("tamper, field", [
    (lambda s: s.update(epochs_done=50), "epochs_done"),
    (lambda s: s.update(sampler_rng={"bit_generator": "PCG64", "state": "garbage"}), "sampler_rng"),
    (lambda s: s.pop("early"), "early"),
])
def test_tampered_checkpoint(interrupted, tmp_path, tamper, field):
    out = _copy(interrupted, tmp_path)
    state_path = out / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    tamper(state)
    state_path.write_text(json.dumps(state))
    assert_user_error(invoke(*interrupted[1], "--out", out, "--resume"), field)
    assert not (out / "model.keras").exists()


def test_resume_names_the_one_setting_that_differs(interrupted, tmp_path):
    out = _copy(interrupted, tmp_path)
    line = assert_user_error(invoke(*interrupted[1], "--seed", "9", "--out", out, "--resume"), "settings.seed: 0 -> 9")
    assert len(line) < 300, line


# -- 8. one line for click's own errors -------------------------------------------------------------

def test_usage_errors_are_one_line(tmp_path):
    assert_user_error(invoke("train"), "Missing argument")
    assert_user_error(invoke("train", "x.h5ad", "--epochs", "zero"), "--epochs")
    assert_user_error(invoke("transform", "--to", "b"), "--from")


# -- 9. --backed on anndata's older sparse layout (the shared Kang file) -------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not KANG.exists(), reason="needs ../shared/data/kang_pbmc_valid.h5ad")
def test_backed_reads_the_older_sparse_layout(tmp_path):
    args = ["--condition", "condition", "--epochs", "1", "--hidden", "8", "--mmd-dim", "4", "--latent-dim", "2",
            "--batch-size", "256", "--no-jit", "-q", "--validation-fraction", "0"]
    assert_ok(invoke("train", KANG, *args, "--backed", "--out", tmp_path / "m"))
    base = ["transform", "--model", tmp_path / "m", "--from", "control", "--to", "stimulated", "--decode", "mean",
            "-q"]
    assert_ok(invoke(*base, "--backed", "--out", tmp_path / "b.h5ad"))
    assert_ok(invoke(*base, "--out", tmp_path / "a.h5ad"))
    np.testing.assert_array_equal(dense(ad.read_h5ad(tmp_path / "a.h5ad").X),
                                  dense(ad.read_h5ad(tmp_path / "b.h5ad").X))
