"""The committed sample ``sample_data/digits`` (made by ``sample_data/make_digits.py``)."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trvae_cli.data.images import load_all, scan_images
from trvae_cli.images_metrics import batch_thickness

DIGITS = Path(__file__).resolve().parent.parent / "sample_data" / "digits"
STYLES = ("normal", "thin", "thick")

pytestmark = pytest.mark.skipif(not DIGITS.is_dir(), reason="sample_data/digits is absent")


def _ids(style):
    return sorted(p.relative_to(DIGITS / style).as_posix() for p in (DIGITS / style).rglob("*.png"))


def test_styles_share_ids_and_digits():
    normal = _ids("normal")
    assert len(normal) >= 100
    assert {p.split("/")[0] for p in normal} == {str(d) for d in range(10)}
    for style in STYLES[1:]:
        assert _ids(style) == normal


def test_manifest_lists_every_image():
    with open(DIGITS / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "condition", "domain", "id"]
    for row in rows:
        assert row["path"] == f"{row['condition']}/{row['domain']}/{row['id']}.png"
    assert sorted(r["path"] for r in rows) == sorted(f"{s}/{p}" for s in STYLES for p in _ids(s))


def test_images_are_28x28_grayscale():
    for path in list((DIGITS / "thick").rglob("*.png"))[:50] + list((DIGITS / "thin").rglob("*.png"))[:50]:
        with Image.open(path) as img:
            assert img.mode == "L" and img.size == (28, 28)
    s = scan_images(DIGITS)
    assert s.channels == 1 and s.image_size == (28, 28)
    assert sorted(set(s.conditions)) == sorted(STYLES)


def test_thickness_thin_normal_thick():
    s = scan_images(DIGITS)
    x = load_all(s)
    mean = {c: float(np.nanmean(batch_thickness(x[s.conditions == c]))) for c in STYLES}
    # measured when generated: about 1.4 / 2.6 / 4.9 px
    assert mean["thin"] < 0.7 * mean["normal"], mean
    assert mean["thick"] > 1.5 * mean["normal"], mean
