"""Cells: an ``.h5ad`` file or an in-memory AnnData, its matrix in memory or read backed from disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import RESIDUAL_SCALES
from ..data import anndata_io as io
from ..data.batching import dense_rows, iter_row_chunks
from ..errors import TrvaeError
from ..outputs import check_space, is_prediction_file, staged
from .base import DataSetup, Selection, safe_name


def _min_value(matrix) -> float:
    """Smallest entry of a dense or sparse matrix (implicit zeros included)."""
    if getattr(matrix, "nnz", None) is not None:
        data = matrix.data
        low = float(data.min()) if data.size else 0.0
        return min(low, 0.0) if matrix.nnz < matrix.shape[0] * matrix.shape[1] else low
    return float(np.min(matrix)) if np.size(matrix) else 0.0


class CellSource:
    """Cells of an AnnData: obs for the labels, X (or a layer) for the values.

    Open with :meth:`open`; ``backed=True`` (a path only) leaves the matrix on disk and reads it in
    blocks of rows, so memory does not grow with the number of cells.
    """

    kind = "cells"
    default_decode = "counterfactual"
    residual_scales = RESIDUAL_SCALES
    auto_residual = None   # what --residual-scale auto means (None: decided by the data)
    value_range = None
    input_defaults: dict = {}
    batch_size = 1024
    output_marker = staticmethod(is_prediction_file)   # what --force may replace
    output_suffix = ".h5ad"

    def __init__(self, adata, matrix, path: Path | None, layer: str | None, backed: bool):
        self.adata, self.matrix, self.path, self.layer, self.backed = adata, matrix, path, layer, backed
        self.columns: np.ndarray | None = None     # data columns in the model's gene order (None: the same)
        self._check_not_empty()

    @classmethod
    def open(cls, data, layer: str | None = None, backed: bool = False) -> "CellSource":
        if isinstance(data, (str, Path)):
            path = Path(data)
            if backed:
                from ..data.backed import read_backed

                adata, matrix = read_backed(path, layer)
            else:
                adata = io.read_h5ad(path)
                matrix = io.get_matrix(adata, layer)
            return cls(adata, matrix, path, layer, backed)
        if not hasattr(data, "obs") or not hasattr(data, "var_names"):
            raise TrvaeError(f"expected an .h5ad path or an AnnData, got {type(data).__name__}")
        if backed:
            raise TrvaeError("--backed reads a file from disk: pass the .h5ad path, not an AnnData")
        return cls(data, io.get_matrix(data, layer), None, layer, False)

    def _check_not_empty(self) -> None:
        n_obs, n_vars = self.adata.n_obs, self.adata.n_vars
        if n_vars == 0 or n_obs == 0:
            self.close()
            raise TrvaeError(f"{self.name} holds {n_obs} cells x {n_vars} genes: nothing to train or transform on")

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "the AnnData"

    @property
    def recorded_path(self) -> str | None:
        return str(self.path.resolve()) if self.path is not None else None

    def close(self) -> None:
        if hasattr(self.matrix, "close"):
            self.matrix.close()
        if getattr(self.adata, "isbacked", False) and self.path is not None:
            self.adata.file.close()

    def _matrix_name(self) -> str:
        return "X" if self.layer is None else f"layer {self.layer!r}"

    # -- training --------------------------------------------------------------------------
    def check_settings(self, s, warn):
        """Cells train the dense network; ``--backed`` draws proportional batches (recorded as such)."""
        if s.arch != "mlp":
            raise TrvaeError(f"--arch {s.arch} is for image input; cells use --arch mlp")
        if self.backed and s.balanced_batches:
            warn("--backed draws each batch's conditions in proportion to the blocks it reads, not in equal "
                 "shares: training with balanced_batches false (recorded so)")
            s = dataclasses.replace(s, balanced_batches=False)
        return s

    def training(self, s, *, exclude=(), condition_key=None, cell_type_key=None, warn=None):
        """(TrainingData, DataSetup, (rows, labels)) of the cells that train the model."""
        from ..engine.fit import TrainingData

        if condition_key is None:
            raise TrvaeError("--condition is required for .h5ad input (the obs column of the conditions)")
        adata, matrix = self.adata, self.matrix
        io.require_unique_genes(adata.var_names, self.name)
        selection = io.select_training_cells(adata, condition_key, cell_type_key, exclude)
        rows = np.flatnonzero(selection.mask)
        if self.backed:
            from ..data.backed import check_finite_backed, first_values

            check_finite_backed(matrix, self._matrix_name())
            sample = first_values(matrix)
            counts_like, low = io.looks_like_counts(sample), float(sample.min()) if sample.size else 0.0
        else:
            picked = matrix[rows] if len(rows) < adata.n_obs else matrix
            io.check_finite(picked, self._matrix_name())
            counts_like, low = io.looks_like_counts(matrix), _min_value(picked)
        if counts_like and warn is not None:
            warn("the data look like raw counts (all integers, large values); trVAE's MSE loss expects "
                 "log-normalised values: normalise and log1p first, or choose a matrix with --layer")
        if low < 0 and s.output_activation == "relu" and warn is not None:
            warn(f"{self._matrix_name()} has negative values (scaled data?), which a ReLU output cannot "
                 "reproduce: use --output-activation linear, or log-normalised values; transform then adds "
                 "changes on the linear scale")
        labels = selection.labels

        def make_batches(positions, seed, fixed, replicas, batch_size):
            from .feeders import BackedBatches, CellBatches

            if self.backed:
                return BackedBatches(matrix, rows[positions], labels[positions], batch_size, seed=seed,
                                     fixed=fixed, replicas=replicas)
            return CellBatches(matrix, rows[positions], labels[positions], batch_size, seed=seed, fixed=fixed,
                               balanced=s.balanced_batches, replicas=replicas)

        meta = {"data": self.recorded_path, "shape": list(adata.shape), "condition_key": condition_key,
                "conditions": selection.conditions, "cell_type_key": cell_type_key, "exclude": list(exclude),
                "layer": self.layer, "backed": bool(self.backed)}
        setup = DataSetup(kind=self.kind, conditions=selection.conditions, path=self.recorded_path,
                          condition_key=condition_key, cell_type_key=cell_type_key, layer=self.layer,
                          backed=bool(self.backed), var_names=[str(g) for g in adata.var_names],
                          exclude=list(exclude), counts={"n_cells_excluded": selection.n_excluded})
        data = TrainingData(labels=labels, n_conditions=len(selection.conditions),
                            model_args={"n_genes": adata.n_vars}, example_shape=(adata.n_vars,),
                            make_batches=make_batches, meta=meta,
                            describe={"cells": int(adata.n_obs), "genes": int(adata.n_vars),
                                      "cells_excluded": int(selection.n_excluded), "condition_key": condition_key,
                                      "cell_type_key": cell_type_key})
        return data, setup, rows

    @staticmethod
    def record_split(setup: DataSetup, n_train: int, n_validation: int) -> None:
        setup.counts = {"n_cells_train": n_train, "n_cells_validation": n_validation, **setup.counts}

    # -- inference -------------------------------------------------------------------------
    def check_setup(self, setup: DataSetup) -> None:
        """The model's genes must all be in the data (any order): names the missing ones."""
        self.columns = io.gene_indexer(self.adata.var_names, setup.var_names)

    def check_options(self, *, condition_key=None, cell_type_key=None, residual_scale="auto", draws=1) -> None:
        """Every transform option applies to cells."""

    def select(self, setup: DataSetup, condition: str, group: str | None, *, condition_key=None,
               cell_type_key=None) -> Selection:
        """The cells of ``condition`` (and of cell type ``group``), by the model's keys unless given."""
        condition_key = condition_key or setup.condition_key
        cell_type_key = cell_type_key or setup.cell_type_key
        adata = self.adata
        cond = io.require_obs_key(adata, condition_key, "condition")
        io.require_values(cond, [condition], condition_key)
        mask = cond.values == condition
        if group is not None:
            if not cell_type_key:
                raise TrvaeError("--cell-type needs a cell-type key (train with --cell-type-key or pass "
                                 "--cell-type-key)")
            ct = io.require_obs_key(adata, cell_type_key, "cell-type")
            io.require_values(ct, [group], cell_type_key)
            mask &= ct.values == group
            if not mask.any():
                raise TrvaeError(f"no cells are both {condition_key}={condition!r} and {cell_type_key}={group!r}")
        return Selection(np.flatnonzero(mask), condition, group, condition_key, cell_type_key)

    def known_rows(self, setup: DataSetup, condition_key=None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, condition codes) of every cell whose condition the model knows (for embedding)."""
        condition_key = condition_key or setup.condition_key
        cond = io.require_obs_key(self.adata, condition_key, "condition").values
        known = np.isin(cond, setup.conditions)
        if not known.any():
            raise TrvaeError(f"no cell of {self.name} has a condition the model knows "
                             f"({', '.join(setup.conditions)})")
        rows = np.flatnonzero(known)
        return rows, np.array([setup.code(c) for c in cond[rows]])

    def _rows(self, rows: np.ndarray):
        """The rows to read: a copy in memory, or a lazy view when backed."""
        if self.backed:
            from ..data.backed import RowsView

            return RowsView(self.matrix, rows)
        return self.matrix[rows]

    def check_values(self, rows: np.ndarray, setup: DataSetup) -> float:
        """NaN / inf check of the rows (block by block when backed); returns their smallest value."""
        sub = self._rows(rows)
        blocks = sub.blocks() if hasattr(sub, "blocks") else [sub]
        low = 0.0
        for block in blocks:
            io.check_finite(block, self._matrix_name())
            low = min(low, _min_value(block))
        return low

    def blocks(self, rows: np.ndarray, batch_size: int | None = None) -> Iterator[np.ndarray]:
        """Dense float32 blocks of ``rows``, columns in the model's gene order."""
        sub = self._rows(rows)
        for chunk in iter_row_chunks(len(rows), batch_size or self.batch_size):
            yield dense_rows(sub, chunk, self.columns)

    def groups_of(self, rows: np.ndarray, setup: DataSetup) -> np.ndarray | None:
        """The cell type of each row (scGen's arithmetic weighs cell types equally), or None."""
        if not setup.cell_type_key:
            return None
        return self.adata.obs[setup.cell_type_key].astype(str).values[rows]

    def obs(self, rows: np.ndarray):
        return self.adata.obs.iloc[rows].copy()

    # -- predictions -----------------------------------------------------------------------
    @property
    def sparse_output(self) -> bool | None:
        """Predictions of sparse input are CSR where they stay sparse (None: decided by the first block's
        density, see :data:`~trvae_cli.data.h5ad_writer.SPARSE_MAX_DENSITY`); of dense input, dense."""
        sparse_input = bool(getattr(self.matrix, "sparse", False)) or getattr(self.matrix, "nnz", None) is not None
        return None if sparse_input else False

    def _annotations(self, selection: Selection, setup: DataSetup, target: str, record: dict, draws: int,
                     residual_scale: str | None, nnz_per_row: np.ndarray, sparse: bool) -> dict:
        """obs, var and uns of the predicted cells (see :meth:`prediction`)."""
        import pandas as pd

        condition_key, cell_type_key = selection.condition_key, selection.group_key
        n = len(selection.rows)
        obs = self.obs(selection.rows)
        names = obs.index.astype(str)
        suffix = f"-pred-{target}"
        obs = pd.concat([obs] * draws) if draws > 1 else obs
        # unique names: ad.concat([real, pred]) must not see the source cells twice
        obs.index = pd.Index([f"{name}{suffix}" + (f"-{d}" if draws > 1 else "") for d in range(draws)
                              for name in names])
        obs["trvae_source_cell"] = np.tile(np.asarray(names, dtype=object), draws)
        if draws > 1:   # draw-major: rows d * n ... (d + 1) * n - 1 are draw d of every cell
            obs["trvae_draw"] = np.repeat(np.arange(draws), n)
        obs[condition_key] = pd.Categorical([target] * len(obs), categories=setup.conditions)
        obs["trvae_source_condition"] = pd.Categorical([selection.condition] * len(obs), categories=setup.conditions)
        recomputed, dropped = io.refresh_cell_qc(obs, nnz_per_row)
        var = self.adata.var.iloc[self.columns if self.columns is not None else slice(None)].copy()
        var.index = pd.Index(setup.var_names, name=None)        # the data's gene annotations, model order
        uns = {**record, "residual_scale": residual_scale or "", "data": self.recorded_path or "",
               "condition_key": condition_key, "cell_type_key": cell_type_key or "",
               "cell_type": selection.group or "", "layer": setup.layer or "", "n_cells": int(n),
               "x_format": "csr" if sparse else "dense",
               "obs_recomputed": ",".join(recomputed), "obs_dropped": ",".join(dropped)}
        return {"obs": obs, "var": var, "uns": {"trvae": uns}}

    def prediction(self, arrays, selection: Selection, setup: DataSetup, target: str, record: dict):
        """The predicted cells as an AnnData (in memory).

        obs: the source cells' (one copy per draw), named ``<cell>-pred-<target>[-<draw>]`` with the
        source name in ``trvae_source_cell``, the condition set to ``target``; per-cell QC columns
        recomputed from the prediction (genes detected) or dropped (counts, which a normalised
        prediction does not hold). var: the data's gene annotations. z in ``obsm["X_trvae"]``,
        provenance in ``uns["trvae"]``. X is CSR where the input is sparse and the prediction stays so.
        """
        import anndata as ad

        x = arrays.x
        sparse = getattr(x, "nnz", None) is not None
        nnz = np.diff(x.indptr) if sparse else np.count_nonzero(x, axis=1)
        parts = self._annotations(selection, setup, target, record, arrays.draws, arrays.residual_scale, nnz, sparse)
        pred = ad.AnnData(X=x, obs=parts["obs"], var=parts["var"])
        pred.obsm["X_trvae"] = arrays.z
        pred.uns.update(parts["uns"])
        return pred

    def write_stream(self, stream, selection: Selection, setup: DataSetup, target: str, record: dict,
                     out: Path) -> None:
        """Write the predictions of ``stream`` to ``out`` block by block (the same file
        :meth:`prediction` + ``write_h5ad`` give, without holding X in memory); atomically."""
        from ..data.h5ad_writer import write_streamed

        n_rows, n_genes = len(selection.rows) * stream.draws, len(setup.var_names)
        zs: list[np.ndarray] = []

        def blocks():
            for block in stream:
                zs.append(block.z)
                yield block.x

        def room(first: np.ndarray) -> None:   # the whole file, estimated from the first block
            per_row = min(first.nbytes, np.count_nonzero(first) * 8 + first.shape[0] * 8) / max(len(first), 1)
            check_space(out.parent, int(per_row * n_rows * 1.1) + (4 << 20), str(out))

        def annotations(written):
            parts = self._annotations(selection, setup, target, record, stream.draws, stream.residual_scale,
                                      written.nnz_per_row, written.sparse)
            return {**parts, "obsm": {"X_trvae": np.concatenate(zs)}}

        with staged(out) as tmp:
            write_streamed(tmp, blocks(), n_rows, n_genes, sparse=self.sparse_output, annotations=annotations,
                           before_first=room)

    def default_output(self, model_dir: Path, selection: Selection, target: str) -> Path:
        name = f"{safe_name(selection.condition)}_to_{safe_name(target)}"
        if selection.group is not None:
            name += f"_{safe_name(selection.group)}"
        return model_dir / f"{name}.h5ad"
