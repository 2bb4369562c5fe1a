"""A small synthetic perturbation data set, made deterministically from a seed.

``sample_data/perturbation.h5ad`` is the output of
``python -m trvae_cli.data.synthetic sample_data/perturbation.h5ad`` (seed 0).

How it is made (a gene-expression model with cell-type-specific responses):

* 4 cell types (``T``, ``B``, ``NK``, ``Mono``) x 3 conditions (``control``,
  ``stimulated``, ``inhibited``), 60-140 cells per group, 300 genes.
* Each gene has a base log-mean; each cell type up-regulates its own 30 marker
  genes. Each cell has a library size drawn from a log-normal.
* A condition multiplies the expected counts of its response genes by a fold
  change: 40 genes respond in every cell type (the shared response), and each
  cell type has 15 genes of its own that respond only in it, with a
  cell-type-specific strength (NK responds twice as strongly to
  ``stimulated`` as T does). In log space a fold change shifts a gene by an
  amount that depends on its baseline, so a plain mean shift across cell types
  is not the right answer for a held-out type.
* Counts are negative-binomial (gamma-Poisson, shape 5: variance = mean + mean^2/5), then
  normalised to 10,000 per cell and ``log1p``-transformed into a sparse float32
  X; the raw counts are kept in ``layers["counts"]``.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import scipy.sparse as sp

CELL_TYPES = ("T", "B", "NK", "Mono")
CONDITIONS = ("control", "stimulated", "inhibited")


def make_perturbation_data(n_genes: int = 300, seed: int = 0):
    import anndata as ad

    rng = np.random.default_rng(seed)
    base = rng.normal(-0.5, 1.2, n_genes)                       # log mean per gene
    genes = np.array([f"gene{i:03d}" for i in range(n_genes)])
    order = rng.permutation(n_genes)
    markers = {ct: order[30 * i: 30 * (i + 1)] for i, ct in enumerate(CELL_TYPES)}
    shared = {cond: rng.choice(n_genes, 40, replace=False) for cond in CONDITIONS[1:]}
    own = {(ct, cond): rng.choice(n_genes, 15, replace=False) for ct in CELL_TYPES for cond in CONDITIONS[1:]}
    shared_lfc = {cond: rng.normal(0, 1.0, 40) + np.sign(rng.normal(size=40)) * 1.0 for cond in CONDITIONS[1:]}
    own_lfc = {key: np.sign(rng.normal(size=15)) * rng.uniform(1.0, 2.5, 15) for key in own}
    strength = {
        ("T", "stimulated"): 0.8, ("B", "stimulated"): 1.0, ("NK", "stimulated"): 1.6, ("Mono", "stimulated"): 1.3,
        ("T", "inhibited"): 1.0, ("B", "inhibited"): 0.6, ("NK", "inhibited"): 1.2, ("Mono", "inhibited"): 0.9,
    }

    blocks, obs = [], []
    for ct in CELL_TYPES:
        log_mu = base.copy()
        log_mu[markers[ct]] += rng.uniform(1.5, 3.0, len(markers[ct]))
        for cond in CONDITIONS:
            mu = log_mu.copy()
            if cond != "control":
                k = strength[(ct, cond)]
                mu[shared[cond]] += k * shared_lfc[cond]
                mu[own[(ct, cond)]] += own_lfc[(ct, cond)]
            n = int(rng.integers(60, 141))
            lib = rng.lognormal(0.0, 0.35, n)[:, None]
            mean = np.exp(mu)[None, :] * lib
            r = 5.0  # NB shape: variance = mean + mean^2 / r
            counts = rng.poisson(rng.gamma(r, mean / r))
            blocks.append(counts.astype(np.float32))
            obs += [(ct, cond)] * n
    counts = np.vstack(blocks)
    size = counts.sum(axis=1, keepdims=True)
    size[size == 0] = 1.0
    lognorm = np.log1p(counts / size * 1e4).astype(np.float32)
    obs_df = pd.DataFrame(obs, columns=["cell_type", "condition"])
    obs_df.index = [f"cell{i:05d}" for i in range(len(obs_df))]
    obs_df["cell_type"] = pd.Categorical(obs_df["cell_type"], categories=list(CELL_TYPES))
    obs_df["condition"] = pd.Categorical(obs_df["condition"], categories=list(CONDITIONS))
    adata = ad.AnnData(X=sp.csr_matrix(lognorm), obs=obs_df, var=pd.DataFrame(index=genes))
    adata.layers["counts"] = sp.csr_matrix(counts)
    adata.uns["generator"] = {"function": "trvae_cli.data.synthetic.make_perturbation_data",
                              "n_genes": n_genes, "seed": seed}
    return adata


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else "sample_data/perturbation.h5ad"
    adata = make_perturbation_data()
    adata.write_h5ad(path, compression="gzip")
    print(f"wrote {path}: {adata.n_obs} cells x {adata.n_vars} genes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
