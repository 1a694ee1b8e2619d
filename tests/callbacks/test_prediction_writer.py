"""ParquetPredictionWriter: per-row columns from predict_step outputs, written by a real Trainer.predict."""

from __future__ import annotations

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from prismrl.callbacks import ParquetPredictionWriter
from prismrl.callbacks.prediction_writer import prediction_table


def test_tensors_and_lists_become_one_column_each():
    prediction = {"embedding": torch.arange(6, dtype=torch.bfloat16).view(3, 2), "action": torch.tensor([2, 0, 1]),
                  "text": ["a", "b", "c"], "empty": torch.empty(0), "grid": torch.zeros(3, 2, 2)}
    table = prediction_table(prediction, first_row=10)
    assert table.column_names == ["row", "embedding", "action", "text", "grid"]  # the empty output is left out
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 2)
    assert table.schema.field("grid").type == pa.list_(pa.list_(pa.float32(), 2), 2)
    rows = table.to_pylist()
    assert [r["row"] for r in rows] == [10, 11, 12] and rows[2]["embedding"] == [4.0, 5.0]
    assert [r["action"] for r in rows] == [2, 0, 1] and rows[1]["text"] == "b"
    assert prediction_table(["yes", "no"], row_ids=[7, 3]).to_pylist() == [
        {"row": 7, "prediction": "yes"}, {"row": 3, "prediction": "no"}]


def test_outputs_of_another_length_are_named():
    with pytest.raises(ValueError, match=r"predictions\['b'\]: expected a tensor with 2 rows .* received shape \(3,\)"):
        prediction_table({"a": ["x", "y"], "b": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"predictions\['b'\]: expected 2 values .* received 1"):
        prediction_table({"a": torch.zeros(2), "b": ["x"]})
    with pytest.raises(TypeError, match=r"predictions\['b'\]: expected a tensor or a list .* received float"):
        prediction_table({"a": torch.zeros(2), "b": 1.0})


class Scorer(L.LightningModule):
    """Batch i of x [b, 2]: per-row sum and the rows themselves; ``extra`` from batch 1 on (the second case)."""

    def __init__(self, extra_later: bool = False) -> None:
        super().__init__()
        self.extra_later = extra_later
        self.weight = torch.nn.Parameter(torch.ones(()))

    def predict_step(self, batch, batch_idx):
        out = {"x": batch, "total": batch.sum(1) * self.weight}
        if batch_idx == 0 and not self.extra_later:
            out["first_only"] = batch[:, 0] > 0
        if batch_idx == 1 and self.extra_later:
            out["late"] = batch[:, 0]
        return out


def _predict(tmp_path, module):
    data = torch.arange(10, dtype=torch.float32).view(5, 2)  # [5, 2]
    writer = ParquetPredictionWriter(filename="scores.parquet")
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=[writer], logger=False, enable_progress_bar=False,
                        accelerator="cpu", devices=1)
    trainer.predict(module, DataLoader(data, batch_size=2))
    return writer


def test_a_real_predict_run_writes_every_row_with_nulls_where_a_batch_lacks_an_output(tmp_path):
    writer = _predict(tmp_path, Scorer())
    assert writer.path == tmp_path / "scores.parquet" and not list(tmp_path.glob("*.partial"))
    rows = pq.read_table(writer.path).to_pylist()
    assert [r["row"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["total"] for r in rows] == [1.0, 5.0, 9.0, 13.0, 17.0]
    np.testing.assert_array_equal([r["x"] for r in rows], np.arange(10).reshape(5, 2))
    assert [r["first_only"] for r in rows] == [False, True, None, None, None]


def test_an_output_the_first_batch_lacked_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"batch 1 has outputs \['late'\] that the first batch lacked"):
        _predict(tmp_path, Scorer(extra_later=True))
    assert not list(tmp_path.glob("*.parquet*"))  # no half-written file left behind


def test_the_filename_must_be_parquet():
    with pytest.raises(ValueError, match="filename: expected a name ending in .parquet, received 'out.csv'"):
        ParquetPredictionWriter(filename="out.csv")
