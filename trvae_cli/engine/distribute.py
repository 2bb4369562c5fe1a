"""Data-parallel training through ``tf.distribute`` (TensorFlow backend only).

``--strategy mirrored`` replicates the model on every local GPU (or the CPU when there is
none) with :class:`tf.distribute.MirroredStrategy`; ``--strategy multiworker`` runs one
process per node with :class:`tf.distribute.MultiWorkerMirroredStrategy`, the cluster
described by ``TF_CONFIG`` or, inside a Slurm job step, by ``SlurmClusterResolver``.

What changes under a strategy with R > 1 replicas (all recorded in the model's config):

- every global batch of ``--batch-size`` cells is split into R contiguous slices, one per
  replica; the feeder orders each batch so that every slice holds the conditions in
  proportion (:func:`~trvae_cli.data.batching.replica_order`), else a replica could see one
  condition only and its MMD term would vanish;
- the MMD is computed within each replica's slice and the gradients are averaged, so the
  MMD estimate uses batch/R cells (the same as training with batch/R and R times the steps);
- BatchNorm uses the statistics of the whole global batch (``synchronized=True``), so the
  moving statistics stay identical on every replica and worker;
- only the chief (worker 0) writes the model directory and checkpoints; every worker
  ends with the same weights (their digest is in the ``end`` event of the JSON log).

Keras 3.15's ``fit`` has two defects under ``MultiWorkerMirroredStrategy`` that the model
works around: it all-reduces the first input batch to build the model symbolically, which
fails on a ``PerReplica`` batch (keras-team/keras#20585; the model is built explicitly
first here, so that step is skipped), and it reduces the scalar logs along an axis 0 they
do not have (the steps return them with shape (1,) in multi-worker mode).
:func:`prepare_model` installs both work-arounds on the one model instance that trains under a
strategy, so the model class itself knows nothing of tf.distribute.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass

from ..config import STRATEGIES
from ..errors import TrvaeError



@dataclass
class Distribution:
    """The strategy a run trains under, and this process' place in it."""

    name: str = "none"
    strategy: object | None = None
    replicas: int = 1
    workers: int = 1
    worker_index: int = 0
    has_gpu: bool = False

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else nullcontext()

    def describe(self) -> dict:
        return {"strategy": self.name, "replicas": self.replicas, "workers": self.workers}


def _cluster_resolver(tf):
    """TF_CONFIG when set; else Slurm's environment inside a job step; else an error."""
    if os.environ.get("TF_CONFIG"):
        try:
            config = json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as exc:
            raise TrvaeError(f"TF_CONFIG is not valid JSON: {exc}") from None
        if "worker" not in config.get("cluster", {}) and "chief" not in config.get("cluster", {}):
            raise TrvaeError("TF_CONFIG has no 'cluster' with 'worker' addresses")
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if os.environ.get("SLURM_PROCID") is not None and os.environ.get("SLURM_STEP_NUM_TASKS"):
        port = int(os.environ.get("TRVAE_SLURM_PORT", "8888"))
        return tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=port)
    raise TrvaeError("--strategy multiworker needs the cluster: set TF_CONFIG on every worker, or start the "
                     "workers with srun inside a Slurm job")


def make_distribution(name: str) -> Distribution:
    """Create the strategy ``name`` (one of :data:`STRATEGIES`).

    Must run before TensorFlow executes anything in this process (a TensorFlow requirement
    for multi-worker training).
    """
    if name not in STRATEGIES:
        raise TrvaeError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "none":
        return Distribution()
    from ..backend import keras_module

    keras = keras_module()
    if keras.backend.backend() != "tensorflow":
        raise TrvaeError(f"--strategy {name} uses tf.distribute and needs KERAS_BACKEND=tensorflow "
                         f"(this run uses {keras.backend.backend()})")
    import tensorflow as tf

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        return Distribution(name, strategy, int(strategy.num_replicas_in_sync), has_gpu=has_gpu)
    resolver = _cluster_resolver(tf)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    spec = resolver.cluster_spec().as_dict()
    workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    # the chief: the "chief" task if the cluster names one, else worker 0
    index = task_id + (1 if "chief" in spec and task_type == "worker" else 0)
    if task_type == "chief":
        index = 0
    return Distribution(name, strategy, int(strategy.num_replicas_in_sync), max(workers, 1), index, has_gpu)


def in_multi_worker_mode() -> bool:
    """True inside a multi-worker strategy with more than one worker (TensorFlow only)."""
    import tensorflow as tf

    extended = tf.distribute.get_strategy().extended
    check = getattr(extended, "_in_multi_worker_mode", None)
    return bool(check()) if callable(check) else False


def prepare_model(model, dist: Distribution, example_shape: tuple) -> None:
    """Ready ``model`` (compiled, inside ``dist.scope()``) to train under ``dist``'s strategy.

    Sets the replica count its loss divides by, builds the model explicitly (the engine then
    builds its optimizer, for every strategy, so Keras skips its symbolic build), and wraps the train and test steps so that scalar logs
    get the axis Keras 3.15 reduces over in multi-worker mode. Nothing happens without a strategy.
    """
    if dist.strategy is None:
        return
    import types

    import numpy as np
    from keras import ops

    model.replicas = dist.replicas
    model((np.zeros((2, *example_shape), np.float32), np.zeros(2, np.int32)), training=False)
    cls = type(model)

    def replica_logs(logs: dict) -> dict:
        if not in_multi_worker_mode():
            return logs
        return {k: ops.reshape(v, (1,)) if len(v.shape) == 0 else v for k, v in logs.items()}

    def fully_built(self) -> bool:
        return all(layer.built for layer in self._flatten_layers()) and (
            self.optimizer is None or self.optimizer.built)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if fully_built(self):
            return None
        return cls._maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(maybe_symbolic_build, model)
    model.train_step = types.MethodType(lambda self, data: replica_logs(cls.train_step(self, data)), model)
    model.test_step = types.MethodType(lambda self, data: replica_logs(cls.test_step(self, data)), model)
