"""Image question-answer DataModules: any Parquet QA files, and the built-in digit QA set on top of it."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from prismrl.choices import check_positive_int
from prismrl.data.digit_qa import QUESTION_TYPES, ensure_digit_qa
from prismrl.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageTransform
from prismrl.data.loaders import (
    LoaderSettings,
    ResumableDataLoader,
    ResumableSampler,
    resolve_rank_world,
)
from prismrl.data.qa import ParquetImageQADataset, collate_image_qa
from prismrl.datamodules.delegating import DelegatingDataModule
from prismrl.datamodules.parquet import ParquetRowGroupDataset
from prismrl.datamodules.parquet_checks import open_parquet


class ParquetQADataModule(LightningDataModule):
    """``ImageQABatch``es from train/val Parquet files with image (bytes), question and answer columns.

    Training uses ``ResumableDataLoader`` (row-group-local shuffling, exact mid-epoch resume, rank-aware);
    validation is sequential and sharded by rank.

    Args:
        train_path: the training Parquet file.
        val_path: the validation Parquet file.
        image_column: column of encoded image bytes (PNG / JPEG).
        question_column: column of question strings.
        answer_column: column of answer strings.
        question_type_column: optional column of question types, for per-type metrics (None = not read).
        label_column: optional int label column (None = not read).
        audio_column: optional column of WAV bytes (null = no clip) spoken with the question (None = not read);
            batches then carry ``audio`` / ``audio_lengths``.
        loader: batch sizes, DataLoader workers and pinned memory (``LoaderSettings``).
        image_size: side of the square images fed to the model, in pixels.
        image_mean: per-channel mean subtracted after scaling pixels to [0, 1] (ImageNet's by default).
        image_std: per-channel standard deviation divided by after the mean (ImageNet's by default).
        seed: the training order (a fresh shuffle per epoch).
        row_group_window: row groups mixed by the training shuffle (larger = better mixing, more memory).
    """

    def __init__(
        self,
        train_path: str,
        val_path: str,
        image_column: str = "image",
        question_column: str = "question",
        answer_column: str = "answer",
        question_type_column: str | None = None,
        label_column: str | None = None,
        audio_column: str | None = None,
        loader: LoaderSettings = LoaderSettings(batch_size=32),
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        seed: int = 0,
        row_group_window: int = 4,
    ) -> None:
        super().__init__()
        check_positive_int("row_group_window", row_group_window)
        self.paths = {"train_path": Path(train_path), "val_path": Path(val_path)}
        self.columns = {"image_column": image_column, "question_column": question_column, "answer_column": answer_column,
                        "question_type_column": question_type_column, "label_column": label_column,
                        "audio_column": audio_column}
        self.loader, self.seed, self.row_group_window = loader, seed, row_group_window
        self.transform = ImageTransform(image_size, image_mean, image_std)
        self.train_dataset: ParquetImageQADataset | None = None
        self.val_dataset: ParquetImageQADataset | None = None

    def _dataset(self, field: str) -> ParquetImageQADataset:
        path = self.paths[field]
        if not path.is_file():
            raise FileNotFoundError(f"{field}: no Parquet file at '{path}'")
        available = open_parquet(path).schema_arrow.names
        for arg, column in self.columns.items():
            if column is not None and column not in available:
                raise ValueError(f"{arg}: column '{column}' not found in {path.name}; available columns: {available}")
        reader = ParquetRowGroupDataset(path, [c for c in self.columns.values() if c is not None],
                                        cache_row_groups=self.row_group_window + 1)
        return ParquetImageQADataset(reader, self.transform, **self.columns)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is None:
            self.train_dataset, self.val_dataset = self._dataset("train_path"), self._dataset("val_path")
            if self.loader.batch_size > len(self.train_dataset):
                raise ValueError(f"loader.batch_size: {self.loader.batch_size} is larger than the training set "
                                 f"({len(self.train_dataset)} rows); no full batch would be drawn")

    def train_dataloader(self) -> ResumableDataLoader:
        self.setup("fit")
        rank, world = resolve_rank_world(self.trainer)
        return ResumableDataLoader(
            self.train_dataset, self.loader.batch_size, shuffle=True, seed=self.seed, drop_last=True,
            num_replicas=world, rank=rank, block_sizes=self.train_dataset.rows.block_sizes(),
            blocks_per_window=self.row_group_window, collate_fn=collate_image_qa, **self.loader.worker_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        rank, world = resolve_rank_world(self.trainer)
        sampler = ResumableSampler(self.val_dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(self.val_dataset, self.loader.eval_batch_size, sampler=sampler, collate_fn=collate_image_qa,
                          **self.loader.worker_kwargs())


class DigitQADataModule(DelegatingDataModule):
    """The digit QA set (``prismrl.data.digit_qa``): 32x32 digit images with digit / parity / size questions.

    ``prepare_data`` builds the cache once; ``setup`` delegates to a ``ParquetQADataModule`` over its files
    (question_type and label columns included, for per-type metrics). ``question_types`` is known right after
    ``__init__`` (the CLI links it to the model's ``question_types``).

    Args:
        root: cache folder of the built set (None = ``$PRISMRL_CACHE``).
        question_types: the question types to ask (None = all built-in ones: digit, parity, size).
        loader: batch sizes, DataLoader workers and pinned memory (``LoaderSettings``).
        image_size: side of the square images fed to the model, in pixels.
        image_mean: per-channel mean subtracted after scaling pixels to [0, 1] (ImageNet's by default).
        image_std: per-channel standard deviation divided by after the mean (ImageNet's by default).
        seed: the training order (a fresh shuffle per epoch).
        val_fraction: share of the images held out for validation.
        data_seed: the split and the questions drawn when the set is built.
    """

    def __init__(
        self,
        root: str | None = None,
        question_types: list[str] | None = None,
        loader: LoaderSettings = LoaderSettings(batch_size=32),
        image_size: int = 32,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        seed: int = 0,
        val_fraction: float = 0.2,
        data_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = root
        self.question_types = list(question_types or QUESTION_TYPES)
        self.build_args = dict(question_types=tuple(self.question_types), val_fraction=val_fraction, seed=data_seed)
        self.inner_args = dict(loader=loader, image_size=image_size, image_mean=tuple(image_mean),
                               image_std=tuple(image_std), seed=seed)
        self.inner: ParquetQADataModule | None = None

    def prepare_data(self) -> None:
        ensure_digit_qa(self.root, **self.build_args)

    def _build_inner(self) -> ParquetQADataModule:
        files = ensure_digit_qa(self.root, **self.build_args)
        return ParquetQADataModule(str(files.train_parquet), str(files.val_parquet), question_type_column="question_type",
                                   label_column="label", **self.inner_args)
