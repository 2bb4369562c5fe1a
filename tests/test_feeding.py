"""The tf.data pipeline feeds exactly the feeder's batches, epoch after epoch, and knows the sampler
state that draws each epoch (what a checkpoint saves) although it draws ahead of Keras."""

import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from trvae_cli.backend import keras_module
from trvae_cli.engine import feeding
from trvae_cli.engine.feeding import feed
from trvae_cli.sources.feeders import CellBatches


def _feeder(seed=3, fixed=False):
    x = sp.random(300, 7, density=0.3, format="csr", dtype=np.float32, random_state=0)
    labels = (np.arange(300) % 3).astype(np.int32)
    return CellBatches(x, np.arange(300), labels, 64, seed=seed, fixed=fixed)


def _by_hand(feeder, epochs):
    """What Keras reads from the PyDataset itself: on_epoch_begin, then every batch, per epoch;
    with the sampler's state before each epoch's draw."""
    out, states = [], []
    for _ in range(epochs):
        states.append(feeder.sampler.rng.bit_generator.state)
        feeder.on_epoch_begin()
        out.append([feeder[i] for i in range(len(feeder))])
    return out, states


def _assert_same(got, want):
    assert len(got) == len(want)
    for ((gx, gc), gy), ((wx, wc), wy) in zip(got, want):
        np.testing.assert_array_equal(np.asarray(gx), wx)
        np.testing.assert_array_equal(np.asarray(gc), wc)
        np.testing.assert_array_equal(np.asarray(gy), wy)


def _tensorflow():
    keras = keras_module()
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the tf.data feed is the TensorFlow backend's")
    return keras


@pytest.mark.parametrize("resident", [True, False], ids=["rows held in TensorFlow", "read a batch at a time"])
def test_every_epoch_is_the_feeders_own_draw_read_from_one_endless_stream(monkeypatch, resident):
    keras = _tensorflow()
    if not resident:
        monkeypatch.setattr(feeding, "RESIDENT_BYTES", 4 * 300 * 7 - 1)   # one byte short of these rows
    reads = []
    original = CellBatches.__getitem__
    monkeypatch.setattr(CellBatches, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    training = feed(_feeder(), (7,), keras)
    assert training.steps == len(_feeder())
    expected, states = _by_hand(_feeder(), 3)
    assert not np.array_equal(expected[0][0][0][0], expected[1][0][0][0])   # epochs differ
    stream = iter(training.data)
    for epoch, want in enumerate(expected):        # `steps` batches of the stream = one epoch
        _assert_same(list(itertools.islice(stream, training.steps)), want)
        # the stream has drawn (at least) this epoch: its state is the one before that draw
        assert training.sampler_state(epoch) == states[epoch]
    stream_reads = len(reads) - 3 * len(_feeder())        # _by_hand's own reads
    # resident: the stream gathers the batches from the rows in TensorFlow, never densifying one
    assert (stream_reads == 0) if resident else (stream_reads >= 3 * training.steps)


def test_the_state_of_an_epoch_not_drawn_yet_is_the_samplers_current_one():
    keras = _tensorflow()
    feeder = _feeder()
    training = feed(feeder, (7,), keras, first_epoch=5)
    before = feeder.sampler.rng.bit_generator.state
    assert training.sampler_state(5) == before          # nothing read: epoch 5 is drawn from it
    stream = iter(training.data)
    next(stream)
    assert training.sampler_state(5) == before          # drawn now, recorded before the draw
    assert feeder.sampler.rng.bit_generator.state != before


def _counted_validation_feeder(monkeypatch):
    """A validation feeder and the list of the batches read from it."""
    feeder = _feeder(fixed=True)
    reads = []
    original = feeder.__getitem__
    monkeypatch.setattr(CellBatches, "__getitem__", lambda self, i: reads.append(i) or original(i))
    return feeder, reads


def test_validation_is_read_once_and_replayed(monkeypatch):
    keras = _tensorflow()
    expected, _ = _by_hand(_feeder(fixed=True), 1)
    feeder, reads = _counted_validation_feeder(monkeypatch)
    validation = feed(feeder, (7,), keras)
    assert validation.steps is None                     # one finite pass; Keras iterates it anew
    for _ in range(3):
        _assert_same(list(validation.data), expected[0])
    assert len(reads) == len(feeder)                    # from the cache after the first pass


def test_a_large_validation_set_is_read_again_each_epoch(monkeypatch):
    keras = _tensorflow()
    monkeypatch.setattr(feeding, "CACHE_BYTES", 10)
    expected, _ = _by_hand(_feeder(fixed=True), 1)
    feeder, reads = _counted_validation_feeder(monkeypatch)
    validation = feed(feeder, (7,), keras)
    for _ in range(2):
        _assert_same(list(validation.data), expected[0])
    assert len(reads) == 2 * len(feeder)


def test_replicas_and_missing_data_keep_the_feeder():
    keras = keras_module()
    feeder = _feeder()
    kept = feed(feeder, (7,), keras, replicas=2)
    assert kept.data is feeder and kept.steps is None
    assert kept.sampler_state(0) == feeder.sampler.rng.bit_generator.state
    assert feed(None, (7,), keras) is None


def test_a_validation_pass_of_unequal_batches_is_replayed_in_order(monkeypatch):
    keras = _tensorflow()
    from trvae_cli.data.batching import BalancedSampler

    # the samplers draw batches of one size; unequal ones still come from --backed pools (the last
    # batch of a pool): drawn here as np.array_split would
    monkeypatch.setattr(BalancedSampler, "epoch", lambda self: [
        np.sort(b) for b in np.array_split(self.rng.permutation(len(self.labels)), self.n_batches)])
    x = sp.random(298, 7, density=0.3, format="csr", dtype=np.float32, random_state=0)
    labels = (np.arange(298) % 3).astype(np.int32)
    make = lambda: CellBatches(x, np.arange(298), labels, 64, seed=3, fixed=True, balanced=False)   # noqa: E731
    expected, _ = _by_hand(make(), 1)
    assert len({b[0][0].shape for b in expected[0]}) == 2          # 60 and 59 rows: chained, not stacked
    validation = feed(make(), (7,), keras)
    for _ in range(2):
        _assert_same(list(validation.data), expected[0])
