"""benchmarks/make_large.py writes a valid AnnData in blocks; throughput.py's FLOP count."""

import numpy as np

from cli_helpers import load_benchmark as _load


def test_make_large_writes_a_regular_sparse_h5ad(tmp_path):
    import anndata as ad

    make_large = _load("make_large")
    path = tmp_path / "big.h5ad"
    nnz = make_large.write_large(path, n_cells=2500, n_genes=300, chunk=700, seed=0)   # chunks that do not divide N
    a = ad.read_h5ad(path)
    assert a.shape == (2500, 300) and a.X.nnz == nnz
    assert 0.05 < nnz / (2500 * 300) < 0.3
    assert set(a.obs["condition"]) == {"control", "stimulated"} and a.obs["cell_type"].nunique() == 8
    counts = np.expm1(a.X[:50].toarray()).sum(axis=1)
    np.testing.assert_allclose(counts, 1e4, rtol=1e-3)                     # normalize_total + log1p
    b = ad.read_h5ad(path, backed="r")
    np.testing.assert_array_equal(b.X[100:200].toarray(), a.X[100:200].toarray())
    assert not path.with_name(path.name + ".partial").exists()
    again = tmp_path / "again.h5ad"
    make_large.write_large(again, n_cells=2500, n_genes=300, chunk=700, seed=0)
    assert (ad.read_h5ad(again).X != a.X).nnz == 0                         # deterministic for a seed


def test_flops_per_cell_counts_every_dense_kernel():
    from trvae_cli.backend import keras_module

    keras_module()
    from trvae_cli.model import TRVAE

    throughput = _load("throughput")
    m = TRVAE(n_genes=100, n_conditions=2, hidden=(32,), mmd_dim=16, latent_dim=4)
    kernels = [w for w in m.weights if len(w.shape) == 2 and "kernel" in w.path]
    assert kernels
    assert throughput.flops_per_cell(m) == 3 * 2 * sum(int(w.shape[0]) * int(w.shape[1]) for w in kernels)
    # the first encoder layer dominates: (genes + conditions) x hidden
    assert throughput.flops_per_cell(m) >= 3 * 2 * 102 * 32
    # the ceiling's matmuls are those FLOPs for a batch: forward and both gradients of each kernel
    shapes = throughput.matmul_shapes(m, 8)
    assert len(shapes) == 3 * len(kernels) and (8, 102, 32) in shapes and (102, 8, 32) in shapes
    assert sum(2 * a * b * c for a, b, c in shapes) == 8 * throughput.flops_per_cell(m)
    assert throughput.model_matmul_gflops(keras_module(), shapes, repeats=1) > 0


def test_profile_training_refuses_a_missing_data_file(tmp_path, capsys):
    profile = _load("profile_training")
    assert profile.main(["epoch", "--data", str(tmp_path / "none.h5ad")]) == 2
    assert "no data file" in capsys.readouterr().err
