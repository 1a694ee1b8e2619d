"""The digit QA set: deterministic build, answers that follow from the label, split by image, and its DataModule."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from prismrl.data.digit_qa import QUESTION_TYPES, answer_for, ensure_digit_qa
from prismrl.data.qa import ImageQABatch
from prismrl.data.loaders import LoaderSettings
from prismrl.datamodules.digit_qa import DigitQADataModule, ParquetQADataModule


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return ensure_digit_qa(tmp_path_factory.mktemp("digit_qa"))


def test_answers_by_hand():
    assert [answer_for(7, t) for t in ("digit", "parity", "size")] == ["seven", "odd", "yes"]
    assert [answer_for(0, t) for t in ("digit", "parity", "size")] == ["zero", "even", "no"]
    assert [answer_for(5, "size"), answer_for(6, "size"), answer_for(4, "parity")] == ["no", "yes", "even"]
    with pytest.raises(ValueError, match="question_type: expected one of"):
        answer_for(3, "colour")
    with pytest.raises(ValueError, match="label: expected a digit"):
        answer_for(10, "digit")


def test_build_writes_three_questions_per_image_split_by_image(built):
    train, val = pq.read_table(built.train_parquet).to_pylist(), pq.read_table(built.val_parquet).to_pylist()
    assert (built.num_train, built.num_val) == (len(train), len(val)) and len(train) + len(val) == 3 * 1797
    assert set(train[0]) == {"image", "question", "answer", "question_type", "label"}
    for rows in (train, val):
        per_image = Counter(row["image"] for row in rows)
        assert set(Counter(per_image.values())) <= {3, 6, 9}  # 3 questions per image (identical renders share bytes)
        for row in rows:
            assert row["answer"] == answer_for(row["label"], row["question_type"])
            assert row["question"] in QUESTION_TYPES[row["question_type"]][0]
    assert not {row["image"] for row in train} & {row["image"] for row in val}  # no image on both sides
    assert np.bincount([r["label"] for r in val], minlength=10).min() >= 3 * 35  # every class held out
    assert len({r["question"] for r in train}) == sum(len(w) for w, _ in QUESTION_TYPES.values())  # all wordings used
    assert len({r["answer"] for r in train}) == 10 + 2 + 2
    assert [r["question_type"] for r in train[:12]] != ["digit", "parity", "size"] * 4  # rows are shuffled
    assert Image.open(io.BytesIO(train[0]["image"])).size == (32, 32)


def test_build_is_deterministic_and_keyed_by_settings(built, tmp_path):
    again = ensure_digit_qa(tmp_path)
    assert pq.read_table(again.train_parquet).equals(pq.read_table(built.train_parquet))
    digits_only = ensure_digit_qa(tmp_path, question_types=["digit"])
    assert digits_only.root != again.root and digits_only.num_train * 3 == again.num_train
    assert set(pq.read_table(digits_only.val_parquet).column("question_type").to_pylist()) == {"digit"}
    with pytest.raises(ValueError, match="question_types: expected distinct names"):
        ensure_digit_qa(tmp_path, question_types=["digit", "digit"])
    with pytest.raises(ValueError, match="question_types: expected distinct names"):
        ensure_digit_qa(tmp_path, question_types=["count"])


def test_datamodule_batches_and_exact_resume(built):
    root = str(built.root.parent.parent)  # the fixture's cache root: no second build
    dm = DigitQADataModule(root=root, loader=LoaderSettings(batch_size=8), image_size=32)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 4:
            break
    first = batches[0]
    assert isinstance(first, ImageQABatch) and len(first) == 8
    assert first.pixel_values.shape == (8, 3, 32, 32) and first.labels.dtype == torch.long
    for question, answer, kind, label in zip(first.questions, first.answers, first.question_types, first.labels.tolist()):
        assert answer == answer_for(label, kind) and question in QUESTION_TYPES[kind][0]
    state = {"epoch": 0, "batches_done": 2}
    resumed = DigitQADataModule(root=root, loader=LoaderSettings(batch_size=8), image_size=32).train_dataloader()
    resumed.load_state_dict(state)
    again = [b for _, b in zip(range(2), resumed)]
    assert [b.sample_ids for b in again] == [b.sample_ids for b in batches[2:4]]
    val = next(iter(dm.val_dataloader()))
    assert val.sample_ids == [f"val.parquet:{i}" for i in range(8)]  # sequential


def test_parquet_qa_datamodule_errors(built, tmp_path):
    with pytest.raises(ValueError, match="answer_column: column 'reply' not found"):
        ParquetQADataModule(str(built.train_parquet), str(built.val_parquet), answer_column="reply").setup("fit")
    with pytest.raises(FileNotFoundError, match="val_path: no Parquet file"):
        ParquetQADataModule(str(built.train_parquet), str(tmp_path / "missing.parquet")).setup("fit")
    with pytest.raises(ValueError, match="loader.batch_size: expected an int >= 1"):
        ParquetQADataModule(str(built.train_parquet), str(built.val_parquet), loader=LoaderSettings(batch_size=0))
    table = pq.read_table(built.val_parquet).slice(0, 4)
    empty = table.set_column(table.schema.get_field_index("answer"), "answer", [["seven", " ", "odd", "no"]])
    pq.write_table(empty, tmp_path / "empty.parquet")
    dm = ParquetQADataModule(str(tmp_path / "empty.parquet"), str(tmp_path / "empty.parquet"), loader=LoaderSettings(batch_size=2))
    dm.setup("fit")
    with pytest.raises(ValueError, match="row 1 of empty.parquet: column 'answer' is empty"):
        dm.val_dataset[1]
