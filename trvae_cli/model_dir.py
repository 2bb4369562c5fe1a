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
from pathlib import Path

from .errors import TrvaeError
from .outputs import staged

FORMAT = "trvae-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_DIR = "checkpoint"


def checkpoint_path(model_dir: str | Path) -> Path:
    """Where an unfinished run keeps its checkpoint (``MODEL_DIR/checkpoint/``)."""
    return Path(model_dir) / CHECKPOINT_DIR


def write_model_dir(out: Path, model, config: dict, history: list[dict]) -> Path:
    """Write ``model.keras``, ``config.json`` and ``history.csv`` into ``out``, atomically."""
    with staged(out, directory=True) as tmp:
        model.save(tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        write_history(tmp / HISTORY_FILE, history)
    return Path(out)


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
    _check_config(cfg, cfg_path)
    return cfg


def _check_config(cfg: dict, cfg_path: Path) -> None:
    """The config checked whole: a missing or inconsistent field is one line naming it."""
    from .config import PRECISIONS

    def bad(field: str, why: str):
        raise TrvaeError(f"{cfg_path}: {field} {why}; the model directory is damaged (retrain it)")

    for key in ("data", "model", "training"):
        if not isinstance(cfg.get(key), dict):
            bad(key, "is missing")
    data, model = cfg["data"], cfg["model"]
    conditions = data.get("conditions")
    if not isinstance(conditions, list) or len(conditions) < 2 or len(set(map(str, conditions))) != len(conditions):
        bad("data.conditions", "is not a list of two or more distinct conditions")
    if model.get("n_conditions") != len(conditions):
        bad("model.n_conditions", f"is {model.get('n_conditions')!r} but data.conditions lists {len(conditions)}")
    if cfg["training"].get("precision", "float32") not in PRECISIONS:
        bad("training.precision", f"is {cfg['training'].get('precision')!r}, not one of {', '.join(PRECISIONS)}")
    if data.get("kind", "cells") == "cells":
        genes = cfg.get("var_names")
        if not isinstance(genes, list) or not genes:
            bad("var_names", "is missing")
        if model.get("n_genes") != len(genes):
            bad("var_names", f"lists {len(genes)} genes but the model has {model.get('n_genes')!r}")
        if len(set(map(str, genes))) != len(genes):
            bad("var_names", "are not unique")
    elif not (isinstance(data.get("image_size"), list) and len(data["image_size"]) == 2
              and data.get("channels") in (1, 3)):
        bad("data.image_size / data.channels", "do not describe an image shape")


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
    if model.n_conditions != len(cfg["data"]["conditions"]) or model.n_genes != cfg["model"].get("n_genes"):
        raise TrvaeError(f"{Path(model_dir) / MODEL_FILE} does not match {CONFIG_FILE} (conditions or genes "
                         "differ); the model directory is damaged (retrain it)")
    import numpy as np

    if not all(np.isfinite(w).all() for w in model.get_weights()):
        # a training that diverged (trvae now refuses to save one; older versions did not)
        raise TrvaeError(f"{Path(model_dir) / MODEL_FILE} holds NaN or infinite weights (its training diverged): "
                         "retrain it, with a lower --learning-rate")
    return cfg, model
