"""The tf.data pipeline that prefetches training batches feeds exactly the feeder's batches."""

import numpy as np
import scipy.sparse as sp

from trvae_cli.backend import keras_module
from trvae_cli.engine.feeding import for_backend
from trvae_cli.sources.feeders import CellBatches


def _feeder(seed=3, fixed=False):
    x = sp.random(300, 7, density=0.3, format="csr", dtype=np.float32, random_state=0)
    labels = (np.arange(300) % 3).astype(np.int32)
    return CellBatches(x, np.arange(300), labels, 64, seed=seed, fixed=fixed)


def _by_hand(feeder, epochs):
    out = []
    for _ in range(epochs):
        feeder.on_epoch_begin()
        out.append([feeder[i] for i in range(len(feeder))])
    return out


def test_every_epoch_is_the_feeders_own_draw():
    keras = keras_module()
    dataset = for_backend(_feeder(), (7,), keras)
    assert keras.backend.backend() != "tensorflow" or dataset.cardinality().numpy() == len(_feeder())
    expected = _by_hand(_feeder(), 3)
    assert not np.array_equal(expected[0][0][0][0], expected[1][0][0][0])   # epochs differ
    for want in expected:                                   # one pass of the dataset = one epoch
        got = list(dataset) if dataset is not None else []
        assert len(got) == len(want)
        for ((gx, gc), gy), ((wx, wc), wy) in zip(got, want):
            np.testing.assert_array_equal(np.asarray(gx), wx)
            np.testing.assert_array_equal(np.asarray(gc), wc)
            np.testing.assert_array_equal(np.asarray(gy), wy)


def test_replicas_and_missing_data_keep_the_feeder():
    keras = keras_module()
    feeder = _feeder()
    assert for_backend(feeder, (7,), keras, replicas=2) is feeder
    assert for_backend(None, (7,), keras) is None
