"""The ``trvae`` program itself (``cli.console``, the console script), each case in a process of its own.

It imports Keras without the optional integrations trvae never uses and ends the process as soon as
the command has: the exit code, the stdout line and the files written must be those of ``main``.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "perturbation.h5ad"
CONSOLE = "import sys; sys.argv[0] = 'trvae'; from trvae_cli.cli import console; console()"

LEAN_IMPORT = """
import json, sys
from trvae_cli import backend
backend.lean_imports = {lean}
keras = backend.keras_module()
loaded = sorted(m for m in backend.OPTIONAL_IMPORTS if m in sys.modules)
import importlib
after = [m for m in {wanted!r} if importlib.import_module(m)]
finders = [type(f).__name__ for f in sys.meta_path if isinstance(f, backend._SkipOptional)]
print(json.dumps({{"backend": keras.backend.backend(), "loaded": loaded, "after": after, "finders": finders}}))
"""


def _installed(names):
    return [m for m in names if importlib.util.find_spec(m) is not None]


def _child(code, env=None, timeout=300):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_program_imports_keras_without_its_unused_integrations_and_they_still_import_later():
    wanted = _installed(["sklearn", "IPython", "matplotlib"])
    if not wanted:
        pytest.skip("none of Keras' optional integrations is installed")
    lean = _child(LEAN_IMPORT.format(lean=True, wanted=wanted))
    assert lean["loaded"] == [] and lean["after"] == wanted and lean["finders"] == []
    # a library user (a notebook) gets Keras as it comes (Keras 3.15 imports all three when installed)
    full = _child(LEAN_IMPORT.format(lean=False, wanted=wanted))
    assert full["after"] == wanted and full["finders"] == []


def test_the_keras_backend_itself_is_never_left_out():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    got = _child(LEAN_IMPORT.format(lean=True, wanted=["jax"]), env={"KERAS_BACKEND": "jax"})
    assert got["backend"] == "jax" and "jax" in got["loaded"]


def _run(args, **kw):
    return subprocess.run([sys.executable, "-c", CONSOLE, *args], capture_output=True, text=True, timeout=300, **kw)


def test_the_program_ends_with_the_commands_code_its_stdout_and_complete_files(tmp_path):
    out = tmp_path / "m"
    proc = _run(["train", str(SAMPLE), "--condition", "condition", "--cell-type-key", "cell_type",
                 "--exclude", "B:stimulated", "--hidden", "16", "--mmd-dim", "8", "--latent-dim", "2",
                 "--epochs", "2", "--batch-size", "64", "--out", str(out), "-q"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines() == [str(out)]        # flushed before the process ended
    config = json.loads((out / "config.json").read_text())
    assert config["result"]["epochs_run"] == 2
    assert not [p.name for p in tmp_path.iterdir() if p.name != "m"]   # nothing staged left beside it

    # a user error after Keras was imported: one line, the same code as main gives
    pred = tmp_path / "p.h5ad"
    proc = _run(["transform", "--model", str(out), "--from", "control", "--to", "no-such-condition",
                 "--out", str(pred)])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error:") and not pred.exists()


def test_help_and_version_exit_normally():
    proc = _run(["--version"])
    assert proc.returncode == 0 and "trvae" in proc.stdout
    proc = _run(["no-such-command"])
    assert proc.returncode == 2 and proc.stderr.startswith("error:")
