"""Images through the CLI: a tiny conv trVAE trains, transforms and plots; shapes; user errors."""

import json

import numpy as np
import pytest

from cli_helpers import assert_ok, assert_user_error, invoke, write_bar_images

TINY = ["--filters", "8,16", "--mmd-dim", "16", "--latent-dim", "4", "--batch-size", "16", "--no-jit", "-q"]


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    """ROOT/<plain|bold>/<a|b>/<i>.png: 16 x 16 grey bars, 'bold' ones three times as wide."""
    return write_bar_images(tmp_path_factory.mktemp("images"), 12)


@pytest.fixture(scope="module")
def image_model(image_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "model"
    assert_ok(invoke("train", image_tree, "--exclude", "b:bold", "--epochs", "2", "--out", out, *TINY))
    return out


def test_train_records_the_image_input(image_model):
    cfg = json.loads((image_model / "config.json").read_text())
    assert cfg["data"]["kind"] == "images"
    assert cfg["data"]["conditions"] == ["bold", "plain"] and cfg["data"]["domains"] == ["a", "b"]
    assert cfg["data"]["image_size"] == [16, 16] and cfg["data"]["channels"] == 1
    assert cfg["data"]["n_images_excluded"] == 12
    assert cfg["model"]["arch"] == "conv" and cfg["model"]["image_shape"] == [16, 16, 1]
    assert cfg["training"]["filters"] == [8, 16]


def test_transform_writes_pngs_mirroring_the_tree_and_a_grid(image_model, image_tree, tmp_path):
    from PIL import Image

    out = tmp_path / "pred"
    result = invoke("transform", "--model", image_model, "--data", image_tree, "--from", "plain", "--to", "bold",
                    "--domain", "b", "--out", out)
    assert_ok(result)
    pngs = sorted(out.rglob("*.png"))
    assert [p.relative_to(out).as_posix() for p in pngs] == [f"bold/b/{i:02d}.png" for i in range(12)]
    assert Image.open(pngs[0]).size == (16, 16) and Image.open(pngs[0]).mode == "L"
    with np.load(out / "transformed.npz") as z:
        assert z["images"].shape == (12, 16, 16, 1)
        assert z["images"].min() >= 0 and z["images"].max() <= 1
    meta = json.loads((out / "trvae.json").read_text())
    assert meta["decode"] == "mean" and meta["domain"] == "b" and "versions" in meta

    # deterministic: the same command gives the same arrays
    again = tmp_path / "again"
    assert_ok(invoke("transform", "--model", image_model, "--data", image_tree, "--from", "plain", "--to", "bold",
                     "--domain", "b", "--out", again, "-q"))
    with np.load(out / "transformed.npz") as a, np.load(again / "transformed.npz") as b:
        np.testing.assert_array_equal(a["images"], b["images"])

    grid = tmp_path / "grid.png"
    assert_ok(invoke("plot", "images", out, "--truth", image_tree, "--n", "4", "--out", grid))
    assert grid.stat().st_size > 1000


@pytest.mark.parametrize("arch, shape, filters", [("conv", (28, 28, 1), (32, 64)),
                                                   ("unet", (64, 64, 3), (32, 64, 128, 256))])
def test_image_model_shapes(arch, shape, filters):
    from trvae_cli.backend import keras_module

    keras_module()
    from trvae_cli.model import TRVAE

    model = TRVAE(n_genes=0, n_conditions=3, arch=arch, image_shape=shape, filters=filters, mmd_dim=64, latent_dim=8)
    x = np.random.default_rng(0).random((4, *shape)).astype("float32")
    out = model((x, np.array([0, 1, 2, 0])))
    assert tuple(out["x_hat"].shape) == (4, *shape)
    assert tuple(out["z_mean"].shape) == (4, 8) and tuple(out["mmd_layer"].shape) == (4, 64)
    x_hat = np.asarray(out["x_hat"])
    assert x_hat.min() >= 0 and x_hat.max() <= 1                   # sigmoid pixels
    config = model.get_config()
    assert TRVAE.from_config(config).image_shape == shape


def test_image_user_errors(image_tree, image_model, tmp_path):
    out = tmp_path / "m"
    assert_user_error(invoke("train", image_tree, "--arch", "mlp", "--out", out, "-q"), "--arch conv")
    assert_user_error(invoke("train", image_tree, "--exclude", "z:bold", "--out", out, *TINY), "unknown domain")
    assert_user_error(invoke("train", image_tree, "--out", out, *TINY, "--filters", "8,16,32,64,128"),
                      "divisible")
    assert_user_error(invoke("train", image_tree, "--image-size", "big", "--out", out, *TINY), "--image-size")
    assert_user_error(invoke("train", image_tree, "--norm", "layer", "--out", out, *TINY), "--norm layer")
    assert_user_error(invoke("train", image_tree, "--encoder-hidden", "8", "--out", out, *TINY), "--encoder-hidden")
    assert not out.exists()
    pred = tmp_path / "p"
    assert_user_error(invoke("transform", "--model", image_model, "--data", image_tree, "--from", "tiny",
                             "--to", "bold", "--out", pred), "--from", "tiny")
    assert_user_error(invoke("transform", "--model", image_model, "--data", image_tree, "--from", "plain",
                             "--to", "bold", "--domain", "c", "--out", pred), "--domain")
    assert not pred.exists()
