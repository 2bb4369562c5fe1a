"""The TRVAE model: loss terms, the MMD layer inside the loss, variants, save/load."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
from keras import ops

from trvae_cli.model import TRVAE, MMDLoss
from trvae_cli.config import CONDITION_INJECTIONS
from trvae_cli.model.losses import kl_divergence, reconstruction_loss
from trvae_cli.model.mmd import pairwise_condition_mmd
from tolerances import TRANSCENDENTAL_U, U, assert_within, gamma, mmd_rounding_bound, np_pairwise_mmd64

SMALL = dict(hidden=(16,), mmd_dim=8, latent_dim=4, seed=0)


def data(n=32, g=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, g)).astype("float32")
    c = np.arange(n) % 2
    return x, c.astype("int32")


def test_reconstruction_and_kl_match_numpy():
    rng = np.random.default_rng(0)
    x, xh = rng.random((5, 7)).astype("float32"), rng.random((5, 7)).astype("float32")
    mu, lv = rng.normal(size=(5, 3)).astype("float32"), rng.normal(size=(5, 3)).astype("float32")
    mse = float(ops.convert_to_numpy(reconstruction_loss(x, xh, "mse")))
    sse = float(ops.convert_to_numpy(reconstruction_loss(x, xh, "sse")))
    x64, xh64, mu64, lv64 = (a.astype(np.float64) for a in (x, xh, mu, lv))
    # float32 against float64: 0.5 (x - xh)^2 rounds 3 times (relative, the terms are >= 0), the
    # reductions over 7 genes and 5 cells (and the divisions) at most 7 + 5 more: gamma(15) relative
    assert mse == pytest.approx((0.5 * (x64 - xh64) ** 2).mean(), rel=float(gamma(3 + 7 + 5)), abs=0)
    assert sse == pytest.approx((0.5 * (x64 - xh64) ** 2).sum(1).mean(), rel=float(gamma(3 + 7 + 5)), abs=0)
    kl = float(ops.convert_to_numpy(kl_divergence(mu, lv)))
    # per dim: exp (TRANSCENDENTAL_U), the square and 3 additions, relative to the terms' magnitudes
    # 0.5 (e^lv + mu^2 + 1 + |lv|); then the means over 3 dims and 5 cells
    magnitude = (0.5 * (np.exp(lv64) + mu64**2 + 1 + np.abs(lv64))).mean()
    assert_within(kl, (0.5 * (np.exp(lv64) + mu64**2 - 1 - lv64)).mean(),
                  gamma(TRANSCENDENTAL_U + 4 + 3 + 5) * magnitude, "float32 KL vs float64")


def test_forward_shapes_and_variants():
    x, c = data()
    for mmd_on in ("decoder", "latent", "none"):
        m = TRVAE(12, 2, mmd_on=mmd_on, **SMALL)
        out = m((x, c), training=True)
        assert tuple(out["x_hat"].shape) == (32, 12)
        assert tuple(out["z"].shape) == (32, 4)
        assert tuple(out["mmd_layer"].shape) == (32, 8)
        assert (len(m.losses) == 1) == (mmd_on != "none")
        assert float(ops.convert_to_numpy(ops.min(out["x_hat"]))) >= 0.0  # ReLU output


def test_mmd_on_selects_the_regularised_tensor():
    x, c = data()
    onehot = np.eye(2, dtype="float32")[c]
    for mmd_on, key in (("decoder", "mmd_layer"), ("latent", "z")):
        m = TRVAE(12, 2, mmd_on=mmd_on, beta=3.0, **SMALL)
        out = m((x, c), training=False)
        expected = 3.0 * float(ops.convert_to_numpy(pairwise_condition_mmd(out[key], onehot)))
        loss = float(ops.convert_to_numpy(m.losses[0]))
        # both float32, each within beta * (the MMD's float32 rounding bound) + one rounding of the
        # product by beta of the float64 value of out[key]'s MMD (tests/tolerances.py)
        h = ops.convert_to_numpy(out[key])
        other = ops.convert_to_numpy(out["z" if key == "mmd_layer" else "mmd_layer"])
        reference = 3.0 * np_pairwise_mmd64(h, c, 2, m.mmd_loss.scales)
        bound = 3.0 * mmd_rounding_bound(h, c, 2, m.mmd_loss.scales) + U * abs(reference)
        assert_within(loss, reference, bound, f"{mmd_on}: beta * MMD in the loss")
        assert_within(expected, reference, bound, f"{mmd_on}: beta * MMD by hand")
        wrong = 3.0 * np_pairwise_mmd64(other, c, 2, m.mmd_loss.scales)   # the other tensor is told apart
        assert abs(wrong - reference) > bound + 3.0 * mmd_rounding_bound(other, c, 2, m.mmd_loss.scales)


def test_mmd_is_in_the_training_loss_with_nonzero_gradient():
    import tensorflow as tf  # the test suite runs on the default TensorFlow backend

    x, c = data()
    x[c == 1] += 1.0  # conditions differ, so the MMD is far from 0
    m = TRVAE(12, 2, beta=10.0, alpha=0.0, eta=0.0, dropout=0.0, **SMALL)
    with tf.GradientTape() as tape:
        y = m((x, c), training=True)
        total = m.compute_loss(x=(x, c), y=x, y_pred=y)
    mmd_value = float(m.mmd_tracker.result())
    assert mmd_value > 0
    # eta = alpha = 0: the total is the float32 beta * MMD exactly (0 * finite terms add 0); the
    # tracker holds fl32(total / beta), so 10 * mmd_value is off by one float32 rounding of it
    assert float(total) == pytest.approx(10.0 * mmd_value, rel=U, abs=0)
    g1 = m.decoder.get_layer("decoder_mmd_dense").kernel
    enc = m.encoder.get_layer("encoder_0_dense").kernel
    grads = tape.gradient(total, [g1, enc])
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_fit_reduces_loss_and_tracks_terms():
    keras.utils.set_random_seed(0)
    x, c = data(128)
    m = TRVAE(12, 2, **SMALL)
    m.compile(optimizer=keras.optimizers.Adam(1e-2))
    h = m.fit((x, c), x, batch_size=32, epochs=5, verbose=0).history
    assert {"loss", "reconstruction", "kl", "mmd"} <= set(h)
    assert h["loss"][-1] < h["loss"][0]


def test_save_load_gives_identical_outputs(tmp_path):
    keras.utils.set_random_seed(0)
    x, c = data(64)
    m = TRVAE(12, 3, **SMALL)
    m.compile(optimizer="adam")
    m.fit((x, c), x, batch_size=32, epochs=1, verbose=0)
    m.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    assert isinstance(loaded, TRVAE) and loaded.get_config() == m.get_config()
    onehot = np.eye(3, dtype="float32")[c]
    for a, b in zip(m.encoder.predict_on_batch([x, onehot]), loaded.encoder.predict_on_batch([x, onehot])):
        np.testing.assert_array_equal(a, b)
    z = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    np.testing.assert_array_equal(m.decoder.predict_on_batch([z, onehot])[0],
                                  loaded.decoder.predict_on_batch([z, onehot])[0])


def test_mmd_layer_serialises():
    layer = MMDLoss(beta=7.0, name="mmd")
    clone = MMDLoss.from_config(layer.get_config())
    assert clone.beta == 7.0 and len(clone.scales) == 19


def test_invalid_options():
    with pytest.raises(ValueError):
        TRVAE(12, 2, mmd_on="encoder")
    with pytest.raises(ValueError):
        TRVAE(12, 2, reconstruction="nb")


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_condition_injection_reaches_the_output_past_the_mmd_layer(arch):
    """Cut the condition out of g1: only ``"all"`` and ``"hidden"`` still let it change x_hat."""
    image = dict(arch="conv", filters=(4,), image_shape=(8, 8, 1)) if arch == "conv" else {}
    n_out = 64 if arch == "conv" else 12
    z = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    for injection, depends in (("first", False), ("hidden", True), ("all", True)):
        m = TRVAE(n_out, 2, condition_injection=injection, **SMALL, **image)
        dense = m.decoder.get_layer("decoder_mmd_dense")
        kernel = dense.get_weights()[0]
        kernel[4:] = 0.0                       # rows after z's 4 belong to the condition (or its embedding)
        dense.set_weights([kernel])
        outs = [m.decoder.predict_on_batch([z, np.tile(np.eye(2, dtype="float32")[k], (6, 1))]) for k in (0, 1)]
        # g1 no longer sees c: its condition rows are exact zeros, so both calls run the same float
        # operations on the same operands (0 * c = +0 adds nothing in any order): bitwise equal
        np.testing.assert_array_equal(outs[0][1], outs[1][1])
        assert (np.abs(outs[0][0] - outs[1][0]).max() > 1e-4) == depends, injection
        clone = TRVAE.from_config(m.get_config())
        assert clone.condition_injection == injection
        assert clone.decoder.count_params() == m.decoder.count_params()
    with pytest.raises(ValueError):
        TRVAE(12, 2, condition_injection="middle")


def test_hidden_injection_leaves_the_output_layer_without_the_condition():
    """``"hidden"``: the condition enters g2's layers, not the output layer (no per-condition output bias)."""
    widths = {}
    for injection in CONDITION_INJECTIONS:
        m = TRVAE(12, 2, condition_injection=injection, **SMALL)
        widths[injection] = (m.decoder.get_layer("decoder_0_dense").get_weights()[0].shape[0],
                             m.decoder.get_layer("reconstruction").get_weights()[0].shape[0])
    h = SMALL["hidden"][-1]
    assert widths["first"] == (SMALL["mmd_dim"], h)
    assert widths["hidden"] == (SMALL["mmd_dim"] + 2, h)
    assert widths["all"] == (SMALL["mmd_dim"] + 2, h + 2)


def test_layer_norm_normalises_each_cell_alone_and_saves(tmp_path):
    """``norm="layer"``: every dense block is LayerNorm (no BatchNorm left), so a cell's encoding
    in training mode does not depend on the other cells of its batch; BatchNorm's does."""
    x, c = data(32)
    onehot = np.eye(2, dtype="float32")[c]
    for norm, alone in (("batch", False), ("layer", True)):
        m = TRVAE(12, 2, norm=norm, dropout=0.0, **SMALL)   # training mode without dropout noise
        kinds = {type(layer).__name__ for net in (m.encoder, m.decoder) for layer in net.layers}
        assert ("LayerNormalization" in kinds) == (norm == "layer")
        assert ("BatchNormalization" in kinds) == (norm == "batch")
        whole = ops.convert_to_numpy(m.encoder([x, onehot], training=True)[0])[:4]
        part = ops.convert_to_numpy(m.encoder([x[:4], onehot[:4]], training=True)[0])
        # LayerNorm: the same float operations on the same row either way (float32 rounding of a
        # 12 -> 16 -> 8 -> 4 network on values of order 1: far below 1e-4); BatchNorm: other statistics
        assert (np.abs(whole - part).max() < 1e-4) == alone, norm
    m.compile(optimizer="adam")
    m.fit((x, c), x, batch_size=16, epochs=1, verbose=0)
    m.save(tmp_path / "ln.keras")
    loaded = keras.saving.load_model(tmp_path / "ln.keras", safe_mode=True, compile=False)
    assert loaded.norm == "layer" and loaded.get_config() == m.get_config()
    np.testing.assert_array_equal(m.encoder.predict_on_batch([x, onehot])[0],
                                  loaded.encoder.predict_on_batch([x, onehot])[0])
    # a model saved before the option existed has no "norm" in its config: BatchNorm, as it was trained
    config = m.get_config()
    config.pop("norm")
    assert TRVAE.from_config(config).norm == "batch"


def test_layer_norm_is_for_the_dense_network_only():
    with pytest.raises(ValueError, match="--norm layer is for the dense network"):
        TRVAE(64, 2, norm="layer", arch="conv", filters=(4,), image_shape=(8, 8, 1), **SMALL)
    with pytest.raises(ValueError):
        TRVAE(12, 2, norm="group")


def test_sampling_noise_is_keras_own_normal_draw():
    # the TensorFlow path names Philox (what "auto_select" resolves to on CPU and GPU) so that XLA
    # does not carry the algorithm as a runtime value; the draws must be Keras' own, exactly
    from trvae_cli.model.layers import standard_normal

    ours, theirs = keras.random.SeedGenerator(5), keras.random.SeedGenerator(5)
    for _ in range(3):   # and each draw advances the generator as Keras' does
        a = ops.convert_to_numpy(standard_normal((64, 10), "float32", ours))
        b = ops.convert_to_numpy(keras.random.normal((64, 10), dtype="float32", seed=theirs))
        assert np.array_equal(a, b)
    assert abs(a.mean()) < 5 / np.sqrt(a.size) and abs(a.std() - 1) < 0.1   # standard normal numbers


def test_validation_step_is_not_xla_compiled_and_training_still_is(monkeypatch):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the TensorFlow trainer's functions")
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    seen = []
    real = tf.function

    def spy(*args, **kwargs):      # what each of Keras' step functions is compiled with
        seen.append(kwargs.get("jit_compile"))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer.tf, "function", spy)
    m = TRVAE(n_genes=12, n_conditions=2, hidden=(8,), mmd_dim=4, latent_dim=2, seed=0)
    m.compile(optimizer="adam", jit_compile=True)
    m.make_train_function()
    train = [v for v in seen if v is not None]
    seen.clear()
    m.make_test_function()
    test = [v for v in seen if v is not None]
    assert train == [True] and test == [False] and m.jit_compile is True
    monkeypatch.undo()
    x = np.abs(np.random.default_rng(0).normal(size=(16, 12))).astype("float32")
    c = np.arange(16) % 2
    history = m.fit((x, c), x, epochs=1, batch_size=8, validation_data=((x, c), x), verbose=0).history
    assert np.isfinite(history["val_loss"]).all()


def _fmix32(h):
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _counter_hash_np(n, seed):
    """The reference, written from the formula in the docstring (uint32 arithmetic wraps mod 2**32)."""
    with np.errstate(over="ignore"):
        s = np.asarray(seed, np.int32).view(np.uint32)
        key = _fmix32(s[0] ^ _fmix32(s[1] + np.uint32(0x9E3779B9)))
        i = np.arange(n, dtype=np.uint32)
        return _fmix32(_fmix32(i * np.uint32(0x9E3779B9) + key) ^ key)


@pytest.mark.parametrize("seed", [(1, 2), (0, 0), (-5, 2**31 - 1), (-(2**31), 7)])
def test_counter_hash_matches_numpy_with_and_without_xla(seed):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the TensorFlow dropout mask")
    import tensorflow as tf

    from trvae_cli.model.layers import counter_hash

    want = _counter_hash_np(4099, seed)
    s = tf.constant(seed, tf.int32)
    assert np.array_equal(counter_hash(4099, s).numpy(), want)
    assert np.array_equal(tf.function(lambda s: counter_hash(4099, s), jit_compile=True)(s).numpy(), want)


def test_dropout_keeps_one_minus_rate_scales_and_is_reproducible():
    from trvae_cli.model.layers import Dropout

    x = np.arange(1, 512 * 128 + 1, dtype=np.float32).reshape(512, 128)
    layer = Dropout(0.1, seed=3)
    assert np.array_equal(ops.convert_to_numpy(layer(x, training=False)), x)        # identity at inference
    masks = []
    for _ in range(3):
        y = ops.convert_to_numpy(layer(x, training=True))
        kept = y != 0
        # kept entries are x / 0.9 to float32 rounding (one division); dropped ones exactly 0
        np.testing.assert_allclose(y[kept], x[kept] / np.float32(0.9), rtol=2 * U, atol=0)
        # keep fraction: Binomial(n, 0.9) / n, sd sqrt(0.09 / n) = 0.0012; 6 sd
        assert abs(kept.mean() - 0.9) < 6 * np.sqrt(0.09 / kept.size)
        masks.append(kept)
    a, b = masks[0].ravel().astype(float), masks[1].ravel().astype(float)
    assert not np.array_equal(a, b)                      # each call draws a new mask
    assert abs(np.corrcoef(a, b)[0, 1]) < 6 / np.sqrt(a.size)   # and an independent one
    rows, cols = masks[0].mean(axis=1), masks[0].mean(axis=0)     # no structure along either axis
    assert rows.std() < 2 * np.sqrt(0.09 / 128) and cols.std() < 2 * np.sqrt(0.09 / 512)
    again = Dropout(0.1, seed=3)
    assert np.array_equal(ops.convert_to_numpy(again(x, training=True)) != 0, masks[0])   # same seed, same masks
    other = Dropout(0.1, seed=4)    # the model seeds its layers seed + i: neighbours draw independent masks
    c = ops.convert_to_numpy(other(x, training=True)).ravel() != 0
    assert not np.array_equal(c, masks[0].ravel())
    assert abs(np.corrcoef(a, c.astype(float))[0, 1]) < 6 / np.sqrt(a.size)


def test_models_saved_with_keras_dropout_load_into_todays_layers(tmp_path, monkeypatch):
    """A model file written when the blocks used ``keras.layers.Dropout`` (before 2026-12-03) loads
    into today's layers: the same variables and weights, the same outputs. (Keras' model files do not
    keep a SeedGenerator's state, with either layer; resuming a training has its own checkpoint.)"""
    from trvae_cli.model import blocks
    from trvae_cli.model.layers import Dropout

    with monkeypatch.context() as patch:
        patch.setattr(blocks, "Dropout", keras.layers.Dropout)
        old = TRVAE(12, 2, dropout=0.2, **SMALL)
    assert any(type(layer) is keras.layers.Dropout for layer in old.encoder.layers)
    x = np.random.default_rng(0).random((20, 12)).astype("float32")
    codes = np.arange(20) % 2
    old.save(tmp_path / "old.keras")
    back = keras.saving.load_model(tmp_path / "old.keras", safe_mode=True, compile=False)
    drops = [layer for layer in back.encoder.layers + back.decoder.layers if isinstance(layer, Dropout)]
    assert drops and all(d.rate == 0.2 for d in drops)
    assert [v.shape for v in back.variables] == [v.shape for v in old.variables]   # (generator names are counters)
    for a, b in zip(back.variables, old.variables):
        if "seed_generator" in a.path:
            continue
        assert np.array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b)), a.path
    want = old.decode(old.encode(x, codes)[0], codes)[0]
    assert np.array_equal(back.decode(back.encode(x, codes)[0], codes)[0], want)


def test_encoder_hidden_narrows_the_encoder_alone_and_saves(tmp_path):
    """``encoder_hidden``: the encoder's layers take those sizes; the decoder still mirrors ``hidden``.
    A model file without the key (written before the option) loads as a mirrored network."""
    m = TRVAE(12, 2, encoder_hidden=(4,), **SMALL)
    assert m.encoder.get_layer("encoder_0_dense").get_weights()[0].shape == (12 + 2, 4)
    assert m.encoder.get_layer("encoder_1_dense").get_weights()[0].shape == (4, SMALL["mmd_dim"])
    assert m.decoder.get_layer("decoder_0_dense").get_weights()[0].shape == (SMALL["mmd_dim"], SMALL["hidden"][0])
    assert m.decoder.get_layer("reconstruction").get_weights()[0].shape == (SMALL["hidden"][0], 12)
    mirrored = TRVAE(12, 2, **SMALL)
    n_weights = lambda model: sum(int(np.prod(w.shape)) for w in model.weights)
    assert n_weights(mirrored) - n_weights(m) == (12 + 2) * (16 - 4) + (16 - 4) * SMALL["mmd_dim"] + 4 * (16 - 4)
    m.save(tmp_path / "narrow.keras")
    loaded = keras.saving.load_model(tmp_path / "narrow.keras", safe_mode=True, compile=False)
    assert loaded.get_config()["encoder_hidden"] == [4] and loaded.get_config() == m.get_config()
    legacy = {k: v for k, v in mirrored.get_config().items() if k != "encoder_hidden"}
    assert TRVAE.from_config(legacy).encoder.get_layer("encoder_0_dense").get_weights()[0].shape == (14, 16)
    with pytest.raises(ValueError, match="--encoder-hidden sizes must be >= 1"):
        TRVAE(12, 2, encoder_hidden=(0,), **SMALL)
