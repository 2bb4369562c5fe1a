"""The data layer (no Keras): balanced batches, densifying rows, gene order, cell selection, checks."""

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from trvae_cli.data.anndata_io import (
    check_finite, gene_indexer, looks_like_counts, parse_exclusions, select_training_cells,
)
from trvae_cli.data.batching import BalancedSampler, dense_rows
from trvae_cli.errors import TrvaeError


# --------------------------------------------------------------------------- BalancedSampler

def _labels(sizes, seed=0):
    """Labels 0..k-1 with the given group sizes, shuffled."""
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(sizes)])
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize("sizes, batch_size", [
    ((500, 20), 64),
    ((20, 500), 63),
    ((1000, 50, 7), 64),
    ((7, 300, 41), 50),
])
def test_balanced_batches_have_near_equal_counts_per_condition(sizes, batch_size):
    labels = _labels(sizes)
    sampler = BalancedSampler(labels, batch_size, seed=3)
    batches = sampler.epoch()
    assert len(batches) == sampler.n_batches == math.ceil(len(labels) / batch_size)
    for batch in batches:
        assert len(batch) == sampler.batch_size <= batch_size
        counts = np.bincount(labels[batch], minlength=len(sizes))
        assert counts.max() - counts.min() <= 1, counts
        assert counts.sum() == sampler.batch_size


@pytest.mark.parametrize("n, batch_size, expected", [
    (1790, 512, 448),    # Kang with NK held out: 4 batches of 448 (1,792 cells), not 4 of 512 (2,048)
    (1024, 512, 512),    # divides evenly: unchanged
    (1025, 512, 342),    # 3 batches
    (199, 512, 199),     # one batch: the cells there are, none drawn twice
    (100_000, 512, 511),
])
def test_balanced_batches_spread_an_epoch_evenly(n, batch_size, expected):
    labels = _labels((n // 3, n - n // 3))
    sampler = BalancedSampler(labels, batch_size, seed=0)
    assert sampler.batch_size == expected
    drawn = sum(len(b) for b in sampler.epoch())
    assert n <= drawn < n + sampler.n_batches


@pytest.mark.parametrize("n_per_group, k, batch_size", [
    (100, 3, 64), (100, 2, 30), (64, 4, 64), (50, 3, 30),
    # 3 groups of 37, batches of 10: the +1 remainder share must rotate between groups,
    # or two groups get 12 x 3 = 36 draws per epoch and one of their 37 cells is never seen.
    (37, 3, 10),
])
def test_every_cell_appears_at_least_once_per_epoch_with_equal_groups(n_per_group, k, batch_size):
    labels = _labels([n_per_group] * k, seed=1)
    sampler = BalancedSampler(labels, batch_size, seed=5)
    for _ in range(3):  # every epoch, not only the first
        seen = np.unique(np.concatenate(sampler.epoch()))
        np.testing.assert_array_equal(seen, np.arange(len(labels)))


def test_no_cell_twice_in_a_batch_when_the_group_is_large_enough():
    labels = _labels((500, 200))
    sampler = BalancedSampler(labels, 64, seed=3)
    for _ in range(3):
        for batch in sampler.epoch():
            assert len(np.unique(batch)) == len(batch)


@pytest.mark.parametrize("balanced", [True, False])
def test_same_seed_gives_same_batches(balanced):
    labels = _labels((300, 40, 90))
    a = BalancedSampler(labels, 32, seed=11, balanced=balanced)
    b = BalancedSampler(labels, 32, seed=11, balanced=balanced)
    for _ in range(2):
        ea, eb = a.epoch(), b.epoch()
        assert len(ea) == len(eb)
        for x, y in zip(ea, eb):
            np.testing.assert_array_equal(x, y)
    c = BalancedSampler(labels, 32, seed=12, balanced=balanced)
    assert any(not np.array_equal(x, y) for x, y in zip(BalancedSampler(labels, 32, seed=11).epoch(), c.epoch()))


def test_batches_are_sorted_index_arrays():
    labels = _labels((100, 50))
    for batch in BalancedSampler(labels, 16, seed=0).epoch():
        assert np.all(np.diff(batch) >= 0)
        assert batch.min() >= 0 and batch.max() < len(labels)


@pytest.mark.parametrize("n, batch_size", [(1, 64), (64, 64), (65, 64), (1000, 128), (1206, 64), (10, 3)])
def test_n_batches_is_ceil_n_over_batch_size(n, batch_size):
    labels = np.arange(n) % 2 if n > 1 else np.zeros(1, int)
    sampler = BalancedSampler(labels, batch_size)
    assert sampler.n_batches == math.ceil(n / batch_size)
    assert len(sampler.epoch()) == sampler.n_batches


# --------------------------------------------------------------------------- dense_rows

@pytest.fixture
def matrix():
    rng = np.random.default_rng(0)
    dense = rng.random((30, 12))
    dense[dense < 0.6] = 0.0
    return dense


def test_dense_rows_identical_for_csr_and_dense(matrix):
    rows = np.array([3, 0, 17, 29, 3])
    a = dense_rows(sp.csr_matrix(matrix), rows)
    b = dense_rows(matrix, rows)
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    assert a.dtype == np.float32 and b.dtype == np.float32
    assert a.shape == (5, 12)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, matrix[rows].astype(np.float32))


def test_dense_rows_respects_column_indexer(matrix):
    rows = np.array([1, 5, 8])
    columns = np.array([11, 0, 4, 4, 7])
    expected = matrix[rows][:, columns].astype(np.float32)
    for m in (matrix, sp.csr_matrix(matrix)):
        out = dense_rows(m, rows, columns)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------- gene_indexer

GENES = [f"g{i}" for i in range(10)]


def test_gene_indexer_none_for_identical_order():
    assert gene_indexer(GENES, list(GENES)) is None
    assert gene_indexer(pd.Index(GENES), np.array(GENES)) is None


def test_gene_indexer_permutation_for_shuffled_genes():
    data_genes = list(np.random.default_rng(0).permutation(GENES)) + ["extra"]
    idx = gene_indexer(data_genes, GENES)
    assert idx is not None
    assert [data_genes[i] for i in idx] == GENES
    # applied to a matrix whose columns follow data_genes, it gives the model's order
    x = np.array([[int(g[1:]) if g != "extra" else -1 for g in data_genes]], dtype=float)
    np.testing.assert_array_equal(x[:, idx], [np.arange(10)])


def test_gene_indexer_names_count_and_example_of_missing_genes():
    data_genes = [g for g in GENES if g not in ("g2", "g5", "g7")]
    with pytest.raises(TrvaeError) as info:
        gene_indexer(data_genes, GENES)
    msg = str(info.value)
    assert "3 of the model's 10 genes are missing" in msg
    assert any(g in msg for g in ("g2", "g5", "g7"))


# --------------------------------------------------------------------------- parse_exclusions

def test_parse_exclusions_good():
    assert parse_exclusions([]) == []
    assert parse_exclusions(["NK:stimulated", "B:ctrl"]) == [("NK", "stimulated"), ("B", "ctrl")]
    # a colon in the cell type: the condition is after the last colon
    assert parse_exclusions(["CD4:naive:stim"]) == [("CD4:naive", "stim")]


@pytest.mark.parametrize("bad", ["NK", "NK:", ":stimulated", ":", ""])
def test_parse_exclusions_bad(bad):
    with pytest.raises(TrvaeError, match="CELLTYPE:CONDITION"):
        parse_exclusions([bad])


# --------------------------------------------------------------------------- select_training_cells

@pytest.fixture
def small_adata():
    cell_type = ["T", "T", "B", "B", "NK", "NK", "NK", "T", "B", "NK"]
    condition = ["ctrl", "stim", "ctrl", "stim", "ctrl", "stim", "stim", "ctrl", "inh", "inh"]
    obs = pd.DataFrame({
        "cell_type": pd.Categorical(cell_type),
        # categorical order is not alphabetical: it sets the condition order
        "condition": pd.Categorical(condition, categories=["ctrl", "stim", "inh"]),
        "batch": ["a"] * 10,
    }, index=[f"c{i}" for i in range(10)])
    return ad.AnnData(X=np.zeros((10, 3), np.float32), obs=obs)


def test_select_without_exclusion_keeps_all_cells_in_categorical_order(small_adata):
    sel = select_training_cells(small_adata, "condition")
    assert sel.mask.all()
    assert sel.conditions == ["ctrl", "stim", "inh"]
    np.testing.assert_array_equal(sel.labels, [0, 1, 0, 1, 0, 1, 1, 0, 2, 2])
    assert sel.n_excluded == 0


def test_select_with_exclusion(small_adata):
    sel = select_training_cells(small_adata, "condition", "cell_type", ["NK:stim"])
    np.testing.assert_array_equal(sel.mask, [True, True, True, True, True, False, False, True, True, True])
    assert sel.conditions == ["ctrl", "stim", "inh"]
    np.testing.assert_array_equal(sel.labels, [0, 1, 0, 1, 0, 0, 2, 2])
    assert sel.labels.dtype == np.int32
    assert sel.n_excluded == 2


def test_select_drops_a_condition_that_no_longer_has_cells(small_adata):
    sel = select_training_cells(small_adata, "condition", "cell_type", ["B:inh", "NK:inh"])
    assert sel.conditions == ["ctrl", "stim"]
    assert set(sel.labels.tolist()) == {0, 1}
    assert sel.n_excluded == 2


def test_select_needs_two_conditions_after_exclusion(small_adata):
    exclude = ["T:stim", "B:stim", "NK:stim", "B:inh", "NK:inh"]
    with pytest.raises(TrvaeError, match="at least 2 conditions"):
        select_training_cells(small_adata, "condition", "cell_type", exclude)


def test_select_needs_two_conditions_in_the_data():
    obs = pd.DataFrame({"condition": ["a"] * 4}, index=[f"c{i}" for i in range(4)])
    with pytest.raises(TrvaeError, match="at least 2 conditions"):
        select_training_cells(ad.AnnData(X=np.zeros((4, 2)), obs=obs), "condition")


@pytest.mark.parametrize("exclusion, missing, listed", [
    ("NK:stimulated", "'stimulated'", ("ctrl", "stim", "inh")),   # unknown condition
    ("Mono:stim", "'Mono'", ("B", "NK", "T")),                     # unknown cell type
])
def test_select_unknown_value_lists_the_values(small_adata, exclusion, missing, listed):
    with pytest.raises(TrvaeError) as info:
        select_training_cells(small_adata, "condition", "cell_type", [exclusion])
    msg = str(info.value)
    assert missing in msg
    for value in listed:
        assert value in msg


@pytest.mark.parametrize("kwargs", [
    {"condition_key": "treatment"},
    {"condition_key": "condition", "cell_type_key": "celltype", "exclude": ["NK:stim"]},
    {"condition_key": "condition", "cell_type_key": "celltype"},
])
def test_select_missing_key_lists_obs_columns(small_adata, kwargs):
    with pytest.raises(TrvaeError) as info:
        select_training_cells(small_adata, **kwargs)
    msg = str(info.value)
    assert "not a column of obs" in msg
    for column in ("cell_type", "condition", "batch"):
        assert column in msg


def test_select_exclude_needs_cell_type_key(small_adata):
    with pytest.raises(TrvaeError, match="--cell-type-key"):
        select_training_cells(small_adata, "condition", None, ["NK:stim"])


# --------------------------------------------------------------------------- looks_like_counts / check_finite

def test_looks_like_counts_true_on_integer_counts():
    counts = np.random.default_rng(0).poisson(20.0, (50, 30)).astype(np.float32)
    counts[0, 0] = 500
    assert looks_like_counts(counts)
    assert looks_like_counts(sp.csr_matrix(counts))


def test_looks_like_counts_on_synthetic_layers():
    from trvae_cli.data.synthetic import make_perturbation_data

    adata = make_perturbation_data(n_genes=40, seed=1)
    assert looks_like_counts(adata.layers["counts"])
    assert not looks_like_counts(adata.X)


def test_looks_like_counts_false_on_log_normalised():
    counts = np.random.default_rng(0).poisson(20.0, (50, 30)).astype(np.float32)
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    assert not looks_like_counts(lognorm)
    assert not looks_like_counts(sp.csr_matrix(lognorm))
    # small integers (e.g. binarised data) are not flagged either
    assert not looks_like_counts(np.minimum(counts, 3))
    assert not looks_like_counts(np.zeros((0, 3), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("sparse", [False, True])
def test_check_finite_raises_on_nan_and_inf(bad, sparse):
    x = np.ones((5, 4), np.float32)
    x[2, 3] = bad
    m = sp.csr_matrix(x) if sparse else x
    with pytest.raises(TrvaeError, match="NaN or infinite"):
        check_finite(m)


@pytest.mark.parametrize("sparse", [False, True])
def test_check_finite_passes_finite_and_names_the_matrix(sparse):
    x = np.eye(4, dtype=np.float32)
    check_finite(sp.csr_matrix(x) if sparse else x)
    x[0, 0] = np.nan
    with pytest.raises(TrvaeError, match="layer 'counts'"):
        check_finite(sp.csr_matrix(x) if sparse else x, "layer 'counts'")


def test_dense_rows_gathers_csr_rows_exactly_like_scipy():
    """The hand-written CSR gather equals scipy's row indexing, with int64 indptr / int32 indices
    (anndata's layout for big files, where scipy copied all indices per call), repeats, empty rows."""
    import scipy.sparse as sp

    from trvae_cli.data.batching import dense_rows

    dense = sp.random(400, 50, density=0.15, random_state=3, dtype=np.float32).toarray()
    dense[5] = 0                                                  # an empty row
    m = sp.csr_matrix(dense)
    m.data[:7] = 0.0                                              # stored zeros stay zeros
    m.indptr = m.indptr.astype(np.int64)
    m.indices = m.indices.astype(np.int32)
    cols = np.random.default_rng(0).permutation(50)
    for rows in (np.array([], dtype=int), np.array([399]), np.array([5, 5, 9]), np.arange(0, 400, 3)):
        np.testing.assert_array_equal(dense_rows(m, rows), m[rows].toarray())
        np.testing.assert_array_equal(dense_rows(m, rows, cols), m[rows][:, cols].toarray())
        assert dense_rows(m, rows).dtype == np.float32


@pytest.mark.parametrize("n, batch_size", [(1699, 512), (1790, 32), (100, 30), (64, 64), (5, 512), (523, 64)])
def test_unbalanced_batches_have_one_shape_and_see_every_cell(n, batch_size):
    """--no-balanced-batches: one batch size (one XLA compile), each cell in every epoch, none twice in a batch."""
    labels = _labels((n // 4, n - n // 4))
    sampler = BalancedSampler(labels, batch_size, seed=2, balanced=False)
    for _ in range(3):
        batches = sampler.epoch()
        assert len(batches) == math.ceil(n / batch_size)
        assert {len(b) for b in batches} == {sampler.batch_size}
        assert all(len(np.unique(b)) == len(b) for b in batches)
        np.testing.assert_array_equal(np.unique(np.concatenate(batches)), np.arange(n))
        assert n <= sum(map(len, batches)) < n + len(batches)     # the last batch's few extra cells only


def test_unbalanced_batches_ignore_the_conditions():
    """Plain shuffling: a batch's condition counts follow the data (here 9:1), not an equal share."""
    labels = _labels((900, 100))
    counts = np.array([np.bincount(labels[b], minlength=2) for b in
                       BalancedSampler(labels, 100, seed=0, balanced=False).epoch()]).sum(axis=0)
    np.testing.assert_array_equal(counts, [900, 100])
