"""Fixtures shared by the tests: a tiny data set, fast training arguments and a trained model."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
from click.testing import CliRunner


@pytest.fixture(scope="session")
def tiny_h5ad(tmp_path_factory):
    """A 1206 cells x 40 genes synthetic perturbation data set (3 conditions, 4 cell types)."""
    from trvae_cli.data.synthetic import make_perturbation_data

    path = tmp_path_factory.mktemp("data") / "tiny.h5ad"
    make_perturbation_data(n_genes=40, seed=1).write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def fast_train_args():
    """CLI arguments that make training tiny and fast (without XLA: its compile time would dominate
    two epochs; test_bare_form and the Kang tests train with the default --jit)."""
    return ["--epochs", "2", "--hidden", "16", "--mmd-dim", "8", "--latent-dim", "4", "--batch-size", "64", "-q",
            "--no-jit"]


@pytest.fixture(scope="session")
def trained_model(tiny_h5ad, tmp_path_factory, fast_train_args):
    """A model trained on the tiny data with NK:stimulated held out; returns its directory."""
    from trvae_cli.cli import main

    out = tmp_path_factory.mktemp("trained") / "model"
    result = CliRunner().invoke(main, [
        "train", str(tiny_h5ad), "--condition", "condition", "--cell-type-key", "cell_type",
        "--exclude", "NK:stimulated", "--out", str(out), *fast_train_args,
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    return out
