"""Write a large synthetic perturbation ``.h5ad`` in bounded memory.

    python benchmarks/make_large.py runs/large_1e6.h5ad --cells 1000000 --genes 2000

Cells are generated and written ``--chunk`` at a time straight into the file's CSR arrays
(h5py, resizable datasets); obs and var go through anndata's ``write_elem``, so the file is a
regular AnnData that ``anndata.read_h5ad`` (in memory or backed) reads. Peak memory is set
by the chunk, not by ``--cells``.

The model: 8 cell types x 2 conditions (``control``, ``stimulated``), cells in random
order. Each gene has a log-normal base rate, each cell type 50 marker genes (x4); the
stimulated condition multiplies 100 shared response genes by 3 and 20 genes of each cell
type by 2-6. Counts are Poisson around library size x rate (library sizes log-normal,
median ~350 counts), so about 90 % of entries are 0; X is ``normalize_total`` (1e4) +
``log1p``, float32, CSR.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def gene_model(n_genes: int, n_types: int, seed: int):
    rng = np.random.default_rng(seed)
    base = rng.lognormal(-1.0, 2.0, n_genes)
    base /= base.sum()
    type_scale = np.ones((n_types, n_genes))
    for t in range(n_types):
        type_scale[t, rng.choice(n_genes, 50, replace=False)] *= 4.0
    shared = rng.choice(n_genes, 100, replace=False)
    stim = np.ones((n_types, n_genes))
    stim[:, shared] *= 3.0
    for t in range(n_types):
        own = rng.choice(n_genes, 20, replace=False)
        stim[t, own] *= rng.uniform(2.0, 6.0, 20)
    return base, type_scale, stim


def make_chunk(rng, n: int, model, n_types: int):
    import scipy.sparse as sp

    base, type_scale, stim = model
    types = rng.integers(0, n_types, n)
    conds = rng.integers(0, 2, n)
    rates = base[None, :] * type_scale[types] * np.where(conds[:, None] == 1, stim[types], 1.0)
    rates /= rates.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(350), 0.4, n)
    counts = rng.poisson(rates * library[:, None]).astype(np.float32)
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    x = sp.csr_matrix(np.log1p(counts / totals * 1e4).astype(np.float32))
    return x, types, conds


def write_large(path: Path, n_cells: int, n_genes: int, chunk: int = 20_000, seed: int = 0, n_types: int = 8):
    import anndata as ad
    import h5py
    from anndata.io import write_elem

    model = gene_model(n_genes, n_types, seed)
    rng = np.random.default_rng(seed + 1)
    tmp = path.with_name(path.name + ".partial")
    all_types, all_conds = np.empty(n_cells, np.int8), np.empty(n_cells, np.int8)
    nnz = 0
    with h5py.File(tmp, "w") as f:
        g = f.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)})
        data = g.create_dataset("data", (0,), dtype="float32", maxshape=(None,), chunks=(1 << 18,))
        indices = g.create_dataset("indices", (0,), dtype="int32", maxshape=(None,), chunks=(1 << 18,))
        indptr = g.create_dataset("indptr", (n_cells + 1,), dtype="int64")
        indptr[0] = 0
        for start in range(0, n_cells, chunk):
            n = min(chunk, n_cells - start)
            x, types, conds = make_chunk(rng, n, model, n_types)
            all_types[start:start + n], all_conds[start:start + n] = types, conds
            data.resize((nnz + x.nnz,))
            indices.resize((nnz + x.nnz,))
            data[nnz:] = x.data
            indices[nnz:] = x.indices
            indptr[start + 1: start + n + 1] = nnz + x.indptr[1:]
            nnz += x.nnz
        obs = pd.DataFrame({
            "condition": pd.Categorical.from_codes(all_conds, ["control", "stimulated"]),
            "cell_type": pd.Categorical.from_codes(all_types, [f"type{t}" for t in range(n_types)]),
        }, index=pd.Index([f"cell{i}" for i in range(n_cells)]))
        var = pd.DataFrame(index=pd.Index([f"gene{j}" for j in range(n_genes)]))
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
    tmp.rename(path)
    return nnz


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--cells", type=int, default=1_000_000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=20_000, help="cells generated and written at a time")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    nnz = write_large(Path(args.out), args.cells, args.genes, args.chunk, args.seed)
    dt = time.perf_counter() - t0
    size = Path(args.out).stat().st_size
    print(f"{args.out}: {args.cells:,} cells x {args.genes:,} genes, {nnz / (args.cells * args.genes):.1%} nonzero, "
          f"{size / 1e9:.2f} GB, {dt:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
