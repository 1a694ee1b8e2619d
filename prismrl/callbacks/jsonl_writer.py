"""Predictions as JSON Lines: one object per predicted example (e.g. the answers of ``VisionLanguageSFTModule``:
``{"row", "sample_id", "question", "prediction", "answer", "question_type", "has_audio", "exact_match"}``).

Rows are built as ``prismrl.callbacks.prediction_writer.prediction_table`` builds them (a dict of per-row values ->
one key per output; tensors ``[B, D]`` become lists), appended batch by batch to ``<filename>.partial`` and renamed
when the epoch ends; under several processes each rank writes ``<stem>.rank<R>.jsonl``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO

from lightning.pytorch.callbacks import BasePredictionWriter

from prismrl.callbacks.prediction_writer import PARTIAL_SUFFIX, prediction_table


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes ``prismrl predict`` outputs to ``<predict log dir>/<filename>`` as JSON Lines (module docstring).

    Args:
        filename: the file's name inside the predict run folder (``predict/version_N/``), ending in .jsonl.
        output_dir: a folder to write to instead of the run folder.
    """

    def __init__(self, filename: str = "predictions.jsonl", output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        if not filename.endswith(".jsonl"):
            raise ValueError(f"filename: expected a name ending in .jsonl, received {filename!r}")
        self.filename, self.output_dir = filename, output_dir
        self.path: Path | None = None
        self._file: IO[str] | None = None
        self._written = 0

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        name = self.filename
        if trainer.world_size > 1:
            name = f"{name.removesuffix('.jsonl')}.rank{trainer.global_rank}.jsonl"
        self.path, self._file, self._written = folder / name, None, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        ids = list(batch_indices) if batch_indices is not None and len(batch_indices) else None
        rows = prediction_table(prediction, ids, first_row=self._written).to_pylist()
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._partial(), "w", encoding="utf-8")  # noqa: SIM115 - closed at epoch end
        for row in rows:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._written += len(rows)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        os.replace(self._partial(), self.path)
        print(f"prismrl predict: {self._written} rows written to {self.path}", file=sys.stderr)

    def _partial(self) -> Path:
        return self.path.with_name(self.path.name + PARTIAL_SUFFIX)


__all__ = ["JsonlPredictionWriter"]
