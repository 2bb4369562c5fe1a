"""``benchmarks/ensemble.py``: the K models' predictions combined cell by cell or pooled."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from cli_helpers import load_benchmark


def _predictions(tmp_path, k=3, n=5, genes=4):
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"cell_type": ["NK"] * n}, index=[f"c{i}" for i in range(n)])
    paths, xs = [], []
    for s in range(k):
        x = rng.random((n, genes)).astype(np.float32)
        a = ad.AnnData(sp.csr_matrix(x) if s == 1 else x, obs=obs.copy())   # sparse or dense, as written
        a.uns["trvae"] = {"source": "control", "target": "stimulated", "seed": s}
        paths.append(tmp_path / f"s{s}.h5ad")
        a.write_h5ad(paths[-1])
        xs.append(x.astype(np.float64))
    return paths, xs


def test_cell_by_cell_mean_and_pool(tmp_path):
    bench = load_benchmark("ensemble")
    paths, xs = _predictions(tmp_path)
    mean = ad.read_h5ad(bench.combined(paths, "mean", tmp_path / "mean.h5ad"))
    np.testing.assert_allclose(mean.X, np.mean(xs, axis=0), rtol=2 * np.finfo(np.float32).eps)
    assert list(mean.obs_names) == [f"c{i}" for i in range(5)]
    assert mean.uns["trvae"]["seed"] == 0                         # the first prediction's task record
    pool = ad.read_h5ad(bench.combined(paths, "pool", tmp_path / "pool.h5ad"))
    np.testing.assert_array_equal(pool.X, np.concatenate(xs).astype(np.float32))
    assert pool.n_obs == 15 and pool.obs_names.is_unique


def test_a_mean_needs_the_same_cells(tmp_path):
    bench = load_benchmark("ensemble")
    paths, _ = _predictions(tmp_path)
    other = ad.read_h5ad(paths[2])
    other.obs_names = [f"d{i}" for i in range(other.n_obs)]
    other.write_h5ad(paths[2])
    with pytest.raises(ValueError, match="same cells"):
        bench.combined(paths, "mean", tmp_path / "mean.h5ad")
