"""The tri-modal digits set (``prismrl.data.trimodal_digits``) as a DataModule, through the Parquet /
WebDataset DataModules users run (their ``audio_column`` / ``audio_key`` and ``optional_captions``)."""

from __future__ import annotations

from prismrl.data.images import IMAGENET_MEAN, IMAGENET_STD
from prismrl.data.loaders import LoaderSettings
from prismrl.data.trimodal_digits import (
    DEFAULT_VAL_VOICES,
    TriModalDigitsConfig,
    ensure_trimodal_digits,
)
from prismrl.datamodules.digits import DigitsDataModule
from prismrl.datamodules.parquet import ParquetDataModule
from prismrl.datamodules.webdataset import WebDataModule


class TriModalDigitsDataModule(DigitsDataModule):
    """Digit images + captions + spoken number words; batches are ``ImageTextBatch``es with ``audio``,
    ``audio_lengths`` (0 = no clip) and ``caption_mask`` (False = no caption).

    As ``DigitsDataModule`` (same loader arguments, class names and zero-shot templates), over the tri-modal
    cache built by ``prepare_data``.

    Args:
        format: "parquet" (exact mid-epoch resume) or "webdataset".
        root: cache folder of the built files (None = ``$PRISMRL_CACHE``).
        loader: batch sizes, DataLoader workers and pinned memory (``LoaderSettings``).
        image_size: side of the square images fed to the model, in pixels.
        image_mean: per-channel mean subtracted after scaling pixels to [0, 1] (ImageNet's by default).
        image_std: per-channel standard deviation divided by after the mean (ImageNet's by default).
        seed: the training order (a fresh shuffle per epoch).
        samples_per_epoch: WebDataset only: training samples per epoch (None = the train split size).
        missing_text_fraction: share of samples built without a caption.
        missing_audio_fraction: share of samples built without a spoken clip.
        val_voices: speakers whose clips only appear in validation (None = the built-in held-out voices).
        val_fraction: share of the images held out for validation.
        data_seed: the missing modalities and the split drawn when the set is built.
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
        missing_text_fraction: float = 0.1,
        missing_audio_fraction: float = 0.1,
        val_voices: list[str] | None = None,
        val_fraction: float = 0.2,
        data_seed: int = 0,
    ) -> None:
        super().__init__(format, root, loader, image_size, image_mean, image_std, seed, samples_per_epoch)
        self.config = TriModalDigitsConfig(missing_text_fraction, missing_audio_fraction,
                                           tuple(val_voices or DEFAULT_VAL_VOICES), val_fraction, data_seed)

    def prepare_data(self) -> None:
        ensure_trimodal_digits(self.root, self.config)

    def _build_inner(self) -> ParquetDataModule | WebDataModule:
        files = ensure_trimodal_digits(self.root, self.config)
        common = dict(class_names=self.class_names, optional_captions=True, loader=self.loader,
                      image_size=self.image_size, image_mean=self.image_mean, image_std=self.image_std, seed=self.seed)
        if self.format == "parquet":
            return ParquetDataModule(train_path=str(files.train_parquet), val_path=str(files.val_parquet),
                                     image_column="image", caption_column="caption", label_column="label",
                                     audio_column="audio", **common)
        return WebDataModule(train_shards=files.train_shards, val_shards=files.val_shards, image_keys="png",
                             caption_key="txt", label_key="json:label", audio_key="wav",
                             samples_per_epoch=self.samples_per_epoch or files.num_train, **common)
