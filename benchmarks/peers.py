"""trvae against scArches' TRVAE on one held-out cell type: time, CPU and prediction quality.

    python benchmarks/peers.py                               # Kang, NK held out, 3 repetitions, all cores
    python benchmarks/peers.py --threads 1 --reps 5 --out runs/peers_1t
    python benchmarks/peers.py --smoke                       # 2 epochs each side: checks the pipeline only
    python benchmarks/peers.py --cell-type B -- --beta 2     # anything after -- goes to every `trvae train`

The peer is scArches (``scarches==0.6.1``), installed into its own virtual environment
(``--venv``, default ``runs/peers-venv/``; reused when it already imports scArches 0.6.1): never a
dependency of trvae. The install is ``pip install torch==2.13.0`` first (the CPU build that lies
on this machine's disk; without it pip would fetch a CUDA build of several GB), then
``scarches==0.6.1`` with anndata 0.11.4, zarr 2.18.7, numcodecs 0.15.2, pandas 2.3.3, NumPy 2.4.6,
scanpy 1.11.5 and scvi-tools 1.4.2 pinned: scArches 0.6.1 imports ``anndata.read``, which anndata
0.12 removed, anndata 0.11 refuses zarr 3, and with only those two capped pip chose a pandas
built for NumPy 1.

Each repetition (seed S) runs both sides, each step a fresh process, the sides' order alternating
from one repetition to the next (trvae first at even repetitions):

* **trvae**: ``trvae train DATA --condition C --cell-type-key K --exclude CT:TO --seed S --threads T -q``
  at the tool's defaults, ``trvae transform --from FROM --to TO --cell-type CT --seed S`` (the
  default decode, timed) and ``--decode mean`` (decoded means, like the peer's prediction; untimed row).
* **scArches**: this file run by the venv's Python (``--worker train`` / ``--worker predict``):
  ``sca.models.TRVAE`` at its trVAE tutorial's settings -- hidden ``[128, 128]``, latent 10,
  ``recon_loss='mse'`` (X is log-normalised), ``use_mmd=True``, ``mmd_on='y'`` (MMD on the first
  decoder layer, as trvae's default; ``--scarches-mmd-on z`` for scArches' own default), beta 1,
  up to 500 epochs, ``alpha_epoch_anneal=200``, ``early_stopping_kwargs`` =
  ``{early_stopping_metric: val_unweighted_loss, threshold: 0, patience: 20, reduce_lr: True,
  lr_patience: 13, lr_factor: 0.1}``, ``seed=S``; X densified first, as the tutorial does
  (``remove_sparsity``). scArches 0.6.1 has no condition-transfer call, so ``predict`` encodes the
  held-out CT cells of condition FROM to the posterior mean of z (``get_latent(mean=True)``),
  decodes them with condition TO (``model.decoder(z, TO)``, eval mode: no dropout) and writes the
  decoded means as an ``.h5ad``. scArches' ``reload_best`` keeps ``state_dict()``, which shares the
  live tensors, so its model is that of the last epoch whatever its ``best_epoch`` says: run as the
  package runs, not corrected.
* **Scoring**: one ``trvae evaluate --json`` per repetition over the three predictions, the task
  given explicitly (``--real/--condition/--from/--to/--cell-type-key/--cell-type``), seeded with S.

Every process gets the same thread cap: ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``, ``TF_NUM_INTRAOP_THREADS``, ``TF_NUM_INTEROP_THREADS`` = T, trvae's
``--threads T``, and ``torch.set_num_threads(T)`` in the scArches worker. Each process is timed
from its start to its exit (training: imports, reading the data, training, the model saved):
wall time by the clock, CPU time (user + system) and peak RSS from ``os.wait4``. "Cores busy" is
CPU / wall. Each side also reports its own training-loop seconds and the median seconds of an
epoch after the first (trvae's first epoch includes the XLA compile).

Outputs under ``--out`` (default ``runs/peers/``; ``runs/peers-smoke/`` with ``--smoke``):
  peers.csv        one row per (side, seed): times, CPU, memory, epochs, every evaluate figure
  peers.md         the summary table (min / median times, R² mean ± sd over repetitions) and the settings
  peers.meta.json  settings, machine, versions of both sides (a resumed run must match them)
  work/            models, predictions, the evaluate JSON and each process's log
A finished (side, seed) is not run again: the same command continues an interrupted benchmark.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kang_pbmc_valid.h5ad"
DEFAULT_VENV = ROOT / "runs" / "peers-venv"
SCARCHES = "scarches==0.6.1"
# scArches 0.6.1 imports anndata.read (gone in anndata 0.12), and anndata 0.11 refuses zarr 3; left to
# itself with those two caps pip backtracked to pandas 1.5.3, built for NumPy 1 ("numpy.dtype size
# changed"): the set that was seen to work is pinned whole
SCARCHES_PINS = (SCARCHES, "anndata==0.11.4", "zarr==2.18.7", "numcodecs==0.15.2", "pandas==2.3.3", "numpy==2.4.6",
                 "scanpy==1.11.5", "scvi-tools==1.4.2")
TORCH = "torch==2.13.0"          # the CPU build on this machine's disk (python.md); asked for first
SIDES = ("trvae", "scArches")
# the evaluate labels: trvae's default transform, its decoded means, the peer's decoded means
LABELS = {"trvae": "trvae", "trvae_mean": "trvae (mean)", "scArches": "scArches"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
SCARCHES_TUTORIAL = {
    "hidden_layer_sizes": [128, 128], "latent_dim": 10, "recon_loss": "mse", "use_mmd": True, "beta": 1.0,
    "n_epochs": 500, "alpha_epoch_anneal": 200,
    "early_stopping_kwargs": {"early_stopping_metric": "val_unweighted_loss", "threshold": 0, "patience": 20,
                              "reduce_lr": True, "lr_patience": 13, "lr_factor": 0.1},
}
METRICS = ("r2_mean_degs", "r2_var_degs", "r2_mean_all", "r2_var_all")
COLUMNS = ["side", "label", "seed", "rep", "order", "threads",
           "train_wall_s", "train_cpu_s", "train_sys_s", "train_cores", "train_peak_rss_gb", "train_loop_s", "epochs",
           "best_epoch", "epoch_s_median", "first_epoch_s",
           "transform_wall_s", "transform_cpu_s", "transform_cores", "transform_peak_rss_gb", "n_cells"]
for _m in METRICS:
    COLUMNS += [_m, f"{_m}_sd", f"{_m}_full"]
COLUMNS += ["change_pearson_degs", "change_pearson_all", "deg_recovery", "mmd_pca", "edistance_pca",
            "edistance_ratio"]


# --------------------------------------------------------------------------- pure helpers


def parse(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--condition-key", default="condition")
    p.add_argument("--cell-type-key", default="cell_type")
    p.add_argument("--cell-type", default="NK", help="the held-out cell type (default: %(default)s)")
    p.add_argument("--from", dest="source", default="control")
    p.add_argument("--to", dest="target", default="stimulated")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default: 3, or as many as --seeds)")
    p.add_argument("--seeds", default=None, help="comma-separated, one per repetition (default: 0..reps-1)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="thread cap of every process, both sides (default: all %(default)s CPUs)")
    p.add_argument("--out", default=None, help="results folder (default: runs/peers/, runs/peers-smoke/ with --smoke)")
    p.add_argument("--trvae-args", default="", help="extra `trvae train` arguments, one shell-quoted string "
                                                    "(also: everything after --)")
    p.add_argument("--scarches-mmd-on", choices=("y", "z"), default="y",
                   help="y: the first decoder layer, like trvae's default (default); z: scArches' default")
    p.add_argument("--n-degs", type=int, default=100)
    p.add_argument("--n-subsamples", type=int, default=100)
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="scArches' virtual environment (default: %(default)s)")
    p.add_argument("--skip-install", action="store_true", help="use --venv as it is; stop if scArches is not there")
    p.add_argument("--smoke", action="store_true", help="2 epochs on each side, 5 subsamples: the pipeline only")
    p.add_argument("--summary-only", action="store_true", help="rebuild the table from the CSV")
    p.add_argument("--worker", choices=("train", "predict"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--pred", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.train_args = shlex.split(args.trvae_args) + extra
    if args.worker:
        return args
    try:
        args.seed_list = seed_list(args.reps, args.seeds)
    except ValueError as exc:
        p.error(str(exc))
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.out is None:
        args.out = str(ROOT / "runs" / ("peers-smoke" if args.smoke else "peers"))
    return args


def seed_list(reps: int | None, seeds: str | None) -> list[int]:
    """One seed per repetition: --seeds as given, else 0..reps-1 (reps defaults to 3)."""
    if seeds:
        values = [int(s) for s in seeds.split(",") if s.strip()]
        if not values:
            raise ValueError("--seeds is empty")
        if len(set(values)) != len(values):
            raise ValueError(f"--seeds repeats a seed: {seeds}")
        if reps is not None and reps != len(values):
            raise ValueError(f"--reps {reps} but {len(values)} --seeds")
        return values
    reps = 3 if reps is None else reps
    if reps < 1:
        raise ValueError("--reps must be >= 1")
    return list(range(reps))


def side_order(rep: int) -> tuple[str, str]:
    """trvae first at even repetitions, scArches first at odd ones (drift and warm caches cancel)."""
    return SIDES if rep % 2 == 0 else SIDES[::-1]


def thread_env(threads: int, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    return env


def median(values):
    v = sorted(x for x in values if x is not None and x == x)
    if not v:
        return float("nan")
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def mean_sd(values) -> tuple[float, float, int]:
    v = [x for x in values if x is not None and x == x]
    if not v:
        return float("nan"), float("nan"), 0
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else float("nan")
    return m, sd, len(v)


def num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def epoch_times(seconds: list[float]) -> tuple[float, float]:
    """(first epoch, median of the others): the first includes compiling (trvae: XLA)."""
    if not seconds:
        return float("nan"), float("nan")
    return seconds[0], median(seconds[1:]) if len(seconds) > 1 else float("nan")


def summarize_rows(rows: list[dict]) -> dict:
    """{label: {column: (min, median, mean, sd, n)}} over repetitions, every numeric column."""
    out: dict = {}
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label]
        out[label] = {}
        for c in COLUMNS[6:]:
            vals = [num(r.get(c)) for r in rs]
            vals = [v for v in vals if v == v]
            m, sd, n = mean_sd(vals)
            out[label][c] = (min(vals) if vals else float("nan"), median(vals), m, sd, n)
    return out


def _f(v, digits=1):
    return "–" if v != v else f"{v:.{digits}f}"


def _pm(m, sd, digits=3):
    if m != m:
        return "–"
    return f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd == sd else "")


def summary_markdown(rows: list[dict], settings: dict | None = None) -> str:
    """The table: per side min / median times, CPU, cores busy, epochs, R² (mean ± sd), and the ratios."""
    s = summarize_rows(rows)
    order = [LABELS[k] for k in ("trvae", "trvae_mean", "scArches") if LABELS[k] in s]
    order += [k for k in s if k not in order]
    n = max((s[k]["r2_mean_degs"][4] for k in order), default=0)
    header = ["side", "train wall s", "train CPU s", "of it system s", "cores busy", "peak RSS GB", "loop s", "epochs", "s / epoch",
              "transform wall s", "R² DEG means", "R² DEG vars", "R² all means", "R² all vars"]
    lines = [f"**trvae vs scArches TRVAE**, {n} repetition{'s' if n != 1 else ''}; times: min / median, the "
             "others median; R²: mean ± sd over repetitions", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for k in order:
        c = s[k]
        timed = k != LABELS["trvae_mean"]      # the decoded-means row shares trvae's model; its transform is untimed
        t = (f"{_f(c['train_wall_s'][0])} / {_f(c['train_wall_s'][1])}", _f(c["train_cpu_s"][1]),
             _f(c["train_sys_s"][1]), _f(c["train_cores"][1], 2), _f(c["train_peak_rss_gb"][1], 2), _f(c["train_loop_s"][1]),
             _f(c["epochs"][1], 0), _f(c["epoch_s_median"][1], 3),
             f"{_f(c['transform_wall_s'][0])} / {_f(c['transform_wall_s'][1])}") if timed else ("(same model)",) + ("",) * 8
        r2 = tuple(_pm(c[m][2], c[m][3]) for m in METRICS)
        lines.append(f"| {k} | " + " | ".join(t + r2) + " |")
    a, b = s.get(LABELS["trvae"]), s.get(LABELS["scArches"])
    lines.append("")
    if a and b:
        for col, what in (("train_wall_s", "training wall time"), ("train_cpu_s", "training CPU time"),
                          ("transform_wall_s", "transform wall time")):
            ratio = a[col][1] / b[col][1] if b[col][1] and b[col][1] == b[col][1] else float("nan")
            lines.append(f"- trvae / scArches, median {what}: **{_f(ratio, 2)}**")
        lines.append("")
    if settings:
        lines.append("Settings: " + ", ".join(f"{k} = {v}" for k, v in settings.items()))
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- timed processes


def timed(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` to its end, stdout+stderr to ``log``; wall, CPU (user + sys), the system part of it
    and peak RSS of the process (and of its waited-for children) from ``os.wait4``. A large system
    share is the kernel's work for the process (page faults, zeroing pages): the sixteenth session
    found 26 % of trvae's step there, from TensorFlow's default CPU allocator."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(map(str, cmd)) + "\n")
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    cpu = ru.ru_utime + ru.ru_stime
    if proc.returncode:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)} (log: {log})")
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "sys_s": round(ru.ru_stime, 2), "cores": round(cpu / wall, 2) if wall else float("nan"),
            "peak_rss_gb": round(ru.ru_maxrss / 1024 ** 2, 3)}


def trvae_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "trvae_cli.cli", *map(str, args)]


def trvae_env(threads: int) -> dict:
    env = thread_env(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def peer_env(threads: int) -> dict:
    env = thread_env(threads)
    env.pop("PYTHONPATH", None)
    env.pop("KERAS_BACKEND", None)
    return env


# --------------------------------------------------------------------------- the peer's environment


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_ready(venv: Path) -> str | None:
    """None when the venv imports scArches 0.6.1; else why not."""
    py = venv_python(venv)
    if not py.exists():
        return f"no Python at {py}"
    res = subprocess.run([str(py), "-c", "import warnings; warnings.simplefilter('ignore'); import logging; "
                          "logging.disable(logging.WARNING); import scarches, torch; "
                          "from importlib.metadata import version; print(version('scarches'), torch.__version__)"],
                         capture_output=True, text=True, env=peer_env(1))
    if res.returncode:
        return f"scArches does not import: {(res.stderr.strip().splitlines() or ['?'])[-1]}"
    got = res.stdout.split()
    if not got or got[0] != SCARCHES.split("==")[1]:
        return f"scArches {got[:1]} instead of {SCARCHES}"
    return None


def ensure_venv(venv: Path, skip_install: bool) -> Path:
    why = venv_ready(venv)
    if why is None:
        return venv_python(venv)
    if skip_install:
        sys.exit(f"error: --skip-install, but {venv} is not ready ({why})")
    print(f"installing {SCARCHES} into {venv} ({why}); this takes minutes", file=sys.stderr, flush=True)
    log = venv / "install.log"
    venv.mkdir(parents=True, exist_ok=True)
    steps = ([sys.executable, "-m", "venv", str(venv)],
             [str(venv_python(venv)), "-m", "pip", "install", TORCH],
             [str(venv_python(venv)), "-m", "pip", "install", *SCARCHES_PINS])
    with open(log, "a") as fh:
        for cmd in steps:
            fh.write("$ " + shlex.join(cmd) + "\n")
            fh.flush()
            if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode:
                sys.exit(f"error: `{shlex.join(cmd)}` failed; see {log}")
    why = venv_ready(venv)
    if why is not None:
        sys.exit(f"error: installed, but {why}; see {log}")
    return venv_python(venv)


def peer_versions(py: Path) -> dict:
    code = ("import json; from importlib.metadata import version as v; import platform; "
            "print(json.dumps({p: v(p) for p in ('scarches', 'torch', 'anndata', 'scanpy', 'numpy', 'scvi-tools')} "
            "| {'python': platform.python_version()}))")
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=peer_env(1))
    return json.loads(res.stdout) if res.returncode == 0 else {"error": res.stderr.strip()[-200:]}


# --------------------------------------------------------------------------- the scArches worker (venv Python)


def _quiet_imports():
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)     # scArches warns about every optional model it cannot import


def worker_train(args) -> None:
    """Train scArches' TRVAE on DATA minus (cell type, --to); save it and peers.json (epochs, seconds)."""
    _quiet_imports()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    np.random.seed(args.seed)            # scArches' train/validation split uses NumPy's global state
    torch.manual_seed(args.seed)
    import anndata as ad
    import scarches as sca
    from scarches.trainers.trvae.trainer import Trainer

    adata = ad.read_h5ad(args.data)
    cond = adata.obs[args.condition_key].astype(str).values
    ctype = adata.obs[args.cell_type_key].astype(str).values
    adata = adata[~((ctype == args.cell_type) & (cond == args.target))].copy()
    if hasattr(adata.X, "toarray"):      # the tutorial's remove_sparsity
        adata.X = adata.X.toarray()
    adata.X = np.asarray(adata.X, dtype=np.float32)
    adata.obs[args.condition_key] = adata.obs[args.condition_key].astype(str)
    conditions = sorted(adata.obs[args.condition_key].unique().tolist())

    stamps = []
    original = Trainer.on_epoch_end

    def on_epoch_end(self):              # observe only: a time stamp per epoch
        original(self)
        stamps.append(time.perf_counter())

    Trainer.on_epoch_end = on_epoch_end
    t = SCARCHES_TUTORIAL
    model = sca.models.TRVAE(adata, condition_key=args.condition_key, conditions=conditions,
                             hidden_layer_sizes=list(t["hidden_layer_sizes"]), latent_dim=t["latent_dim"],
                             recon_loss=t["recon_loss"], use_mmd=t["use_mmd"], mmd_on=args.scarches_mmd_on,
                             beta=t["beta"])
    epochs = args.epochs or t["n_epochs"]
    t0 = time.perf_counter()
    model.train(n_epochs=epochs, alpha_epoch_anneal=t["alpha_epoch_anneal"],
                early_stopping_kwargs=dict(t["early_stopping_kwargs"]), seed=args.seed, monitor=False)
    loop = time.perf_counter() - t0
    model.save(args.model, overwrite=True)
    edges = [t0] + stamps
    trainer = model.trainer
    record = {"epochs_run": len(trainer.logs.get("epoch_loss", [])), "epochs": epochs,
              "best_epoch": None if trainer.best_epoch is None else int(trainer.best_epoch) + 1,
              "train_loop_s": round(loop, 3), "epoch_seconds": [round(b - a, 4) for a, b in zip(edges, edges[1:])],
              "n_cells_train": int(len(trainer.train_data)), "n_genes": int(adata.n_vars),
              "settings": {**t, "n_epochs": epochs, "mmd_on": args.scarches_mmd_on, "conditions": conditions,
                           "seed": args.seed, "threads": args.threads}}
    Path(args.model, "peers.json").write_text(json.dumps(record, indent=2))


def worker_predict(args) -> None:
    """Decoded means of the held-out cells (cell type, --from) moved to --to; an .h5ad evaluate can score."""
    _quiet_imports()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    import anndata as ad
    import pandas as pd
    import scarches as sca

    adata = ad.read_h5ad(args.data)
    cond = adata.obs[args.condition_key].astype(str).values
    ctype = adata.obs[args.cell_type_key].astype(str).values
    src = adata[(ctype == args.cell_type) & (cond == args.source)].copy()
    x = src.X.toarray() if hasattr(src.X, "toarray") else np.asarray(src.X)
    src.X = x.astype(np.float32)
    src.obs[args.condition_key] = src.obs[args.condition_key].astype(str)
    model = sca.models.TRVAE.load(args.model, src)
    net = model.model.eval()
    z = model.get_latent(src.X, c=np.array([args.source] * src.n_obs), mean=True)
    label = net.condition_encoder[args.target]
    with torch.no_grad():
        recon, _ = net.decoder(torch.as_tensor(z), torch.full((src.n_obs,), float(label)))
    obs = pd.DataFrame({args.condition_key: pd.Categorical([args.target] * src.n_obs),
                        args.cell_type_key: pd.Categorical([args.cell_type] * src.n_obs)},
                       index=src.obs_names.astype(str) + f"-to-{args.target}")
    pred = ad.AnnData(X=recon.numpy().astype(np.float32), obs=obs, var=pd.DataFrame(index=src.var_names.astype(str)))
    pred.uns["peer"] = {"tool": "scarches", "decode": "decoded means of the posterior mean of z",
                        "from": args.source, "to": args.target, "cell_type": args.cell_type}
    pred.write_h5ad(args.pred)


# --------------------------------------------------------------------------- one repetition


def run_trvae(args, seed: int, work: Path) -> tuple[dict, dict]:
    """Train + transform (timed), the decoded-means transform (untimed); returns (row, predictions)."""
    model, pred, pred_mean = work / f"trvae_s{seed}", work / f"trvae_s{seed}.h5ad", work / f"trvae_mean_s{seed}.h5ad"
    env = trvae_env(args.threads)
    smoke = ["--epochs", "2"] if args.smoke else []
    train = timed(trvae_cmd("train", args.data, "--condition", args.condition_key, "--cell-type-key",
                            args.cell_type_key, "--exclude", f"{args.cell_type}:{args.target}", "--seed", seed,
                            "--threads", args.threads, "--out", model, "--force", "-q", *smoke, *args.train_args),
                  work / "logs" / f"trvae_train_s{seed}.log", env)
    common = ("--model", model, "--from", args.source, "--to", args.target, "--cell-type", args.cell_type,
              "--seed", seed, "--force", "-q")
    tr = timed(trvae_cmd("transform", *common, "--out", pred), work / "logs" / f"trvae_transform_s{seed}.log", env)
    timed(trvae_cmd("transform", *common, "--decode", "mean", "--out", pred_mean),
          work / "logs" / f"trvae_transform_mean_s{seed}.log", env)
    cfg = json.loads((model / "config.json").read_text())
    with open(model / "history.csv", newline="") as fh:
        seconds = [num(r.get("seconds")) for r in csv.DictReader(fh)]
    first, rest = epoch_times(seconds)
    row = _timing_row(train, tr) | {"train_loop_s": cfg["result"]["train_seconds"], "epochs": cfg["result"]["epochs_run"],
                                    "best_epoch": cfg["result"]["best_epoch"], "epoch_s_median": rest,
                                    "first_epoch_s": first}
    return row, {"trvae": pred, "trvae_mean": pred_mean}


def run_scarches(args, py: Path, seed: int, work: Path) -> tuple[dict, dict]:
    model, pred = work / f"scarches_s{seed}", work / f"scarches_s{seed}.h5ad"
    env = peer_env(args.threads)
    common = [py, Path(__file__).resolve(), "--data", args.data, "--condition-key", args.condition_key,
              "--cell-type-key", args.cell_type_key, "--cell-type", args.cell_type, "--from", args.source,
              "--to", args.target, "--threads", args.threads, "--seed", seed, "--model", model,
              "--scarches-mmd-on", args.scarches_mmd_on]
    train = timed([*common, "--worker", "train", *(["--epochs", "2"] if args.smoke else [])],
                  work / "logs" / f"scarches_train_s{seed}.log", env)
    tr = timed([*common, "--worker", "predict", "--pred", pred], work / "logs" / f"scarches_predict_s{seed}.log", env)
    rec = json.loads((model / "peers.json").read_text())
    first, rest = epoch_times(rec["epoch_seconds"])
    row = _timing_row(train, tr) | {"train_loop_s": rec["train_loop_s"], "epochs": rec["epochs_run"],
                                    "best_epoch": rec["best_epoch"], "epoch_s_median": rest, "first_epoch_s": first}
    return row, {"scArches": pred}


def _timing_row(train: dict, transform: dict) -> dict:
    return {"train_wall_s": train["wall_s"], "train_cpu_s": train["cpu_s"], "train_sys_s": train["sys_s"],
            "train_cores": train["cores"],
            "train_peak_rss_gb": train["peak_rss_gb"], "transform_wall_s": transform["wall_s"],
            "transform_cpu_s": transform["cpu_s"], "transform_cores": transform["cores"],
            "transform_peak_rss_gb": transform["peak_rss_gb"]}


def evaluate_all(args, seed: int, preds: dict, work: Path) -> dict:
    """One ``trvae evaluate --json`` over every prediction of the repetition; {label: result}."""
    out = work / f"eval_s{seed}.json"
    labels = [LABELS[k] for k in preds]
    cmd = trvae_cmd("evaluate", *[a for p in preds.values() for a in ("--pred", p)],
                    *[a for lab in labels for a in ("--label", lab)], "--real", args.data,
                    "--condition", args.condition_key, "--from", args.source, "--to", args.target,
                    "--cell-type-key", args.cell_type_key, "--cell-type", args.cell_type,
                    "--n-degs", args.n_degs, "--n-subsamples", 5 if args.smoke else args.n_subsamples,
                    "--seed", seed, "--json", out, "--force", "-q")
    timed(cmd, work / "logs" / f"evaluate_s{seed}.log", trvae_env(args.threads))
    report = json.loads(out.read_text())
    return {r["label"]: r for r in report["results"]}


# --------------------------------------------------------------------------- main


def settings_of(args) -> dict:
    return {"data": Path(args.data).name, "data_bytes": Path(args.data).stat().st_size,
            "condition_key": args.condition_key, "cell_type_key": args.cell_type_key, "cell_type": args.cell_type,
            "from": args.source, "to": args.target, "threads": args.threads, "trvae_train_args": args.train_args,
            "scarches": SCARCHES, "scarches_settings": {**SCARCHES_TUTORIAL, "mmd_on": args.scarches_mmd_on},
            "n_degs": args.n_degs, "n_subsamples": 5 if args.smoke else args.n_subsamples, "smoke": args.smoke}


def load_holdout():
    """benchmarks/holdout.py as a module (its CSV, machine and resume helpers)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("holdout", ROOT / "benchmarks" / "holdout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        (worker_train if args.worker == "train" else worker_predict)(args)
        return 0
    if str(ROOT) not in sys.path:        # trvae_cli, for holdout's helpers, wherever the package is installed
        sys.path.insert(0, str(ROOT))
    holdout = load_holdout()
    out = Path(args.out)
    csv_path, md_path, meta_path = out / "peers.csv", out / "peers.md", out / "peers.meta.json"
    if args.summary_only:
        md = summary_markdown(holdout.read_rows(csv_path))
        md_path.write_text(md)
        print(md)
        return 0
    if not Path(args.data).is_file():
        sys.exit(f"error: data file not found: {args.data}")
    py = ensure_venv(Path(args.venv), args.skip_install)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    settings = settings_of(args)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["settings"] != settings:
            sys.exit(f"error: {out} holds a run with other settings ({meta['settings']}); choose another --out")
    else:
        meta = {"settings": settings, "command": shlex.join([sys.executable, *sys.argv]),
                "machine": holdout.machine(), "peer_versions": peer_versions(py)}
        meta_path.write_text(json.dumps(meta, indent=2))

    done = {(r["side"], int(r["seed"])) for r in holdout.read_rows(csv_path)}
    for rep, seed in enumerate(args.seed_list):
        order = side_order(rep)
        todo = [s for s in order if (s, seed) not in done]
        if not todo:
            continue
        rows, preds = {}, {}
        for side in todo:
            t0 = time.perf_counter()
            try:
                row, p = run_trvae(args, seed, work) if side == "trvae" else run_scarches(args, py, seed, work)
            except RuntimeError as exc:
                print(f"[rep {rep + 1}/{len(args.seed_list)}] {side} seed {seed}: FAILED {exc}", file=sys.stderr)
                continue
            rows[side], preds = row, preds | p
            print(f"[rep {rep + 1}/{len(args.seed_list)}] {side:8s} seed {seed}: train {row['train_wall_s']:.1f} s wall, "
                  f"{row['train_cpu_s']:.1f} s CPU, {row['epochs']} epochs; transform {row['transform_wall_s']:.1f} s "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if not preds:
            continue
        try:
            results = evaluate_all(args, seed, preds, work)
        except RuntimeError as exc:
            print(f"[rep {rep + 1}] evaluate seed {seed}: FAILED {exc}", file=sys.stderr)
            continue
        new = []
        for side, row in rows.items():
            base = {"side": side, "seed": seed, "rep": rep, "order": order.index(side), "threads": args.threads, **row}
            new.append(base | {"label": LABELS[side]} | holdout.flat_metrics(results[LABELS[side]]))
            if side == "trvae":       # the same model, decoded means: R² only
                new.append({"side": "trvae_mean", "label": LABELS["trvae_mean"], "seed": seed, "rep": rep,
                            "threads": args.threads} | holdout.flat_metrics(results[LABELS["trvae_mean"]]))
        holdout.append_rows(csv_path, new, COLUMNS)
        for r in new:
            print(f"           {r['label']:13s}: R² DEG means {r['r2_mean_degs']:.3f}, DEG vars {r['r2_var_degs']:.3f}, "
                  f"all means {r['r2_mean_all']:.3f}", file=sys.stderr, flush=True)
    rows = holdout.read_rows(csv_path)
    md = summary_markdown(rows, {k: settings[k] for k in ("cell_type", "threads", "trvae_train_args", "smoke")})
    md_path.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
