"""Predictions as Parquet rows: one row per predicted example, one column per output.

A stage's ``predict_step`` returns a dict of per-row values (tensors ``[B]`` / ``[B, D]``, lists of length B);
each becomes a column: ``[B]`` a scalar column, ``[B, D]`` a fixed-size list (embeddings, probabilities), lists of
str / numbers / lists as they are; empty tensors (an output the batch lacks) are left out. Any other prediction
(a list of B answers) becomes the column ``prediction``.
``row`` is the example's index in the predict dataset when Lightning knows it, else its running position.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

PARTIAL_SUFFIX = ".partial"


def _column(name: str, value: Any, rows: int) -> pa.Array:
    if isinstance(value, Tensor):
        if value.dim() == 0 or value.shape[0] != rows:
            raise ValueError(f"predictions[{name!r}]: expected a tensor with {rows} rows (one per example), "
                             f"received shape {tuple(value.shape)}")
        array = value.detach().cpu()
        array = (array.float() if array.is_floating_point() and array.dtype != torch.float64 else array).numpy()
        if array.ndim == 1:
            return pa.array(array)
        flat = pa.array(np.ascontiguousarray(array).reshape(-1))  # [B * prod(rest)]
        for size in reversed(array.shape[1:]):  # [B, D] -> fixed_size_list<D>; [B, D1, D2] nests
            flat = pa.FixedSizeListArray.from_arrays(flat, int(size))
        return flat
    if isinstance(value, (list, tuple)):
        if len(value) != rows:
            raise ValueError(f"predictions[{name!r}]: expected {rows} values (one per example), received {len(value)}")
        return pa.array([v.tolist() if isinstance(v, Tensor) else v for v in value])
    raise TypeError(f"predictions[{name!r}]: expected a tensor or a list with one entry per example, "
                    f"received {type(value).__name__}")


def _rows(value: Any) -> int:
    return int(value.shape[0]) if isinstance(value, Tensor) and value.dim() else len(value)


def prediction_table(prediction: Any, row_ids: list[int] | None = None, first_row: int = 0) -> pa.Table:
    """One ``predict_step`` output -> a table with a ``row`` column (``row_ids``, else ``first_row``, ``first_row``
    + 1, ...) and one column per key (module docstring)."""
    columns = dict(prediction) if isinstance(prediction, dict) else {"prediction": prediction}
    columns = {k: v for k, v in columns.items() if not (isinstance(v, Tensor) and v.numel() == 0)}  # absent outputs
    if not columns:
        raise ValueError("predictions: expected at least one output per batch, received an empty dict")
    rows = _rows(next(iter(columns.values())))
    arrays = {"row": pa.array(row_ids if row_ids is not None else range(first_row, first_row + rows), pa.int64())}
    if len(arrays["row"]) != rows:
        raise ValueError(f"batch_indices: expected {rows} indices, received {len(arrays['row'])}")
    arrays.update({str(name): _column(str(name), value, rows) for name, value in columns.items()})
    return pa.table(arrays)


class ParquetPredictionWriter(BasePredictionWriter):
    """Writes ``prismrl predict`` outputs row by row to ``<predict log dir>/<filename>`` (Parquet, module docstring).

    Batches are appended as they come (``write_interval="batch"``), to ``<filename>.partial``, renamed when the epoch
    ends. Under several processes each rank writes ``<stem>.rank<R>.parquet``. Columns missing from a later batch are
    null there (e.g. audio embeddings only where a batch has audio); a column the first batch lacked is an error.

    Args:
        filename: the file's name inside the predict run folder (``predict/version_N/``).
        output_dir: a folder to write to instead of the run folder.
    """

    def __init__(self, filename: str = "predictions.parquet", output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        if not filename.endswith(".parquet"):
            raise ValueError(f"filename: expected a name ending in .parquet, received {filename!r}")
        self.filename, self.output_dir = filename, output_dir
        self.path: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._written = 0

    def _target(self, trainer) -> Path:
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        name = self.filename
        if trainer.world_size > 1:
            name = f"{name.removesuffix('.parquet')}.rank{trainer.global_rank}.parquet"
        return folder / name

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self.path, self._writer, self._written = self._target(trainer), None, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        ids = list(batch_indices) if batch_indices is not None and len(batch_indices) else None
        table = prediction_table(prediction, ids, first_row=self._written)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._partial(), table.schema)
        schema = self._writer.schema
        if extra := [name for name in table.column_names if name not in schema.names]:
            raise ValueError(f"predictions: batch {batch_idx} has outputs {extra} that the first batch lacked "
                             f"(columns {schema.names})")
        columns = [table[name] if name in table.column_names else pa.nulls(table.num_rows, schema.field(name).type)
                   for name in schema.names]
        self._writer.write_table(pa.table(columns, schema=schema))
        self._written += table.num_rows

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        os.replace(self._partial(), self.path)
        print(f"prismrl predict: {self._written} rows written to {self.path}", file=sys.stderr)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._writer is not None:  # an interrupted predict leaves no half-written file
            self._writer.close()
            self._writer = None
            self._partial().unlink(missing_ok=True)

    def _partial(self) -> Path:
        return self.path.with_name(self.path.name + PARTIAL_SUFFIX)
