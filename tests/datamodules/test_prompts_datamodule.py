"""PromptDataModule: built-in tasks and Parquet prompt files as list[PromptRecord] batches, exact resume."""

import io

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from prismrl.data.loaders import LoaderSettings
from prismrl.data.prompt_tasks import arithmetic_records
from prismrl.data.records import PromptRecord
from prismrl.datamodules.prompts import PromptDataModule
from prismrl.rewards.functions import ExactMatchReward, WeightedSumReward


def png(value: int, size=(6, 5), mode="L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value).save(buffer, format="PNG")
    return buffer.getvalue()


def write_prompts(path, n=20, images=True, answers=None, row_group_size=4, **extra):
    columns = {
        "prompt": [f"<image>Which shade is image {i}?" if images else f"Question {i}?" for i in range(n)],
        "answer": answers if answers is not None else [str(i) for i in range(n)],
        **extra,
    }
    if images:
        columns["image"] = [png(10 * i) for i in range(n)]
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def prompts_of(batches):
    return [[r.prompt for r in batch] for batch in batches]


def test_digit_vqa_batches_are_lists_of_records():
    dm = PromptDataModule(task="digit_vqa", task_kwargs={"image_size": 16},
                          loader=LoaderSettings(batch_size=3, val_batch_size=5),
                          max_train_prompts=12, max_val_prompts=7)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 4 and all(isinstance(b, list) and len(b) == 3 for b in train)
    record = train[0][0]
    assert isinstance(record, PromptRecord) and record.images[0].size == (16, 16) and record.answer in "0123456789"
    indices = sorted(r.meta["index"] for r in dm.dataset("train").records)
    assert sorted(r.meta["index"] for b in train for r in b) == indices
    val = list(dm.val_dataloader())
    assert [len(b) for b in val] == [5, 2]
    assert [r.meta["index"] for b in val for r in b] == [r.meta["index"] for r in dm.dataset("val").records]
    assert isinstance(dm.default_reward(), ExactMatchReward)


def test_train_order_depends_on_seed_and_epoch():
    def order(seed, epoch):
        dm = PromptDataModule(task="arithmetic", task_kwargs={"num_examples": 16}, loader=LoaderSettings(batch_size=4), seed=seed)
        loader = dm.train_dataloader()
        loader.set_epoch(epoch)
        return prompts_of(loader)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(sum(order(0, 1), [])) == sorted(r.prompt for r in arithmetic_records("train", num_examples=16))


def test_mid_epoch_resume_state_continues_exactly():
    def make():
        return PromptDataModule(task="arithmetic", task_kwargs={"num_examples": 40}, loader=LoaderSettings(batch_size=4), seed=5)

    loader = make().train_dataloader()
    loader.set_epoch(2)
    iterator = iter(loader)
    first = [next(iterator) for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches_done": 3}
    rest = list(iterator)
    resumed = make().train_dataloader()
    resumed.load_state_dict(state)
    assert prompts_of(resumed) == prompts_of(rest) and len(first) + len(rest) == 10


class PromptRecorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        assert isinstance(batch, list) and isinstance(batch[0], PromptRecord)
        self.seen.append([r.prompt for r in batch])
        return (self.weight - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(max_steps, root, callbacks=(), ckpt_path=None):
    model = PromptRecorder()
    dm = PromptDataModule(task="arithmetic", task_kwargs={"num_examples": 24}, loader=LoaderSettings(batch_size=4), seed=3)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=list(callbacks),
                        default_root_dir=root, limit_val_batches=0)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


def test_lightning_resume_from_a_mid_epoch_checkpoint(tmp_path):
    full = fit(10, tmp_path / "full")  # 6 batches per epoch
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1)
    crashed = fit(9, tmp_path, callbacks=[checkpoint])
    (path,) = list(tmp_path.glob("*step=8*.ckpt"))
    resumed = fit(10, tmp_path, ckpt_path=str(path))
    assert crashed.seen[:8] + resumed.seen == full.seen
    assert resumed.seen != full.seen[6:8]  # not a restart of the epoch


def test_parquet_records_with_images_and_numeric_answers(tmp_path):
    path = write_prompts(tmp_path / "p.parquet", n=20)
    dm = PromptDataModule(records_path=str(path), loader=LoaderSettings(batch_size=5), val_fraction=0.25, seed=1)
    dm.setup("fit")
    train, val = dm.dataset("train"), dm.dataset("val")
    assert len(train) == 15 and len(val) == 5
    rows = [r.meta["row"] for loader in (dm.train_dataloader(), dm.val_dataloader()) for b in loader for r in b]
    assert sorted(rows) == list(range(20))
    record = val[0]
    row = record.meta["row"]
    assert record.prompt == f"<image>Which shade is image {row}?" and record.answer == str(row)
    assert record.images[0].mode == "RGB" and record.images[0].size == (6, 5)
    assert np.asarray(record.images[0])[0, 0].tolist() == [10 * row] * 3
    numeric = write_prompts(tmp_path / "n.parquet", n=4, images=False, answers=[3.0, 2.5, None, 7])
    dm = PromptDataModule(records_path=str(numeric), val_records_path=str(numeric), loader=LoaderSettings(batch_size=2),
                          max_train_prompts=3)
    assert [r.answer for r in dm.dataset("val")] == ["3", "2.5", None, "7"]
    assert len(dm.dataset("train")) == 3 and dm.dataset("val")[0].images == []


def test_parquet_rows_with_several_images(tmp_path):
    path = tmp_path / "multi.parquet"
    pq.write_table(pa.table({"prompt": ["<image> vs <image>?", "no image"], "answer": ["a", "b"],
                             "image": [[png(0), png(255, mode="RGBA")], []]}), path)
    dm = PromptDataModule(records_path=str(path), val_records_path=str(path), loader=LoaderSettings(batch_size=1))
    first, second = dm.dataset("val")[0], dm.dataset("val")[1]
    assert [im.mode for im in first.images] == ["RGB", "RGB"] and second.images == []


def test_parquet_errors_name_the_column_or_row(tmp_path):
    no_answer = tmp_path / "a.parquet"
    pq.write_table(pa.table({"prompt": ["q"], "label": [1]}), no_answer)
    with pytest.raises(ValueError, match="records_path: column 'answer' not found in a.parquet; available columns"):
        PromptDataModule(records_path=str(no_answer)).setup("fit")
    wrong_image = write_prompts(tmp_path / "w.parquet", n=3, images=False, image=["x", "y", "z"])
    with pytest.raises(ValueError, match="column 'image' of w.parquet should hold image bytes"):
        PromptDataModule(records_path=str(wrong_image), loader=LoaderSettings(batch_size=1)).setup("fit")
    empty = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": ["q", "  "], "answer": ["1", "2"]}), empty)
    with pytest.raises(ValueError, match="records_path: prompt is empty at row 1 of e.parquet"):
        PromptDataModule(records_path=str(empty), loader=LoaderSettings(batch_size=1)).setup("fit")
    mismatch = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["no placeholder"], "answer": ["1"], "image": [png(3)]}), mismatch)
    dm = PromptDataModule(records_path=str(mismatch), val_records_path=str(mismatch), loader=LoaderSettings(batch_size=1))
    with pytest.raises(ValueError, match="row 0 of m.parquet: PromptRecord.prompt: found 0 '<image>'"):
        dm.dataset("val")[0]
    with pytest.raises(FileNotFoundError, match="records_path: no Parquet file"):
        PromptDataModule(records_path=str(tmp_path / "missing.parquet")).setup("fit")


def test_argument_errors():
    with pytest.raises(ValueError, match="loader.batch_size: 9 is larger than the training set \\(8 prompts\\)"):
        PromptDataModule(task="arithmetic", task_kwargs={"num_examples": 8},
                         loader=LoaderSettings(batch_size=9)).setup("fit")
    with pytest.raises(ValueError, match="task: expected one of"):
        PromptDataModule(task="chess")
    with pytest.raises(ValueError, match="max_val_prompts: expected an int >= 1, received 0"):
        PromptDataModule(max_val_prompts=0)
    with pytest.raises(ValueError, match="val_records_path: expected it only together with records_path"):
        PromptDataModule(val_records_path="v.parquet")
    with pytest.raises(ValueError, match="task_kwargs: digit_vqa_records accepts"):
        PromptDataModule(task="digit_vqa", task_kwargs={"num_examples": 3}).setup("fit")


def test_workers_and_arithmetic_default_reward():
    dm = PromptDataModule(task="arithmetic", task_kwargs={"num_examples": 8},
                          loader=LoaderSettings(batch_size=4, num_workers=1))
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and all(isinstance(r, PromptRecord) for b in batches for r in b)
    assert isinstance(dm.default_reward(), WeightedSumReward)
