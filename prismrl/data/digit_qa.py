"""Question-answer pairs over scikit-learn's handwritten digits ("What digit is shown?" -> "seven").

Every image gets one row per question type, with the question's wording drawn by a seeded RNG:
  * "digit":  "What digit is shown?"            -> the number word ("seven")
  * "parity": "Is the digit even or odd?"        -> "even" | "odd"
  * "size":   "Is the digit greater than five?"  -> "yes" | "no"
so the answers are not a single template and part of them (parity, size) need a small inference on top of
reading the digit. Images are rendered like ``prismrl.data.digits`` (32x32 grey PNG) and split per class with
``stratified_split`` before the rows are expanded, so no image is in both splits; rows are shuffled before writing.

Written once into a content-keyed cache directory as Parquet (train.parquet, val.parquet; columns image,
question, answer, question_type, label), published with one atomic rename.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from prismrl.cache import MANIFEST, cache_dir, content_key, publish_cache_dir
from prismrl.data.digit_builds import (
    QADataset,
    split_digit_records,
    write_manifest,
    write_record_parquet,
)
from prismrl.data.digits import DIGIT_NAMES, IMAGE_PX, ROW_GROUP_SIZE, render_digit

DIGIT_QA_VERSION = 1
# question type -> (question wordings, answer of a label)
QUESTION_TYPES: dict[str, tuple[tuple[str, ...], Callable[[int], str]]] = {
    "digit": (("What digit is shown?", "Which number is written here?", "What number is in the image?"),
              lambda label: DIGIT_NAMES[label]),
    "parity": (("Is the digit even or odd?", "Is this number odd or even?"),
               lambda label: "odd" if label % 2 else "even"),
    "size": (("Is the digit greater than five?", "Is this number bigger than five?"),
             lambda label: "yes" if label > 5 else "no"),
}
COLUMNS = ("image", "question", "answer", "question_type", "label")


class DigitQADataset(QADataset):
    """Paths of one built copy."""


def check_question_types(question_types: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate a non-empty, duplicate-free selection of ``QUESTION_TYPES`` keys."""
    types = tuple(question_types)
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if not types or unknown or len(set(types)) != len(types):
        raise ValueError(f"question_types: expected distinct names from {sorted(QUESTION_TYPES)}, received {list(types)}")
    return types


def answer_for(label: int, question_type: str) -> str:
    """The answer string of ``question_type`` for digit ``label``."""
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"question_type: expected one of {sorted(QUESTION_TYPES)}, received {question_type!r}")
    if not 0 <= int(label) <= 9:
        raise ValueError(f"label: expected a digit in [0, 9], received {label!r}")
    return QUESTION_TYPES[question_type][1](int(label))


def qa_records(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, types: tuple[str, ...],
               rng: np.random.Generator) -> list[dict]:
    """One record per (image row, question type), shuffled; the PNG of an image is rendered once."""
    records = []
    for row in rows:
        png, label = render_digit(images[row]), int(labels[row])
        for question_type in types:
            wordings = QUESTION_TYPES[question_type][0]
            records.append({"image": png, "question": wordings[int(rng.integers(len(wordings)))],
                            "answer": answer_for(label, question_type), "question_type": question_type, "label": label})
    return [records[i] for i in rng.permutation(len(records))]


def write_qa_parquet(records: list[dict], path: Path) -> None:
    """Columns image (PNG bytes), question, answer, question_type, label, in row groups of ROW_GROUP_SIZE."""
    write_record_parquet(records, path, COLUMNS, {"image": pa.binary(), "label": pa.int64()})


def _build(tmp: Path, types: tuple[str, ...], val_fraction: float, seed: int) -> None:
    streams = {"train": 1, "val": 2}  # the RNG stream of each split's wordings and shuffle
    train, val = split_digit_records(val_fraction, seed, lambda images, labels, rows, split: qa_records(
        images, labels, rows, types, np.random.default_rng([seed, streams[split]])))
    write_qa_parquet(train, tmp / "train.parquet")
    write_qa_parquet(val, tmp / "val.parquet")
    write_manifest(tmp, {"version": DIGIT_QA_VERSION, "question_types": list(types), "num_train": len(train),
                         "num_val": len(val)})


def digit_qa_cache_path(root: str | Path | None = None, question_types: tuple[str, ...] = tuple(QUESTION_TYPES),
                        val_fraction: float = 0.2, seed: int = 0) -> Path:
    """``<root or cache_root()>/digit_qa/<key>``, key = hash(version, render size, layout, types, split, seed)."""
    parts = dict(version=DIGIT_QA_VERSION, image_px=IMAGE_PX, row_group_size=ROW_GROUP_SIZE,
                 question_types=list(check_question_types(question_types)), val_fraction=val_fraction, seed=seed)
    if root is None:
        return cache_dir("digit_qa", **parts)
    return Path(root) / "digit_qa" / content_key(**parts)


def ensure_digit_qa(root: str | Path | None = None, question_types: tuple[str, ...] | list[str] = tuple(QUESTION_TYPES),
                    val_fraction: float = 0.2, seed: int = 0) -> DigitQADataset:
    """Return the cached digit QA set, building it (about a second) if it is not there yet."""
    types = check_question_types(question_types)
    final = digit_qa_cache_path(root, types, val_fraction, seed)
    folder = publish_cache_dir(final, lambda tmp: _build(tmp, types, val_fraction, seed), MANIFEST)
    return DigitQADataset.at(folder, types)


__all__ = [
    "COLUMNS",
    "DIGIT_QA_VERSION",
    "QUESTION_TYPES",
    "DigitQADataset",
    "answer_for",
    "check_question_types",
    "digit_qa_cache_path",
    "ensure_digit_qa",
    "qa_records",
    "write_qa_parquet",
]
