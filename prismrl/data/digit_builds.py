"""Steps shared by the digit dataset builders (``digit_qa``, ``trimodal_digits``, ``trimodal_qa``).

* ``split_digit_records``: scikit-learn's digits -> per-class train / val rows (``stratified_split``) -> each
  split's records from the builder's ``make_records(images, labels, rows, split)``.
* ``check_val_voices`` / ``split_voices``: the spoken-digit voices held out for validation, and each split's voices.
* ``seeded_rows`` / ``draw_clip``: each row with its own generator, and a clip of a digit drawn with it.
* ``clip_columns``: a row's audio columns (WAV bytes, clip file, voice), all null for a row without its clip.
* ``write_record_parquet``: records -> named, typed Parquet columns in row groups of ROW_GROUP_SIZE.
* ``write_manifest`` / ``QADataset.at``: a build's manifest, and the paths and sizes of a built QA set read from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prismrl.cache import MANIFEST
from prismrl.data.digits import ROW_GROUP_SIZE, stratified_split
from prismrl.data.spoken_digits import SpokenDigitClip, clip_bytes, spoken_digit_voices

MakeRecords = Callable[[np.ndarray, np.ndarray, np.ndarray, str], list[dict]]  # images, labels, rows, split -> records


def split_digit_records(val_fraction: float, seed: int, make_records: MakeRecords) -> tuple[list[dict], list[dict]]:
    """(train, val) = ``make_records(images [N, 8, 8], labels [N], rows, split)`` for split "train" and "val", rows
    from ``stratified_split(labels, val_fraction, seed)`` over scikit-learn's digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)  # [N, 8, 8], [N]
    train_rows, val_rows = stratified_split(labels, val_fraction, seed)
    return make_records(images, labels, train_rows, "train"), make_records(images, labels, val_rows, "val")


def check_val_voices(val_voices: Sequence[str]) -> tuple[str, ...]:
    """``val_voices`` as a tuple: 1 to (all voices - 1) of the shipped voices, so both splits keep a voice."""
    val_voices = tuple(val_voices)
    voices = spoken_digit_voices()
    if not 0 < len(val_voices) < len(voices) or not set(val_voices) <= set(voices):
        raise ValueError(f"val_voices: expected 1..{len(voices) - 1} of {voices}, received {list(val_voices)}")
    return val_voices


def split_voices(val_voices: Sequence[str]) -> dict[str, list[str]]:
    """{"train": the shipped voices not in ``val_voices`` (in shipped order), "val": ``val_voices``}."""
    return {"train": [v for v in spoken_digit_voices() if v not in val_voices], "val": list(val_voices)}


def seeded_rows(rows: np.ndarray, seed: int) -> Iterator[tuple[int, np.random.Generator]]:
    """(row, a generator seeded with (seed, row)) per row: a row's draws do not depend on the split or its order."""
    for row in rows:
        yield int(row), np.random.default_rng([seed, int(row)])


def draw_clip(pools: dict[int, list[SpokenDigitClip]], digit: int, rng: np.random.Generator) -> SpokenDigitClip:
    """One of ``pools[digit]`` (``clips_by_digit``), drawn uniformly with ``rng``."""
    return pools[digit][int(rng.integers(len(pools[digit])))]


def clip_columns(clip: SpokenDigitClip, present: bool) -> dict[str, Any]:
    """{"audio": WAV bytes, "audio_file", "voice"} of ``clip``, or all None when the row has no clip."""
    if not present:
        return {"audio": None, "audio_file": None, "voice": None}
    return {"audio": clip_bytes(clip), "audio_file": clip.file, "voice": clip.voice}


def write_record_parquet(records: list[dict], path: Path, columns: Sequence[str],
                         types: dict[str, pa.DataType]) -> None:
    """The ``columns`` of ``records``, in that order, typed by ``types`` (others string), in row groups of
    ROW_GROUP_SIZE."""
    table = pa.table({name: pa.array([r[name] for r in records], type=types.get(name, pa.string())) for name in columns})
    pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """``folder/manifest.json``; a builder writes it last: it marks a complete build."""
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


@dataclass(frozen=True)
class QADataset:
    """Paths of one built copy of a question-answer set."""

    root: Path
    train_parquet: Path
    val_parquet: Path
    question_types: tuple[str, ...]
    num_train: int
    num_val: int

    @classmethod
    def at(cls, folder: Path, question_types: tuple[str, ...]) -> Self:
        """The built copy in ``folder`` (train.parquet, val.parquet; sizes from its manifest)."""
        manifest = json.loads((folder / MANIFEST).read_text())
        return cls(folder, folder / "train.parquet", folder / "val.parquet", question_types,
                   int(manifest["num_train"]), int(manifest["num_val"]))


__all__ = [
    "QADataset",
    "check_val_voices",
    "clip_columns",
    "draw_clip",
    "seeded_rows",
    "split_digit_records",
    "split_voices",
    "write_manifest",
    "write_record_parquet",
]
