"""Predicted cells as a scanpy user expects them: unique names, CSR where the input is sparse, written
block by block, gene annotations kept, per-cell QC columns that describe the prediction."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cli_helpers import assert_ok, dense, invoke
from trvae_cli import api
from trvae_cli.data.anndata_io import refresh_cell_qc
from trvae_cli.data.h5ad_writer import SPARSE_MAX_DENSITY, write_streamed

TASK = dict(source="control", target="stimulated", cell_type="NK")


@pytest.fixture(scope="module")
def qc_h5ad(tiny_h5ad, tmp_path_factory):
    """The tiny data with scanpy / Seurat QC columns and a var annotation, X sparse."""
    adata = ad.read_h5ad(tiny_h5ad)
    adata.X = sp.csr_matrix(adata.X)
    x = adata.X
    adata.obs["n_genes"] = np.diff(x.indptr)
    adata.obs["n_counts"] = np.asarray(np.expm1(x.toarray()).sum(1)).ravel()
    adata.obs["total_counts"] = adata.obs["n_counts"]
    adata.obs["pct_counts_mt"] = 1.0
    adata.obs["log1p_n_genes_by_counts"] = np.log1p(adata.obs["n_genes"])
    adata.var["gene_symbol"] = [f"SYM{i}" for i in range(adata.n_vars)]
    path = tmp_path_factory.mktemp("qc") / "qc.h5ad"
    adata.write_h5ad(path)
    return path


def test_written_prediction_equals_the_in_memory_one(trained_model, qc_h5ad, tmp_path):
    """The streamed writer gives what the in-memory path gives: values, format, obs, var, z, record."""
    out = tmp_path / "p.h5ad"
    written = api.transform(trained_model, qc_h5ad, out=out, **TASK)
    memory = api.transform(trained_model, qc_h5ad, write=False, **TASK)
    a, b = ad.read_h5ad(out), memory.adata
    assert sp.issparse(a.X) == sp.issparse(b.X)
    np.testing.assert_array_equal(dense(a.X), dense(b.X))
    np.testing.assert_array_equal(a.obsm["X_trvae"], b.obsm["X_trvae"])
    pd.testing.assert_frame_equal(a.obs, b.obs, check_categorical=False)
    pd.testing.assert_frame_equal(a.var, b.var)
    assert a.uns["trvae"]["x_format"] == b.uns["trvae"]["x_format"]
    assert written.adata.n_obs == a.n_obs                       # read back from the file on first use


def test_a_sparse_input_gives_a_csr_prediction_smaller_than_dense(trained_model, qc_h5ad, tmp_path):
    out = tmp_path / "p.h5ad"
    api.transform(trained_model, qc_h5ad, out=out, **TASK)
    pred = ad.read_h5ad(out)
    density = pred.X.nnz / np.prod(pred.shape)
    assert sp.isspmatrix_csr(pred.X) and density <= SPARSE_MAX_DENSITY
    assert pred.uns["trvae"]["x_format"] == "csr"
    np.testing.assert_array_equal(pred.X.toarray() > 0, dense(pred.X) > 0)
    import h5py

    with h5py.File(out) as f:
        stored = sum(f["X"][k].id.get_storage_size() for k in ("data", "indices", "indptr"))
    assert stored < pred.X.shape[0] * pred.X.shape[1] * 4          # less than float32 dense


def test_dense_input_gives_a_dense_prediction(trained_model, tiny_h5ad, tmp_path):
    data = ad.read_h5ad(tiny_h5ad)
    data.X = np.asarray(data.X.toarray() if sp.issparse(data.X) else data.X)
    pred = api.transform(trained_model, data, write=False, **TASK).adata
    assert isinstance(pred.X, np.ndarray) and pred.uns["trvae"]["x_format"] == "dense"


def test_names_are_unique_and_concat_with_the_real_cells_is_silent(trained_model, qc_h5ad):
    real = ad.read_h5ad(qc_h5ad)
    pred = api.transform(trained_model, qc_h5ad, write=False, **TASK).adata
    assert pred.obs_names.is_unique and not set(pred.obs_names) & set(real.obs_names)
    assert set(pred.obs["trvae_source_cell"]) <= set(real.obs_names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = ad.concat([real, pred])
    assert both.obs_names.is_unique


def test_draws_get_their_own_names(trained_model, qc_h5ad):
    pred = api.transform(trained_model, qc_h5ad, write=False, draws=3, **TASK).adata
    n = pred.n_obs // 3
    assert pred.obs_names.is_unique
    assert pred.obs_names[0].endswith("-pred-stimulated-0") and pred.obs_names[n].endswith("-pred-stimulated-1")
    assert list(pred.obs["trvae_source_cell"][:n]) == list(pred.obs["trvae_source_cell"][n:2 * n])


def test_qc_columns_describe_the_prediction(trained_model, qc_h5ad, tmp_path):
    out = tmp_path / "p.h5ad"
    api.transform(trained_model, qc_h5ad, out=out, **TASK)
    pred = ad.read_h5ad(out)
    genes_detected = np.diff(pred.X.tocsr().indptr)
    np.testing.assert_array_equal(pred.obs["n_genes"].to_numpy(), genes_detected)
    np.testing.assert_allclose(pred.obs["log1p_n_genes_by_counts"].to_numpy(), np.log1p(genes_detected))
    for gone in ("n_counts", "total_counts", "pct_counts_mt"):
        assert gone not in pred.obs
    record = pred.uns["trvae"]
    assert set(record["obs_dropped"].split(",")) == {"n_counts", "total_counts", "pct_counts_mt"}
    assert set(record["obs_recomputed"].split(",")) == {"n_genes", "log1p_n_genes_by_counts"}
    assert list(pred.var["gene_symbol"]) == [f"SYM{i}" for i in range(pred.n_vars)]


def test_backed_transform_writes_the_same_file_block_by_block(trained_model, qc_h5ad, tmp_path):
    a, b = tmp_path / "a.h5ad", tmp_path / "b.h5ad"
    assert_ok(invoke("transform", "--model", str(trained_model), "--data", str(qc_h5ad), "--from", "control",
                     "--to", "stimulated", "--cell-type", "NK", "--out", str(a), "-q"))
    assert_ok(invoke("transform", "--model", str(trained_model), "--data", str(qc_h5ad), "--from", "control",
                     "--to", "stimulated", "--cell-type", "NK", "--out", str(b), "--backed", "-q"))
    x, y = ad.read_h5ad(a), ad.read_h5ad(b)
    np.testing.assert_array_equal(dense(x.X), dense(y.X))
    assert list(x.obs_names) == list(y.obs_names)
    backed = api.transform(trained_model, qc_h5ad, out=tmp_path / "c.h5ad", backed=True, **TASK)
    assert backed.adata.isbacked                                # X left on disk for the caller too


def test_refresh_cell_qc_on_a_frame():
    obs = pd.DataFrame({"n_genes": [9, 9], "nCount_RNA": [1.0, 2.0], "total_counts_mt": [1, 1],
                        "cell_type": ["a", "b"], "n_genes_by_counts": [3, 3]})
    obs["mt_frac"], obs["percent.mt"] = 0.1, 10.0
    recomputed, dropped = refresh_cell_qc(obs, np.array([4, 5]))
    assert recomputed == ["n_genes", "n_genes_by_counts"]
    assert dropped == ["nCount_RNA", "total_counts_mt", "mt_frac", "percent.mt"]
    assert list(obs.columns) == ["n_genes", "cell_type", "n_genes_by_counts"]
    assert list(obs["n_genes"]) == [4, 5]


@pytest.mark.parametrize("density", [0.1, 0.9])
def test_write_streamed_reads_back_as_the_stacked_blocks(tmp_path, density):
    rng = np.random.default_rng(0)
    blocks = [(rng.random((n, 6)) * (rng.random((n, 6)) < density)).astype(np.float32) for n in (4, 1, 5)]
    seen = []

    def annotations(written):
        seen.append(written)
        return {"obs": pd.DataFrame({"nnz": written.nnz_per_row}, index=[f"c{i}" for i in range(10)]),
                "var": pd.DataFrame(index=[f"g{j}" for j in range(6)]), "obsm": {"z": np.zeros((10, 2))},
                "uns": {"note": "x"}}

    path = tmp_path / "s.h5ad"
    write_streamed(path, iter(blocks), 10, 6, sparse=None, annotations=annotations)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(dense(back.X), np.vstack(blocks))
    assert sp.issparse(back.X) == (density < SPARSE_MAX_DENSITY) == seen[0].sparse
    np.testing.assert_array_equal(back.obs["nnz"], np.count_nonzero(np.vstack(blocks), axis=1))
    assert back.uns["note"] == "x" and back.obsm["z"].shape == (10, 2)
    with pytest.raises(ValueError, match="expected 11 rows"):
        write_streamed(tmp_path / "t.h5ad", iter(blocks), 11, 6, sparse=True, annotations=annotations)
