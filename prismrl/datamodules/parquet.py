"""Image-caption(-label) data from Parquet files, read one row group at a time.

Columns: an image column of encoded bytes (``image_column``) or of file paths relative to the Parquet
file's folder (``image_path_column``), a caption column (nulls mark samples without text when
``optional_captions``), an optional integer label column (null or -1 = no class) and an optional column of
WAV bytes (``audio_column``; null = no audio for that sample), and logged feedback for RL: a reward
column (``reward_column``, numbers) with the logged action ids (``action_column``) -> ``batch.rewards`` /
``batch.actions`` [B]. The file is never loaded whole: the dataset
indexes row groups from the footer metadata and keeps a few decoded row groups in a small LRU cache.
Training shuffles row-group order and mixes samples inside windows of ``row_group_window`` row groups, so
each row group is read about once per epoch per worker. ``setup`` checks columns, captions and labels by
streaming only those columns, before training.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from prismrl.choices import check_positive_int
from prismrl.data.audio import decode_wav
from prismrl.data.collate import ImageTextSample, collate_image_text
from prismrl.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    decode_image,
)
from prismrl.data.loaders import (
    LoaderSettings,
    ResumableDataLoader,
    ResumableSampler,
    resolve_rank_world,
)
from prismrl.datamodules.parquet_checks import (
    check_images,
    check_parquet,
    class_names_from_column,
    open_parquet,
)


class ParquetRowGroupDataset(Dataset):
    """Rows ``rows`` (sorted file row numbers; default all) of a Parquet file as dicts of ``columns``.

    ``row_group_reads`` counts row-group reads in this process (cache misses).
    """

    def __init__(
        self, path: str | Path, columns: Sequence[str], rows: np.ndarray | None = None, cache_row_groups: int = 2
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        metadata = open_parquet(self.path).metadata
        sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # [G + 1]
        total = int(self.group_starts[-1])
        self.rows = np.arange(total, dtype=np.int64) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
        if len(self.rows) and (self.rows[0] < 0 or self.rows[-1] >= total):
            raise ValueError(f"rows: expected row numbers in [0, {total}) for {self.path.name}")
        self.cache_row_groups = max(1, cache_row_groups)
        self.row_group_reads = 0
        self._file: pq.ParquetFile | None = None
        self._cache: OrderedDict[int, dict[str, list]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_cache"] = None, OrderedDict()  # each worker opens its own handle
        return state

    def block_sizes(self) -> list[int]:
        """Number of selected rows in each row group that has any (positions are contiguous per group)."""
        groups = np.searchsorted(self.group_starts, self.rows, side="right") - 1
        counts = np.bincount(groups, minlength=len(self.group_starts) - 1)
        return [int(c) for c in counts if c > 0]

    def _row_group(self, group: int) -> dict[str, list]:
        if group in self._cache:
            self._cache.move_to_end(group)
            return self._cache[group]
        if self._file is None:
            self._file = pq.ParquetFile(self.path)
        table = self._file.read_row_group(group, columns=self.columns)
        self.row_group_reads += 1
        self._cache[group] = {name: table.column(name).to_pylist() for name in self.columns}
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return self._cache[group]

    def row_number(self, index: int) -> int:
        return int(self.rows[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.row_number(index)
        group = int(np.searchsorted(self.group_starts, row, side="right") - 1)
        values = self._row_group(group)
        offset = row - int(self.group_starts[group])
        return {name: values[name][offset] for name in self.columns}


class ParquetImageTextDataset(Dataset):
    """``ImageTextSample`` records decoded from a ``ParquetRowGroupDataset``."""

    def __init__(self, rows: ParquetRowGroupDataset, image_column: str | None, image_path_column: str | None,
                 caption_column: str, label_column: str | None, transform: ImageTransform,
                 audio_column: str | None = None, reward_column: str | None = None,
                 action_column: str | None = None) -> None:
        self.rows, self.transform = rows, transform
        self.image_column, self.image_path_column = image_column, image_path_column
        self.caption_column, self.label_column, self.audio_column = caption_column, label_column, audio_column
        self.reward_column, self.action_column = reward_column, action_column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ImageTextSample:
        record, row, name = self.rows[index], self.rows.row_number(index), self.rows.path.name
        if self.image_column is not None:
            where = f"row {row} of column '{self.image_column}' in {name}"
            data = record[self.image_column]
        else:
            where = f"row {row} of column '{self.image_path_column}' in {name}"
            file = self.rows.path.parent / str(record[self.image_path_column])
            if not file.is_file():
                raise FileNotFoundError(f"{where}: no image file at {file}")
            data = file.read_bytes()
        if data is None:
            raise ValueError(f"{where}: image is null")
        label = record[self.label_column] if self.label_column is not None else None
        caption, audio = record[self.caption_column], None  # null captions passed check_parquet: optional
        if self.audio_column is not None:
            clip, where = record[self.audio_column], f"row {row} of column '{self.audio_column}' in {name}"
            audio = torch.empty(0) if clip is None else decode_wav(clip, where)  # [N] at 16 kHz; [0] = no clip
        return ImageTextSample(
            pixel_values=self.transform(decode_image(data, where), where),  # [3, H, W]
            caption="" if caption is None else str(caption),
            label=-1 if label is None else int(label),
            sample_id=f"{name}:{row}",
            audio=audio,
            has_caption=caption is not None,
            reward=None if self.reward_column is None else float(record[self.reward_column]),
            action=None if self.action_column is None else int(record[self.action_column]),
        )


def split_rows(num_rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows), sorted: ``round(N * val_fraction)`` (at least 1) rows drawn with ``seed``."""
    permutation = np.random.default_rng(seed).permutation(num_rows)
    n_val = max(1, int(round(num_rows * val_fraction)))
    return np.sort(permutation[n_val:]), np.sort(permutation[:n_val])


class ParquetDataModule(LightningDataModule):
    """Image-text batches (``ImageTextBatch``) from Parquet files.

    Training uses ``ResumableDataLoader`` (exact mid-epoch resume; rank-aware via the trainer, so it
    works with or without ``use_distributed_sampler``); validation is sequential and sharded by rank like
    ``DistributedSampler`` (padded by wrapping around).

    Args:
        train_path: the training Parquet file.
        val_path: the validation Parquet file (None = hold out ``val_fraction`` of the training rows).
        val_fraction: share of the training rows held out for validation when there is no ``val_path``
            (drawn with ``seed``).
        image_column: column of encoded image bytes (PNG / JPEG / WebP); None when images come from
            ``image_path_column``.
        image_path_column: column of image file paths (relative to the Parquet file's folder), instead of bytes.
        caption_column: column of caption strings.
        label_column: int class label column (None = no labels; zero-shot metrics need it).
        class_names: one name per label id, used by zero-shot prompts (None = the file's label_name column, if any).
        audio_column: optional column of WAV bytes (null = no audio for that sample) for a third modality.
        optional_captions: captions may be null; ``batch.caption_mask`` marks the present ones.
        reward_column: optional float column of logged rewards (``batch.rewards``, actor-critic RL mode).
        action_column: optional int column of logged actions (``batch.actions``).
        loader: batch sizes, DataLoader workers and pinned memory (``LoaderSettings``).
        image_size: side of the square images fed to the model, in pixels.
        image_mean: per-channel mean subtracted after scaling pixels to [0, 1] (ImageNet's by default).
        image_std: per-channel standard deviation divided by after the mean (ImageNet's by default).
        seed: the training order (a fresh shuffle per epoch) and the validation hold-out.
        drop_last: drop the last incomplete training batch.
        row_group_window: row groups mixed by the training shuffle (larger = better mixing, more memory).
        image_check_rows: the images of each file's first rows decoded during ``setup`` (None = every row,
            0 = none), so an undecodable image fails before training, naming its row and column.
    """

    def __init__(
        self,
        train_path: str,
        val_path: str | None = None,
        val_fraction: float = 0.1,
        image_column: str | None = "image",
        image_path_column: str | None = None,
        caption_column: str = "caption",
        label_column: str | None = "label",
        class_names: list[str] | None = None,
        audio_column: str | None = None,
        optional_captions: bool = False,
        reward_column: str | None = None,
        action_column: str | None = None,
        loader: LoaderSettings = LoaderSettings(batch_size=32),
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        seed: int = 0,
        drop_last: bool = True,
        row_group_window: int = 4,
        image_check_rows: int | None = 1024,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if image_check_rows is not None:
            check_positive_int("image_check_rows", image_check_rows, minimum=0)
        self.image_check_rows = image_check_rows
        if (image_column is None) == (image_path_column is None):
            raise ValueError(
                f"image_column / image_path_column: expected exactly one to be set, got "
                f"image_column={image_column!r}, image_path_column={image_path_column!r}"
            )
        if val_path is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a value in (0, 1) when val_path is None, got {val_fraction}")
        check_positive_int("row_group_window", row_group_window)
        self.train_path, self.val_path = Path(train_path), Path(val_path) if val_path is not None else None
        self.val_fraction, self.seed, self.drop_last = val_fraction, seed, drop_last
        self.image_column, self.image_path_column = image_column, image_path_column
        self.caption_column, self.label_column = caption_column, label_column
        self.audio_column, self.optional_captions = audio_column, optional_captions
        self.reward_column, self.action_column = reward_column, action_column
        self.loader, self.row_group_window = loader, row_group_window
        self._class_names = list(class_names) if class_names is not None else None
        self._class_names_read = class_names is not None or label_column is None
        self.transform = ImageTransform(image_size, image_mean, image_std)
        self.train_dataset: ParquetImageTextDataset | None = None
        self.val_dataset: ParquetImageTextDataset | None = None

    @property
    def class_names(self) -> list[str] | None:
        """``class_names`` if given, else read from a ``label_name`` column of the train file, else None."""
        if not self._class_names_read:
            self._class_names = class_names_from_column(self.train_path, self.label_column)
            self._class_names_read = True
        return self._class_names

    def _columns(self) -> dict[str, str | None]:
        return {"image_column": self.image_column, "image_path_column": self.image_path_column,
                "caption_column": self.caption_column, "label_column": self.label_column,
                "audio_column": self.audio_column, "reward_column": self.reward_column,
                "action_column": self.action_column}

    def _dataset(self, path: Path, rows: np.ndarray | None) -> ParquetImageTextDataset:
        columns = [c for c in self._columns().values() if c is not None]
        reader = ParquetRowGroupDataset(path, columns, rows, cache_row_groups=self.row_group_window + 1)
        return ParquetImageTextDataset(reader, self.image_column, self.image_path_column,
                                       self.caption_column, self.label_column, self.transform, self.audio_column,
                                       self.reward_column, self.action_column)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        names = self.class_names
        num_classes = len(names) if names is not None else None
        num_rows = check_parquet(self.train_path, "train_path", self._columns(), num_classes, self.optional_captions)
        for path in (self.train_path, self.val_path) if self.val_path is not None else (self.train_path,):
            check_images(path, self.image_column, self.image_path_column, self.image_check_rows)
        if self.val_path is not None:
            check_parquet(self.val_path, "val_path", self._columns(), num_classes, self.optional_captions)
            self.train_dataset = self._dataset(self.train_path, None)
            self.val_dataset = self._dataset(self.val_path, None)
        else:
            train_rows, val_rows = split_rows(num_rows, self.val_fraction, self.seed)
            self.train_dataset = self._dataset(self.train_path, train_rows)
            self.val_dataset = self._dataset(self.train_path, val_rows)
        if self.drop_last and self.loader.batch_size > len(self.train_dataset):
            raise ValueError(
                f"loader.batch_size: {self.loader.batch_size} is larger than the training set "
                f"({len(self.train_dataset)} rows) and drop_last=True would yield no batch"
            )

    def train_dataloader(self) -> ResumableDataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        rank, world = resolve_rank_world(self.trainer)
        loader = ResumableDataLoader(
            self.train_dataset, self.loader.batch_size, shuffle=True, seed=self.seed, drop_last=self.drop_last,
            num_replicas=world, rank=rank, block_sizes=self.train_dataset.rows.block_sizes(),
            blocks_per_window=self.row_group_window, collate_fn=collate_image_text, **self.loader.worker_kwargs(),
        )
        if len(loader) == 0:
            raise ValueError(
                f"loader.batch_size: {self.loader.batch_size} is larger than this rank's share of the training set "
                f"({loader.sampler.num_samples} of {len(self.train_dataset)} rows over {world} ranks)"
            )
        return loader

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        rank, world = resolve_rank_world(self.trainer)
        sampler = ResumableSampler(self.val_dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(self.val_dataset, self.loader.eval_batch_size, sampler=sampler, collate_fn=collate_image_text,
                          **self.loader.worker_kwargs())
