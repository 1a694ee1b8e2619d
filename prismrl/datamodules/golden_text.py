"""Golden labelled texts and a resumable stream of generation requests for the generator (GenAlign) stage.

``train_set`` / ``val_set`` / ``test_set`` are the stratified golden splits (``prismrl.data.golden_text``):
train feeds the in-context examples, val the reward's golden loss, test the final report. A training batch
is one PPO iteration's requests: ``{"request_id": LongTensor [B], "label": LongTensor [B]}``, where request i
of the epoch asks for class ``i % C`` (a batch size that is a multiple of C keeps every batch balanced) and
``request_id = epoch * requests_per_epoch + i`` seeds that request's in-context examples, so prompts are a
pure function of (epoch, position) and a resumed run asks for exactly what the uninterrupted run asked for.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from prismrl.choices import check_positive_int
from prismrl.data.golden_text import (
    GoldenTextSet,
    load_golden_file,
    load_golden_texts,
    split_golden,
)
from prismrl.data.loaders import LoaderSettings, ResumableDataLoader, resolve_rank_world


class GenerationRequests(Dataset):
    """Item i = ``{"index": i, "label": i % num_classes}``."""

    def __init__(self, size: int, num_classes: int) -> None:
        self.size, self.num_classes = size, num_classes

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"index": int(index), "label": int(index) % self.num_classes}


class RequestCollator:
    """Stack requests; ``request_id = epoch * size + index`` with the epoch read from the loader's sampler."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sampler: Any | None = None

    def __call__(self, items: list[dict[str, int]]) -> dict[str, torch.Tensor]:
        epoch = int(getattr(self.sampler, "epoch", 0)) if self.sampler is not None else 0
        index = torch.tensor([item["index"] for item in items], dtype=torch.long)
        return {"request_id": epoch * self.size + index, "label": torch.tensor([item["label"] for item in items])}


class GoldenTextDataModule(LightningDataModule):
    """Golden splits + generation requests (module docstring).

    Args:
        golden: a built-in golden set name (``prismrl.data.golden_text.GOLDEN_SETS``), unused with ``golden_file``.
        golden_file: your own golden set: a CSV (header row) or Parquet file with a text and a label column, or
            any other suffix as a fastText-format file (``__label__<name> <text>`` per line).
        text_column: the text column of a CSV / Parquet ``golden_file``.
        label_column: the label column of a CSV / Parquet ``golden_file`` (names or integers).
        val_fraction: share of each class held out as the golden validation split (the reward's golden set).
        test_fraction: share of each class held out as the test split.
        split_seed: the stratified split.
        loader: ``loader.batch_size`` = generation requests per PPO iteration (the training batch size);
            workers and pinned memory as for every DataModule.
        iterations_per_epoch: PPO iterations per epoch.
    """

    def __init__(
        self,
        golden: str = "movie_sentiment",
        golden_file: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        val_fraction: float = 0.25,
        test_fraction: float = 0.25,
        split_seed: int = 0,
        loader: LoaderSettings = LoaderSettings(batch_size=8),
        iterations_per_epoch: int = 8,
    ) -> None:
        super().__init__()
        check_positive_int("iterations_per_epoch", iterations_per_epoch)
        self.save_hyperparameters()
        self.loader = loader
        self.train_set: GoldenTextSet | None = None
        self.val_set: GoldenTextSet | None = None
        self.test_set: GoldenTextSet | None = None

    def load_golden(self) -> GoldenTextSet:
        hp = self.hparams
        if hp.golden_file is None:
            return load_golden_texts(hp.golden)
        return load_golden_file(hp.golden_file, hp.text_column, hp.label_column, field="golden_file")

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        golden = self.load_golden()
        if golden.num_classes < 2:
            raise ValueError(f"golden: expected at least 2 classes, received {golden.label_names}")
        hp = self.hparams
        self.train_set, self.val_set, self.test_set = split_golden(golden, hp.val_fraction, hp.test_fraction, hp.split_seed)
        for name, split in (("train", self.train_set), ("val", self.val_set)):
            empty = [golden.label_names[c] for c, n in enumerate(split.class_counts()) if n == 0]
            if empty:
                raise ValueError(f"golden: the {name} split has no example of class(es) {empty}; "
                                 f"use a larger golden set or other val_fraction / test_fraction")

    def train_dataloader(self) -> ResumableDataLoader:
        self.setup("fit")
        hp = self.hparams
        size = self.loader.batch_size * hp.iterations_per_epoch
        rank, world = resolve_rank_world(self.trainer)
        collate = RequestCollator(size)
        loader = ResumableDataLoader(
            GenerationRequests(size, self.train_set.num_classes), batch_size=self.loader.batch_size, shuffle=False,
            drop_last=True, num_replicas=world, rank=rank, collate_fn=collate, **self.loader.worker_kwargs(),
        )
        collate.sampler = loader.sampler
        return loader

    def predict_dataloader(self) -> DataLoader:
        """``prismrl predict``: one epoch of requests (classes in turn, request ids 0..N-1), in order."""
        self.setup("predict")
        size = self.loader.batch_size * self.hparams.iterations_per_epoch
        return DataLoader(GenerationRequests(size, self.train_set.num_classes), batch_size=self.loader.batch_size,
                          shuffle=False, collate_fn=RequestCollator(size))
