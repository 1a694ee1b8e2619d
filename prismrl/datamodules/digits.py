"""The built-in digits dataset as a DataModule, through the same Parquet / WebDataset code users run."""

from __future__ import annotations

from prismrl.data.digits import DIGIT_NAMES, ZERO_SHOT_TEMPLATES, ensure_digits_dataset
from prismrl.data.images import IMAGENET_MEAN, IMAGENET_STD
from prismrl.data.loaders import LoaderSettings
from prismrl.datamodules.delegating import DelegatingDataModule
from prismrl.datamodules.parquet import ParquetDataModule
from prismrl.datamodules.webdataset import WebDataModule

FORMATS = ("parquet", "webdataset")


class DigitsDataModule(DelegatingDataModule):
    """scikit-learn digits as captioned 32x32 grey images (see ``prismrl.data.digits``).

    ``prepare_data`` builds the cache once; ``setup`` delegates to a ``ParquetDataModule`` or a ``WebDataModule``.
    ``class_names`` and ``zero_shot_templates`` are available right after ``__init__`` (the CLI links them to the
    model's arguments of the same names).

    Args:
        format: "parquet" (image/caption/label columns; exact mid-epoch resume) or "webdataset" (png/txt/json:label
            members in tar shards).
        root: cache folder of the built files (None = ``$PRISMRL_CACHE``).
        loader: batch sizes, DataLoader workers and pinned memory (``LoaderSettings``).
        image_size: side of the square images fed to the model, in pixels.
        image_mean: per-channel mean subtracted after scaling pixels to [0, 1] (ImageNet's by default).
        image_std: per-channel standard deviation divided by after the mean (ImageNet's by default).
        seed: the training order (a fresh shuffle per epoch) and the validation hold-out.
        samples_per_epoch: WebDataset only: training samples per epoch (None = the train split size).
    """

    def __init__(
        self,
        format: str = "parquet",
        root: str | None = None,
        loader: LoaderSettings = LoaderSettings(batch_size=64),
        image_size: int = 64,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        seed: int = 0,
        samples_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if format not in FORMATS:
            raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
        self.format, self.root = format, root
        self.loader, self.image_size = loader, image_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.seed, self.samples_per_epoch = seed, samples_per_epoch
        self.inner: ParquetDataModule | WebDataModule | None = None

    @property
    def class_names(self) -> list[str]:
        return list(DIGIT_NAMES)

    @property
    def zero_shot_templates(self) -> list[str]:
        return list(ZERO_SHOT_TEMPLATES)

    def prepare_data(self) -> None:
        ensure_digits_dataset(self.root)

    def _build_inner(self) -> ParquetDataModule | WebDataModule:
        files = ensure_digits_dataset(self.root)
        common = dict(class_names=self.class_names, loader=self.loader, image_size=self.image_size,
                      image_mean=self.image_mean, image_std=self.image_std, seed=self.seed)
        if self.format == "parquet":
            return ParquetDataModule(train_path=str(files.train_parquet), val_path=str(files.val_parquet),
                                     image_column="image", caption_column="caption", label_column="label", **common)
        return WebDataModule(train_shards=files.train_shards, val_shards=files.val_shards, image_keys="png",
                             caption_key="txt", label_key="json:label",
                             samples_per_epoch=self.samples_per_epoch or files.num_train, **common)
