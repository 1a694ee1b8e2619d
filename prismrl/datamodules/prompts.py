"""Prompt batches for GRPO: a built-in task (``prismrl.rewards.tasks``) or a user Parquet file.

A batch is a plain ``list[PromptRecord]`` (prompt, images, reference answer): the stage module renders it
with its adapter, samples completions and scores them. Training order comes from ``ResumableDataLoader``
(a seeded permutation per epoch, sharded by rank, exact mid-epoch resume); validation is sequential.

A Parquet file (``records_path``) needs a string column ``prompt``, an ``answer`` column (strings or
numbers; null = no reference) and optionally an ``image`` column of encoded image bytes (or a list of
them per row, one "<image>" in the prompt per image). Rows are read one row group at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from prismrl.choices import check_positive_int
from prismrl.data.images import decode_image, to_rgb
from prismrl.data.loaders import (
    LoaderSettings,
    ResumableDataLoader,
    ResumableSampler,
    resolve_rank_world,
)
from prismrl.data.records import PromptRecord
from prismrl.datamodules.parquet import ParquetRowGroupDataset, split_rows
from prismrl.datamodules.parquet_checks import open_parquet
from prismrl.rewards.functions import ExactMatchReward, RewardFunction
from prismrl.rewards.tasks import get_task

PROMPT_COLUMN, ANSWER_COLUMN, IMAGE_COLUMN = "prompt", "answer", "image"
ROW_GROUP_WINDOW = 4  # training mixes prompts inside windows of this many row groups (read once per epoch)


def collate_prompt_records(records: Sequence[PromptRecord]) -> list[PromptRecord]:
    """Keep the batch as a list of records (images stay PIL, answers stay strings)."""
    return list(records)


class RecordList(Dataset):
    """An in-memory list of ``PromptRecord``."""

    def __init__(self, records: list[PromptRecord]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]

    def block_sizes(self) -> list[int] | None:
        return None


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_answer(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) or pa.types.is_floating(t)


def check_prompt_parquet(path: Path, field: str) -> tuple[int, bool]:
    """Validate a prompt file's columns and prompts; returns (row count, has an image column)."""
    if not path.is_file():
        raise FileNotFoundError(f"{field}: no Parquet file at '{path}'")
    schema = open_parquet(path, "records_path").schema_arrow
    for column, kind, ok in (
        (PROMPT_COLUMN, "strings", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
        (ANSWER_COLUMN, "strings or numbers", _is_answer),
    ):
        if column not in schema.names:
            raise ValueError(f"{field}: column '{column}' not found in {path.name}; available columns: {schema.names}")
        if not ok(schema.field(column).type):
            got = schema.field(column).type
            raise ValueError(f"{field}: column '{column}' of {path.name} should hold {kind}, got type {got}")
    has_images = IMAGE_COLUMN in schema.names
    if has_images:
        t = schema.field(IMAGE_COLUMN).type
        if not (_is_binary(t) or (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_binary(t.value_type)):
            raise ValueError(f"{field}: column '{IMAGE_COLUMN}' of {path.name} should hold image bytes or lists of "
                             f"image bytes, got type {t}")
    prompts = pq.read_table(path, columns=[PROMPT_COLUMN]).column(PROMPT_COLUMN).to_pylist()
    for row, prompt in enumerate(prompts):
        if prompt is None or not prompt.strip():
            raise ValueError(f"{field}: prompt is empty at row {row} of {path.name}")
    return len(prompts), has_images


class ParquetPromptDataset(Dataset):
    """``PromptRecord`` per row of a ``ParquetRowGroupDataset`` with prompt / answer (/ image) columns."""

    def __init__(self, rows: ParquetRowGroupDataset) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def block_sizes(self) -> list[int]:
        return self.rows.block_sizes()

    def __getitem__(self, index: int) -> PromptRecord:
        values, row, name = self.rows[index], self.rows.row_number(index), self.rows.path.name
        where = f"row {row} of {name}"
        data = values.get(IMAGE_COLUMN)
        encoded = [] if data is None else [data] if isinstance(data, bytes) else list(data)
        images = [to_rgb(decode_image(d, f"{where}, column '{IMAGE_COLUMN}'")) for d in encoded]
        answer = values[ANSWER_COLUMN]
        if isinstance(answer, float) and answer.is_integer():
            answer = int(answer)
        try:
            return PromptRecord(values[PROMPT_COLUMN], images, None if answer is None else str(answer), {"row": row})
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


class PromptDataModule(LightningDataModule):
    """Batches of ``list[PromptRecord]`` from a built-in task or a Parquet file.

    Args:
        task: a name in ``prismrl.rewards.tasks.TASKS`` ("digit_vqa", "arithmetic"); not used when
            ``records_path`` is set.
        task_kwargs: keyword arguments of the task's builder (e.g. ``image_size``, ``num_examples``).
        records_path: a Parquet file with prompt, answer (and optional image) columns, instead of a task.
        val_records_path: the validation Parquet file (None = hold out ``val_fraction`` of ``records_path``).
        val_fraction: share of ``records_path``'s rows held out for validation without ``val_records_path``
            (drawn with ``seed``).
        loader: prompts per training / validation batch (``loader.val_batch_size`` defaults to
            ``loader.batch_size``), workers, pinned memory.
        seed: the training order (a fresh permutation per epoch).
        max_train_prompts: keep only the first k training prompts (None = all).
        max_val_prompts: keep only the first k validation prompts (None = all).
    """

    def __init__(
        self,
        task: str = "digit_vqa",
        task_kwargs: dict[str, Any] | None = None,
        loader: LoaderSettings = LoaderSettings(batch_size=4),
        seed: int = 0,
        max_train_prompts: int | None = None,
        max_val_prompts: int | None = None,
        records_path: str | None = None,
        val_records_path: str | None = None,
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name, value in (("max_train_prompts", max_train_prompts), ("max_val_prompts", max_val_prompts)):
            if value is not None:
                check_positive_int(name, value)
        if records_path is None:
            get_task(task)
            if val_records_path is not None:
                raise ValueError(
                    f"val_records_path: expected it only together with records_path, got {val_records_path!r}"
                )
        elif val_records_path is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"val_fraction: expected a value in (0, 1) when val_records_path is None, got {val_fraction}"
            )
        self.task, self.task_kwargs = task, dict(task_kwargs or {})
        self.loader, self.seed = loader, seed
        self.limits = {"train": max_train_prompts, "val": max_val_prompts}
        self.records_path = Path(records_path) if records_path is not None else None
        self.val_records_path = Path(val_records_path) if val_records_path is not None else None
        self.val_fraction = val_fraction
        self.datasets: dict[str, RecordList | ParquetPromptDataset] = {}

    def default_reward(self) -> RewardFunction:
        """The task's recommended reward; ``ExactMatchReward`` for a Parquet file."""
        return ExactMatchReward() if self.records_path is not None else get_task(self.task).reward()

    def _build(self, split: str) -> RecordList | ParquetPromptDataset:
        limit = self.limits[split]
        if self.records_path is None:
            records = get_task(self.task).records(split, **self.task_kwargs)
            return RecordList(records[:limit] if limit is not None else records)
        val_file = self.val_records_path is not None and split == "val"
        path = self.val_records_path if val_file else self.records_path
        num_rows, has_images = check_prompt_parquet(path, "val_records_path" if val_file else "records_path")
        if self.val_records_path is not None:
            rows = np.arange(num_rows)
        else:
            rows = split_rows(num_rows, self.val_fraction, self.seed)[0 if split == "train" else 1]
        rows = rows[:limit] if limit is not None else rows
        columns = [PROMPT_COLUMN, ANSWER_COLUMN] + ([IMAGE_COLUMN] if has_images else [])
        reader = ParquetRowGroupDataset(path, columns, rows, cache_row_groups=ROW_GROUP_WINDOW + 1)
        return ParquetPromptDataset(reader)

    def dataset(self, split: str) -> RecordList | ParquetPromptDataset:
        """The "train" or "val" dataset (built once)."""
        if split not in self.datasets:
            self.datasets[split] = self._build(split)
            if len(self.datasets[split]) == 0:
                raise ValueError(f"{split} split: expected at least one prompt, got none")
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            train = self.dataset("train")
            if self.loader.batch_size > len(train):
                raise ValueError(
                    f"loader.batch_size: {self.loader.batch_size} is larger than the training set ({len(train)} prompts)"
                )
        self.dataset("val")

    def train_dataloader(self) -> ResumableDataLoader:
        self.setup("fit")
        dataset = self.dataset("train")
        rank, world = resolve_rank_world(self._trainer_or_none())
        loader = ResumableDataLoader(
            dataset, self.loader.batch_size, shuffle=True, seed=self.seed, drop_last=True, num_replicas=world,
            rank=rank, block_sizes=dataset.block_sizes(), blocks_per_window=ROW_GROUP_WINDOW,
            collate_fn=collate_prompt_records, **self.loader.worker_kwargs(),
        )
        if len(loader) == 0:
            raise ValueError(f"loader.batch_size: {self.loader.batch_size} is larger than this rank's share of the "
                             f"training set "
                             f"({loader.sampler.num_samples} of {len(dataset)} prompts over {world} ranks)")
        return loader

    def val_dataloader(self) -> DataLoader:
        dataset = self.dataset("val")
        rank, world = resolve_rank_world(self._trainer_or_none())
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, self.loader.eval_batch_size, sampler=sampler, collate_fn=collate_prompt_records,
                          **self.loader.worker_kwargs())

    def _trainer_or_none(self) -> Any | None:
        return self.trainer if getattr(self, "trainer", None) is not None else None
