"""Image folders and manifests (trvae_cli.data.images): layouts, sizes, channels, errors, PNG output."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trvae_cli.data.images import (
    ImageSet,
    load_all,
    load_images,
    scan_images,
    write_png,
)
from trvae_cli.errors import TrvaeError
from tolerances import U

# Pixels are 8-bit (or 16-bit) integers divided by 255 (65535) in float32: one correctly rounded
# division, so a loaded value is within U (half an ulp) of its float64 value p / 255 on any CPU:
# rtol=U, atol=0 below (Pillow resizes 8-bit images in integers: a constant stays exact).
F32 = dict(rtol=U, atol=0)


def _gray(path: Path, size=(4, 5), value=None, pattern=None) -> Path:
    """A grey 8-bit PNG/JPEG of ``size`` (H, W): ``pattern`` (uint8 array) or a constant."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = pattern if pattern is not None else np.full(size, 0 if value is None else value, np.uint8)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)
    return path


def _rgb(path: Path, size=(4, 5), colour=(255, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.broadcast_to(np.array(colour, np.uint8), (*size, 3)).copy()).save(path)
    return path


def _manifest(path: Path, rows, header=("path", "condition", "domain")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def domain_tree(tmp_path):
    """ROOT/<condition>/<domain>/<file>: 2 conditions x 2 domains, plus files to ignore."""
    root = tmp_path / "imgs"
    for cond in ("thin", "normal"):
        for dom in ("7", "1"):
            for name in ("b.png", "a.jpg"):
                _gray(root / cond / dom / name, value=40)
    (root / "normal" / "1" / "notes.txt").write_text("not an image")
    _gray(root / "normal" / "1" / ".hidden.png")
    _gray(root / ".cache" / "x" / "y.png")
    (root / "manifest.csv").write_text("path,condition\n")  # a loose non-image at the root: ignored
    return root


# --------------------------------------------------------------------------- layouts

def test_folder_with_domains_is_sorted_and_labelled(domain_tree):
    s = scan_images(domain_tree)
    assert isinstance(s, ImageSet) and len(s) == 8
    assert s.conditions.tolist() == ["normal"] * 4 + ["thin"] * 4
    assert s.domains.tolist() == ["1", "1", "7", "7"] * 2
    assert [p.as_posix() for p in s.relpaths[:2]] == ["normal/1/a.jpg", "normal/1/b.png"]
    assert all(p.is_absolute() and p.exists() for p in s.paths)
    assert s.paths[0] == s.root / s.relpaths[0]
    assert s.root == domain_tree.absolute()
    assert s.image_size == (4, 5) and s.channels == 1 and s.shape == (4, 5, 1)


def test_folder_without_domain_level(tmp_path):
    for cond in ("b", "a"):
        for i in range(3):
            _gray(tmp_path / cond / f"{i}.png")
    s = scan_images(tmp_path)
    assert s.domains is None
    assert s.conditions.tolist() == ["a"] * 3 + ["b"] * 3
    assert [p.as_posix() for p in s.relpaths] == [f"{c}/{i}.png" for c in "ab" for i in range(3)]


def test_single_condition_is_not_an_error(tmp_path):
    _gray(tmp_path / "only" / "x.png")
    assert scan_images(tmp_path).conditions.tolist() == ["only"]


def test_manifest_relative_and_absolute_paths(tmp_path):
    _gray(tmp_path / "data" / "imgs" / "x.png", value=10)
    outside = _gray(tmp_path / "elsewhere" / "sub" / "y.png", value=20)
    manifest = _manifest(tmp_path / "data" / "list.csv", [
        ("imgs/x.png", "stim", "T", "extra"),
        (str(outside), "ctrl", "B", "extra"),
    ], header=("path", "condition", "domain", "note"))
    s = scan_images(manifest)
    assert s.root == (tmp_path / "data").absolute()
    assert s.conditions.tolist() == ["ctrl", "stim"]
    assert s.domains.tolist() == ["B", "T"]
    assert s.paths == [outside.absolute(), (tmp_path / "data" / "imgs" / "x.png").absolute()]
    assert [p.as_posix() for p in s.relpaths] == ["y.png", "imgs/x.png"]
    np.testing.assert_allclose(load_all(s)[:, 0, 0, 0], [20 / 255, 10 / 255], **F32)


def test_manifest_without_domain_column(tmp_path):
    _gray(tmp_path / "x.png")
    _gray(tmp_path / "y.png")
    s = scan_images(_manifest(tmp_path / "m.csv", [("y.png", "b"), ("x.png", "a")],
                              header=("condition", "path")[::-1]))
    assert s.domains is None and s.conditions.tolist() == ["a", "b"]


def test_manifest_and_folder_agree(domain_tree):
    s = scan_images(domain_tree)
    rows = [(p.as_posix(), c, d) for p, c, d in zip(s.relpaths, s.conditions, s.domains)]
    m = scan_images(_manifest(domain_tree / "list.csv", rows[::-1]))
    assert m.relpaths == s.relpaths and m.paths == s.paths
    assert (m.conditions == s.conditions).all() and (m.domains == s.domains).all()


# --------------------------------------------------------------------------- channels and sizes

def test_rgb_anywhere_makes_three_channels(tmp_path):
    _gray(tmp_path / "a" / "g.png", value=51)
    _rgb(tmp_path / "b" / "c.png", colour=(255, 0, 102))
    s = scan_images(tmp_path)
    assert s.channels == 3
    x = load_all(s)
    assert x.shape == (2, 4, 5, 3)
    np.testing.assert_allclose(x[0], 0.2, **F32)                      # grey replicated
    np.testing.assert_allclose(x[1, 0, 0], [1.0, 0.0, 0.4], **F32)


def test_channels_override(tmp_path):
    _rgb(tmp_path / "a" / "c.png", colour=(255, 255, 255))
    _gray(tmp_path / "a" / "g.png", value=255)
    s = scan_images(tmp_path, channels=1)
    assert s.channels == 1
    np.testing.assert_allclose(load_all(s), 1.0, **F32)
    with pytest.raises(TrvaeError, match="channels"):
        scan_images(tmp_path, channels=2)


def test_grayscale_modes(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((4, 5), 13107, np.uint16)).save(tmp_path / "a" / "w16.png")
    Image.new("LA", (5, 4), (128, 7)).save(tmp_path / "a" / "la.png")
    Image.new("1", (5, 4), 1).save(tmp_path / "a" / "bw.png")
    s = scan_images(tmp_path)
    assert s.channels == 1
    x = load_all(s)
    assert x.dtype == np.float32 and x.shape == (3, 4, 5, 1)
    by_name = {p.name: v for p, v in zip(s.paths, x)}
    np.testing.assert_allclose(by_name["w16.png"], 0.2, **F32)  # 16-bit precision kept
    np.testing.assert_allclose(by_name["la.png"], 128 / 255, **F32)
    np.testing.assert_allclose(by_name["bw.png"], 1.0, **F32)


def test_mixed_sizes_need_image_size(tmp_path):
    _gray(tmp_path / "a" / "small.png", size=(4, 4))
    _gray(tmp_path / "a" / "big.png", size=(8, 6))
    with pytest.raises(TrvaeError, match="--image-size"):
        scan_images(tmp_path)
    s = scan_images(tmp_path, image_size=(3, 2))
    assert s.image_size == (3, 2)
    assert load_all(s).shape == (2, 3, 2, 1)
    assert scan_images(tmp_path, image_size=5).image_size == (5, 5)


def test_resize_of_a_constant_image_keeps_its_value(tmp_path):
    _gray(tmp_path / "a" / "x.png", size=(8, 8), value=200)
    x = load_all(scan_images(tmp_path, image_size=(2, 3)))
    np.testing.assert_allclose(x, 200 / 255, **F32)


# --------------------------------------------------------------------------- pixels

def test_load_images_exact_values_and_only_requested(tmp_path):
    pattern = np.arange(20, dtype=np.uint8).reshape(4, 5) * 13
    _gray(tmp_path / "a" / "0.png", pattern=pattern)
    _gray(tmp_path / "a" / "1.png", value=255)
    _gray(tmp_path / "b" / "2.png", value=0)
    s = scan_images(tmp_path)
    x = load_images(s, [0])
    assert x.shape == (1, 4, 5, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, :, :, 0], pattern.astype(np.float32) / np.float32(255))
    s.paths[2].write_bytes(b"gone")  # unread: not requested
    both = load_images(s, np.array([1, 0]))
    assert both.min() >= 0.0 and both.max() <= 1.0
    np.testing.assert_allclose(both[0], 1.0)
    assert load_images(s, []).shape == (0, 4, 5, 1)
    with pytest.raises(IndexError):
        load_images(s, [3])


def test_write_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 7, 1)) / 255.0
    rgb = rng.integers(0, 256, (6, 7, 3)) / 255.0
    write_png(gray, tmp_path / "out" / "a" / "g.png")
    write_png(rgb, tmp_path / "out" / "b" / "c.png")
    with Image.open(tmp_path / "out" / "a" / "g.png") as img:
        assert img.mode == "L"
    with Image.open(tmp_path / "out" / "b" / "c.png") as img:
        assert img.mode == "RGB"
    s = scan_images(tmp_path / "out", channels=3)
    x = load_all(s)
    np.testing.assert_allclose(x[0], np.repeat(gray, 3, axis=2), **F32)
    np.testing.assert_allclose(x[1], rgb, **F32)


def test_write_png_clips_and_accepts_2d(tmp_path):
    path = write_png(np.array([[-1.0, 0.5, 2.0, np.nan]]), tmp_path / "x.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), [[0, 128, 255, 0]])
    with pytest.raises(ValueError):
        write_png(np.zeros((3, 3, 2)), tmp_path / "bad.png")


# --------------------------------------------------------------------------- errors

def test_missing_path(tmp_path):
    with pytest.raises(TrvaeError, match="does not exist"):
        scan_images(tmp_path / "nope")


def test_no_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("x")
    with pytest.raises(TrvaeError, match="no images"):
        scan_images(tmp_path)


def test_empty_condition_folder(tmp_path):
    _gray(tmp_path / "a" / "x.png")
    (tmp_path / "b" / "sub").mkdir(parents=True)
    with pytest.raises(TrvaeError, match="condition folder .*b holds no images"):
        scan_images(tmp_path)


def test_images_outside_condition_folders(tmp_path):
    _gray(tmp_path / "a" / "x.png")
    _gray(tmp_path / "loose.png")
    with pytest.raises(TrvaeError, match="loose.png"):
        scan_images(tmp_path)


def test_mixed_layouts(tmp_path):
    _gray(tmp_path / "a" / "x.png")
    _gray(tmp_path / "b" / "d" / "y.png")
    with pytest.raises(TrvaeError, match="one layout"):
        scan_images(tmp_path)


def test_corrupt_image_is_named(tmp_path):
    _gray(tmp_path / "a" / "good.png")
    (tmp_path / "a" / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(TrvaeError, match="bad.png"):
        scan_images(tmp_path)


def test_truncated_image_is_named_at_load(tmp_path):
    rng = np.random.default_rng(1)
    path = _gray(tmp_path / "a" / "cut.png", pattern=rng.integers(0, 256, (64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    s = scan_images(tmp_path)  # the header is intact
    with pytest.raises(TrvaeError, match="cut.png"):
        load_all(s)


def test_manifest_missing_columns(tmp_path):
    _gray(tmp_path / "x.png")
    with pytest.raises(TrvaeError, match="'condition'"):
        scan_images(_manifest(tmp_path / "m.csv", [("x.png",)], header=("path",)))
    with pytest.raises(TrvaeError, match="'path'"):
        scan_images(_manifest(tmp_path / "n.csv", [("x.png", "a")], header=("file", "condition")))


def test_manifest_path_does_not_exist(tmp_path):
    _gray(tmp_path / "x.png")
    manifest = _manifest(tmp_path / "m.csv", [("x.png", "a", "d"), ("missing.png", "b", "d")])
    with pytest.raises(TrvaeError, match="line 3: missing.png does not exist"):
        scan_images(manifest)


def test_manifest_empty_cells_and_rows(tmp_path):
    _gray(tmp_path / "x.png")
    with pytest.raises(TrvaeError, match="empty 'condition'"):
        scan_images(_manifest(tmp_path / "m.csv", [("x.png", "", "d")]))
    with pytest.raises(TrvaeError, match="no rows"):
        scan_images(_manifest(tmp_path / "e.csv", []))


def test_neither_folder_nor_csv(tmp_path):
    path = _gray(tmp_path / "x.png")
    with pytest.raises(TrvaeError, match="neither"):
        scan_images(path)
