"""Where one training's time goes: the epoch (feeding, steps, validation, callbacks) and the step.

    python benchmarks/profile_training.py epoch      # Kang, NK held out, defaults, 2 threads
    python benchmarks/profile_training.py step       # one training step, alone, with parts removed

``epoch`` trains as ``trvae train`` does (``trvae_cli.api.train``) with timers around Keras' loop
(and prints the process' user and system CPU over the training):
each training step, the wait for its batch, the validation pass, each callback's epoch end and the
time between epochs, and prints medians and sums over the epochs after the first (the first holds
the tracing and XLA compilation, printed on its own). The timers are attached by wrapping the
engine's ``make_callbacks`` and two Keras methods, in this process only.

``step`` times one training step of the default model on a 512 x 6,998 batch (``--genes``, ``--batch-size``) of random data and
the same step with one part removed (the MMD; Adam, as SGD; dropout; half the hidden width), the
variants interleaved round-robin and the minimum kept, so that a busy machine slows all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kang_pbmc_valid.h5ad"


def profile_epoch(args) -> dict:
    import numpy as np

    import trvae_cli.engine.callbacks as engine_callbacks
    from keras.src.backend.tensorflow import trainer as tf_trainer
    from keras.src.trainers import epoch_iterator

    from trvae_cli import api
    from trvae_cli.config import RunOptions

    keras = engine_callbacks.keras
    times: dict[str, list[float]] = {}

    def add(key, seconds):
        times.setdefault(key, []).append(seconds)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t_epoch = self.last = time.perf_counter()
            if hasattr(self, "t_end"):
                add("between epochs (other callbacks, Keras)", self.t_epoch - self.t_end)

        def on_train_batch_begin(self, batch, logs=None):
            self.t_batch = time.perf_counter()
            add("waiting for a batch", self.t_batch - self.last)

        def on_train_batch_end(self, batch, logs=None):
            self.last = time.perf_counter()
            add("training step", self.last - self.t_batch)

        def on_test_begin(self, logs=None):
            self.t_test = time.perf_counter()
            add("last step to validation", self.t_test - self.last)

        def on_test_end(self, logs=None):
            add("validation pass", time.perf_counter() - self.t_test)

        def on_epoch_end(self, epoch, logs=None):
            self.t_end = time.perf_counter()
            add("epoch (to the first epoch-end callback)", self.t_end - self.t_epoch)

    original = engine_callbacks.make_callbacks

    def with_timer(*a, **k):
        early, reduce_lr, callbacks = original(*a, **k)
        for cb in callbacks:
            end = cb.on_epoch_end

            def timed(epoch, logs=None, end=end, key=f"callback {type(cb).__name__}"):
                t = time.perf_counter()
                end(epoch, logs)
                add(key, time.perf_counter() - t)

            cb.on_epoch_end = timed
        return early, reduce_lr, [Timer(), *callbacks]

    engine_callbacks.make_callbacks = with_timer
    reset = epoch_iterator.EpochIterator.reset

    def timed_reset(self):
        t = time.perf_counter()
        reset(self)
        add("Keras: validation iterator reset", time.perf_counter() - t)

    epoch_iterator.EpochIterator.reset = timed_reset
    assert hasattr(tf_trainer.TensorFlowTrainer, "evaluate")   # the loop these timers assume

    with tempfile.TemporaryDirectory() as tmp:
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        api.train(args.data, condition_key=args.condition_key, cell_type_key=args.cell_type_key,
                  exclude=[f"{args.cell_type}:{args.target}"], out=Path(tmp) / "model",
                  settings={"seed": args.seed, **json.loads(args.settings)},
                  options=RunOptions(threads=args.threads, force=True, progress="none"))
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    epochs = times["epoch (to the first epoch-end callback)"]
    steps_per_epoch = len(times["training step"]) // len(epochs)
    first = {"first epoch (tracing, XLA)": epochs[0],
             "its first step": times["training step"][0]}
    if "validation pass" in times:
        first["its validation pass"] = times["validation pass"][0]
    rows = {}
    for key, values in times.items():
        skip = steps_per_epoch if key in ("training step", "waiting for a batch") else 1
        rest = np.asarray(values[skip:] if key != "between epochs (other callbacks, Keras)" else values)
        if len(rest):
            rows[key] = {"median_ms": 1e3 * float(np.median(rest)), "sum_s": float(rest.sum()), "n": len(rest)}
    return {"wall_s": wall, "user_s": ru1.ru_utime - ru0.ru_utime, "system_s": ru1.ru_stime - ru0.ru_stime,
            "epochs": len(epochs), "steps_per_epoch": steps_per_epoch, "first": first, "rows": rows}


def profile_step(args) -> dict:
    from trvae_cli.backend import keras_module

    keras = keras_module(threads=args.threads)
    import numpy as np
    import tensorflow as tf

    from trvae_cli.model import TRVAE

    genes, batch = args.genes, args.batch_size
    rng = np.random.default_rng(0)
    x = tf.constant(np.maximum(rng.normal(0, 1, (batch, genes)), 0).astype(np.float32))
    c = tf.constant((np.arange(batch) % 2).astype(np.int32))
    variants = {
        "default step": {},
        "without the MMD": {"mmd_on": "none"},
        "without the MMD, SGD for Adam": {"mmd_on": "none", "optimizer": "sgd"},
        "without the MMD, no dropout": {"mmd_on": "none", "dropout": 0.0},
        "without the MMD, hidden 64 (half the gene-wide matmuls)": {"mmd_on": "none", "hidden": (64,)},
        "default step, no XLA": {"jit": False},
    }
    models = {}
    for name, kw in variants.items():
        kw = dict(kw)
        jit = kw.pop("jit", True)
        optimizer = keras.optimizers.SGD(1e-3) if kw.pop("optimizer", "adam") == "sgd" else keras.optimizers.Adam(1e-3)
        model = TRVAE(n_genes=genes, n_conditions=2, seed=0, **kw)
        model.compile(optimizer=optimizer, jit_compile=jit)
        model.train_on_batch((x, c), x)
        models[name] = model
    best = {name: float("inf") for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            t = time.perf_counter()
            for _ in range(5):
                model.train_on_batch((x, c), x)
            best[name] = min(best[name], (time.perf_counter() - t) / 5)
    flops = 5 * 2 * batch * genes * 128    # the two genes x 128 layers: 2 forward, 3 backward (no input gradient)
    return {"ms_per_step": {k: 1e3 * v for k, v in best.items()}, "big_matmul_gflop": flops / 1e9}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("epoch", "step"))
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--condition-key", default="condition")
    p.add_argument("--cell-type-key", default="cell_type")
    p.add_argument("--cell-type", default="NK")
    p.add_argument("--to", dest="target", default="stimulated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--genes", type=int, default=6998, help="step: genes of the random batch")
    p.add_argument("--batch-size", type=int, default=512, help="step: cells of the random batch")
    p.add_argument("--rounds", type=int, default=6, help="step: round-robin rounds (the minimum is kept)")
    p.add_argument("--settings", default="{}", help='epoch: training settings as JSON, e.g. \'{"jit": false}\'')
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.part == "epoch":
        if not Path(args.data).is_file():
            print(f"error: no data file {args.data}", file=sys.stderr)
            return 2
        r = profile_epoch(args)
        print(f"wall {r['wall_s']:.1f} s (reading, training, saving), {r['epochs']} epochs of "
              f"{r['steps_per_epoch']} steps")
        # the kernel's share: page faults and zeroing show here (the sixteenth session found 26 % of
        # the step in them before host memory was pooled)
        print(f"CPU {r['user_s']:.1f} s user, {r['system_s']:.1f} s system")
        for key, value in r["first"].items():
            print(f"  {key:58s} {value:8.2f} s")
        print(f"  {'after the first epoch':58s} {'median':>8s}  {'sum':>8s}")
        for key, row in r["rows"].items():
            print(f"  {key:58s} {row['median_ms']:6.1f} ms {row['sum_s']:7.2f} s")
    else:
        r = profile_step(args)
        for key, ms in r["ms_per_step"].items():
            print(f"  {key:58s} {ms:6.1f} ms")
        print(f"  (the two {args.genes:,} x 128 layers are {r['big_matmul_gflop']:.1f} GFLOP a step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
