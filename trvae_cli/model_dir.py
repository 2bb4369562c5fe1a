"""The saved-model directory: layout, atomic writing and validated loading.

Layout::

    MODEL_DIR/
      model.keras    the TRVAE model in Keras' native format
      config.json    hyperparameters, data set-up (condition key and labels, genes,
                     layer), versions, the command that trained it
      history.csv    per-epoch loss terms, train and validation
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

from .errors import TrvaeError

FORMAT = "trvae-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"


def check_writable_target(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise TrvaeError(f"output exists: {path} (use --force to overwrite)")


def staging_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))


def publish_dir(staged: Path, final: Path) -> None:
    """Move a finished staging directory into place (replacing ``final``)."""
    if final.exists():
        backup = final.with_name(f".{final.name}.old")
        _remove(backup)
        final.rename(backup)
        staged.rename(final)
        _remove(backup)
    else:
        staged.rename(final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_history(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def read_config(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise TrvaeError(f"model directory not found: {model_dir}")
    if not model_dir.is_dir():
        raise TrvaeError(f"not a model directory: {model_dir}")
    cfg_path = model_dir / CONFIG_FILE
    if not cfg_path.exists() or not (model_dir / MODEL_FILE).exists():
        raise TrvaeError(f"not a trvae model directory (no {CONFIG_FILE} / {MODEL_FILE}): {model_dir}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrvaeError(f"unreadable {cfg_path}: {exc}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise TrvaeError(f"not a trvae model directory ({cfg_path} is not a trvae config): {model_dir}")
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise TrvaeError(
            f"model format version {cfg['format_version']} is newer than this trvae supports ({FORMAT_VERSION}); upgrade trvae"
        )
    return cfg


def load_model(model_dir: str | Path, cfg: dict | None = None):
    """Load (config, TRVAE). Keras' safe_mode stays on: nothing in the file is executed.

    ``cfg``: the directory's config when the caller has already read it with :func:`read_config`.
    """
    cfg = cfg if cfg is not None else read_config(model_dir)
    from .backend import keras_module

    keras = keras_module()
    from .model import TRVAE  # registers the custom classes

    previous_policy = keras.config.dtype_policy()
    # the sub-networks are rebuilt from the model's config: under the policy it was trained with
    keras.config.set_dtype_policy(cfg.get("training", {}).get("precision", "float32"))
    try:
        model = keras.saving.load_model(Path(model_dir) / MODEL_FILE, safe_mode=True, compile=False)
    except Exception as exc:
        raise TrvaeError(f"could not load {Path(model_dir) / MODEL_FILE}: {exc.__class__.__name__}: {exc}") from None
    finally:
        keras.config.set_dtype_policy(previous_policy)
    if not isinstance(model, TRVAE):
        raise TrvaeError(f"{model_dir} does not hold a trVAE model")
    return cfg, model
