"""How the training and validation batches reach the backend.

The feeders of :mod:`trvae_cli.sources.feeders` are Keras ``PyDataset`` s, which every backend
takes. Under TensorFlow, Keras turns a ``PyDataset`` into a ``tf.data`` generator that it starts
again at every epoch and reads one batch at a time on the training thread. Measured on Kang (2
cores, 6,998 genes, batch 512, ~1,700 training cells, 4 steps an epoch) that cost, per epoch,
53 ms waiting for the first batch (the generator's restart) and 87 ms for a validation pass whose
arithmetic is about 8 ms: 30 % of the epoch.

:func:`feed` builds instead, once per ``fit``:

* for training, one endless stream over every epoch (a counter mapped through one NumPy function
  that reads the feeder), read ``steps`` batches an epoch, behind a ``prefetch``: the next epoch's
  first batches are prepared while the current epoch ends. Each
  epoch still begins with the feeder's ``on_epoch_begin`` draw, in the same order, so the batches
  are the feeder's own; because that draw can now happen before Keras ends the previous epoch,
  :meth:`Feed.sampler_state` returns the sampler's state *before* a given epoch's draw (what a
  checkpoint must save to resume that epoch);
* for validation (``fixed`` feeders, the same batches every epoch), one pass read when the feed
  is built and replayed from tensors (:func:`held_pass`), when it is at most :data:`CACHE_BYTES`;
  a larger one is read again each epoch. Keras starts a new iterator over it at every epoch, so
  it is one finite pass.

The feeder's ``(x, condition)`` enters TensorFlow once; the target ``x`` is the same tensor, added
in the graph: one copy of each batch, not two. When the training rows are a matrix in memory
(``can_reside``) of at most :data:`RESIDENT_BYTES` dense, they enter TensorFlow once, all of them,
and the NumPy function returns only each batch's positions, gathered in TensorFlow: on Kang the
NumPy function had spent 13 ms of CPU per batch (densifying it, under the GIL) beside a 50 ms step
on 2 cores. The batches are the same floats in the same order either way.

Multi-replica strategies keep the ``PyDataset`` (its batches are already dealt to the replicas,
:func:`~trvae_cli.sources.feeders.training_batch`), and so do the JAX and PyTorch backends.
"""

from __future__ import annotations

import threading

PREFETCH = 2                 # batches prepared ahead: one in the step, one being read is enough on 2 cores
CACHE_BYTES = 256 * 2**20    # a validation pass held as tensors (dense float32) when at most this
RESIDENT_BYTES = 256 * 2**20  # training rows held dense in TensorFlow, batches gathered there, when at most this


class Feed:
    """One input of ``model.fit``: ``data`` (a ``tf.data.Dataset`` or the ``PyDataset`` itself) and
    ``steps`` (batches per epoch when ``data`` is endless, else None)."""

    def __init__(self, batches, data, steps: int | None, states: dict | None = None, lock=None):
        self.batches = batches
        self.data = data
        self.steps = steps
        self._states = states
        self._lock = lock

    def sampler_state(self, epoch: int) -> dict:
        """The training sampler's random state with which epoch ``epoch`` (0-based) is drawn."""
        if self._states is None:          # Keras draws each epoch itself, at its start
            return self.batches.sampler.rng.bit_generator.state
        with self._lock:
            for old in [k for k in self._states if k < epoch]:
                del self._states[old]
            if epoch in self._states:      # the generator has already drawn it
                return self._states[epoch]
            return self.batches.sampler.rng.bit_generator.state


def feed(batches, example_shape: tuple, keras, replicas: int = 1, first_epoch: int = 0) -> Feed | None:
    """``batches`` (a PyDataset of ``((x, condition), x)``, or None) as the backend reads it fastest;
    ``first_epoch``: the epoch ``fit`` starts at (a resumed run's)."""
    if batches is None:
        return None
    if keras.backend.backend() != "tensorflow" or replicas > 1:
        return Feed(batches, batches, None)
    import numpy as np
    import tensorflow as tf

    n = len(batches)
    dense_bytes = 4 * batches.n_items * int(np.prod(example_shape))   # all its rows as float32
    lock = threading.Lock()
    states: dict = {}

    def in_epoch(i) -> int:
        """The i-th batch since ``first_epoch`` began is batch b of its epoch; the first draws that epoch."""
        epoch, b = divmod(int(i), n)
        if b == 0:
            with lock:
                states[first_epoch + epoch] = batches.sampler.rng.bit_generator.state
                batches.on_epoch_begin()   # this epoch's draw, as Keras makes it for a PyDataset
        return b

    def batch_number(i):
        (x, condition), _ = batches[in_epoch(i)]
        return np.asarray(x, np.float32), np.asarray(condition, np.int32)

    def batch_positions(i):
        """The batch's positions in the feeder's resident rows, instead of its data."""
        at = batches.positions(in_epoch(i))
        return np.asarray(at, np.int64), np.asarray(batches.labels[at], np.int32)

    def positions(i):
        at, condition = tf.numpy_function(batch_positions, [i], (tf.int64, tf.int32), stateful=True)
        at.set_shape((None,))
        condition.set_shape((None,))
        return at, condition

    def read(i):
        x, condition = tf.numpy_function(batch_number, [i], (tf.float32, tf.int32), stateful=True)
        x.set_shape((None, *example_shape))
        condition.set_shape((None,))
        return x, condition

    def one_fixed_pass():
        batches.on_epoch_begin()
        for i in range(n):
            (x, condition), _ = batches[i]
            yield x, condition

    signature = (tf.TensorSpec((None, *example_shape), tf.float32), tf.TensorSpec((None,), tf.int32))
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # nothing here is AUTOTUNE'd, and tearing down an iterator waits for tf.data's autotuning
    # thread, whose sleeps grow through a training: with it on, `fit` returned 4-40 s after its
    # last epoch, idle (Kang, 40 epochs: 17-20 s in 3 of 3 runs; off: 0.02 s in 3 of 3)
    options.autotune.enabled = False

    def as_training_pairs(dataset):
        return dataset.map(lambda x, condition: ((x, condition), x))

    if batches.fixed:
        # Keras starts a new iterator over the validation data at every epoch (and drops the last
        # one: dropping one of an endless prefetching stream took 300 ms), so this is one pass
        if dense_bytes <= CACHE_BYTES:
            return Feed(batches, held_pass(tf, one_fixed_pass()).with_options(options), None)
        dataset = tf.data.Dataset.from_generator(one_fixed_pass, output_signature=signature)
        dataset = as_training_pairs(dataset.apply(tf.data.experimental.assert_cardinality(n)))
        return Feed(batches, dataset.with_options(options).prefetch(PREFETCH), None)
    # a counter mapped through one NumPy function, read in order: no generator, whose teardown
    # when early stopping ended the stream mid-epoch sometimes blocked for 30 s
    if getattr(batches, "can_reside", False) and dense_bytes <= RESIDENT_BYTES:
        rows = tf.convert_to_tensor(batches.resident())
        dataset = tf.data.Dataset.counter().map(positions).map(lambda at, c: (tf.gather(rows, at), c))
    else:
        dataset = tf.data.Dataset.counter().map(read)
    dataset = as_training_pairs(dataset)
    return Feed(batches, dataset.with_options(options).prefetch(PREFETCH), n, states, lock)


def held_pass(tf, pass_):
    """One pass of ``(x, condition)`` batches, read now, as a dataset of ``((x, condition), x)``
    tensors that a new iterator replays without running anything upstream.

    Keras makes a new iterator over the validation data at every epoch. Over a ``from_generator``
    pass behind a full ``cache()`` (the earlier form), each new one still cost about 40 ms: the
    validation pass in ``fit`` took 54-81 ms against 22-41 ms over ``from_tensors`` data, at Kang's
    189 validation cells and 6,998 genes on 2 cores. In a whole Kang training the median pass went
    from 76 to 61 ms (``benchmarks/README.md``, eighth session). Batches of one shape are sliced from one stacked tensor, others chained (the sampler's
    unbalanced passes differ by a row); the floats and their order are the feeder's own.
    """
    xs, cs = zip(*[(tf.convert_to_tensor(x, tf.float32), tf.convert_to_tensor(c, tf.int32)) for x, c in pass_])
    if len({tuple(x.shape) for x in xs}) == 1:
        x, c = tf.stack(xs), tf.stack(cs)
        return tf.data.Dataset.from_tensor_slices(((x, c), x))
    dataset = None
    for x, c in zip(xs, cs):
        one = tf.data.Dataset.from_tensors(((x, c), x))
        dataset = one if dataset is None else dataset.concatenate(one)
    return dataset
