"""Out-of-core (--backed) training and transform: block plans, equal predictions, resumable."""

import json

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cli_helpers import assert_ok, assert_user_error, invoke, dense
from trvae_cli.data.backed import BackedMatrix, ChunkPlan


def test_plan_covers_every_row_once_and_mixes_conditions():
    rng = np.random.default_rng(0)
    n = 5000
    rows = np.sort(rng.choice(20000, n, replace=False))
    labels = (rows >= 10000).astype(int)              # the file holds control first, then stimulated
    plan = ChunkPlan(rows, labels, batch_size=128, block_rows=500, pool_blocks=8, seed=1)
    n_batches = -(-n // 128)                                            # 40 batches of 125: no padding
    for _ in range(2):
        batches = plan.epoch()
        positions = np.concatenate([p for _, p in batches])
        assert np.array_equal(np.sort(positions), np.arange(n))         # every row exactly once
        assert len(batches) == plan.n_batches == n_batches
        assert {len(p) for _, p in batches} == {125}
        assert all(len(np.unique(pools)) <= 2 for pools, _ in batches)  # a batch touches <= 2 pools
        both = np.mean([len(np.unique(labels[p])) == 2 for _, p in batches])
        assert both > 0.9                                               # conditions meet in batches
    fixed = ChunkPlan(rows, labels, 128, 500, 8, seed=1, fixed=True)
    a, b = fixed.epoch(), fixed.epoch()
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert [len(p) for _, p in a] == [128] * 39 + [8]                   # validation: each row once, as read


def test_plan_batches_have_one_size_the_last_filled_from_just_before_it():
    rows, labels = np.arange(1003), np.arange(1003) % 2
    plan = ChunkPlan(rows[:1001], labels[:1001], batch_size=100, block_rows=64, pool_blocks=4, seed=2)
    batches = plan.epoch()
    assert len(batches) == 11 and {len(p) for _, p in batches} == {91}  # ceil(1001 / 11): 11 x 91 = 1,001
    plan = ChunkPlan(rows[:1000], labels[:1000], batch_size=128, block_rows=64, pool_blocks=4, seed=2)
    batches = plan.epoch()
    assert len(batches) == 8 and {len(p) for _, p in batches} == {125}  # 8 x 125 = 1,000
    plan = ChunkPlan(rows, labels, batch_size=100, block_rows=64, pool_blocks=4, seed=2)
    batches = plan.epoch()                                              # 11 x 92 = 1,012: 9 rows twice
    assert len(batches) == 11 and {len(p) for _, p in batches} == {92}
    positions = np.concatenate([p for _, p in batches])
    assert np.array_equal(np.unique(positions), np.arange(1003))       # every row at least once
    assert np.array_equal(batches[-1][1][:9], batches[-2][1][-9:])     # the rows just before the last batch
    assert len(np.unique(batches[-1][1])) == 92                        # never twice in one batch
    for pools, p in batches:                                           # each row's pool travels with it
        assert len(pools) == len(p)


@pytest.mark.parametrize("dense", [False, True])
def test_backed_matrix_reads_rows_like_memory(tiny_h5ad, tmp_path, dense):
    data = ad.read_h5ad(tiny_h5ad)
    path = tiny_h5ad
    if dense:
        data.X = np.asarray(data.X.toarray())
        path = tmp_path / "dense.h5ad"
        data.write_h5ad(path)
    x = data.X.toarray() if sp.issparse(data.X) else data.X
    with BackedMatrix(path) as m:
        assert m.shape == x.shape and m.sparse is not dense
        for rows in (np.array([0, 1, 2, 7]), np.array([3, 500, 1100]), np.arange(100, 300)):
            got = m[rows]
            np.testing.assert_array_equal(got.toarray() if sp.issparse(got) else got, x[rows])
        np.testing.assert_array_equal(np.concatenate([v for v in m.iter_values(100)]),
                                      data.X.data if not dense else x.ravel())


def _transform(model, out, *extra):
    return invoke("transform", "--model", model, "--from", "control", "--to", "stimulated", "--cell-type", "NK",
                  "--out", out, "-q", *extra)


def test_backed_transform_equals_in_memory(trained_model, tmp_path):
    for decode in ("counterfactual", "mean"):
        assert_ok(_transform(trained_model, tmp_path / f"m_{decode}.h5ad", "--decode", decode))
        assert_ok(_transform(trained_model, tmp_path / f"b_{decode}.h5ad", "--decode", decode, "--backed"))
        np.testing.assert_array_equal(dense(ad.read_h5ad(tmp_path / f"m_{decode}.h5ad").X),
                                      dense(ad.read_h5ad(tmp_path / f"b_{decode}.h5ad").X))


def test_backed_training_is_recorded_and_transforms(tiny_h5ad, fast_train_args, tmp_path):
    args = ["train", tiny_h5ad, "--condition", "condition", "--cell-type-key", "cell_type",
            "--exclude", "NK:stimulated", *fast_train_args, "--backed"]
    assert_ok(invoke(*args, "--out", tmp_path / "m"))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["data"]["backed"] is True and "--backed" in cfg["command"]
    assert cfg["data"]["n_cells_excluded"] > 0
    assert_ok(_transform(tmp_path / "m", tmp_path / "p.h5ad", "--backed"))
    # seeded: test_checkpoint's backed variant trains twice and compares every weight


def test_backed_refuses_csc_and_nan(tiny_h5ad, tmp_path):
    data = ad.read_h5ad(tiny_h5ad)
    csc = data.copy()
    csc.X = sp.csc_matrix(csc.X)
    csc.write_h5ad(tmp_path / "csc.h5ad")
    base = ["train", "--condition", "condition", "--epochs", "1", "--hidden", "8", "--mmd-dim", "4",
            "--latent-dim", "2", "-q", "--backed"]
    assert_user_error(invoke(*base[:1], tmp_path / "csc.h5ad", *base[1:], "--out", tmp_path / "a"), "CSC")
    bad = data.copy()
    bad.X = bad.X.tocsr(copy=True)
    bad.X.data[5] = np.nan
    bad.write_h5ad(tmp_path / "nan.h5ad")
    assert_user_error(invoke(*base[:1], tmp_path / "nan.h5ad", *base[1:], "--out", tmp_path / "b"), "NaN")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
