"""The tri-modal QA set (``prismrl.data.trimodal_qa``) as a DataModule, read by ``ParquetQADataModule`` with its
``audio_column``: batches are ``ImageQABatch``es with ``audio`` / ``audio_lengths`` (0 = no clip)."""

from __future__ import annotations

from prismrl.data.images import IMAGENET_MEAN, IMAGENET_STD
from prismrl.data.loaders import LoaderSettings
from prismrl.data.trimodal_digits import DEFAULT_VAL_VOICES
from prismrl.data.trimodal_qa import TRIMODAL_QUESTION_TYPES, TriModalQAConfig, ensure_trimodal_qa
from prismrl.datamodules.delegating import DelegatingDataModule
from prismrl.datamodules.digit_qa import ParquetQADataModule


class TriModalQADataModule(DelegatingDataModule):
    """Digit images + spoken number words + questions about them (digit shown, number spoken, do they match).

    ``prepare_data`` builds the cache once; ``setup`` delegates to a ``ParquetQADataModule`` over its files.
    ``question_types`` is known right after ``__init__`` (the CLI links it to the model's ``question_types``).

    Args:
        root: cache folder of the built set (None = ``$PRISMRL_CACHE``).
        question_types: the question types to ask (None = all: digit, spoken, match).
        drop_audio: read no audio at all (batches without audio tokens: the image-only baseline of a model).
        loader: batch sizes, DataLoader workers and pinned memory (``LoaderSettings``).
        image_size: side of the square images fed to the model, in pixels.
        image_mean: per-channel mean subtracted after scaling pixels to [0, 1] (ImageNet's by default).
        image_std: per-channel standard deviation divided by after the mean (ImageNet's by default).
        seed: the training order (a fresh shuffle per epoch).
        missing_audio_fraction: share of rows built without a clip (they only get "digit" questions).
        match_probability: share of clips that say the image's digit (the rest say another digit).
        val_voices: speakers whose clips only appear in validation (None = the built-in held-out voices).
        val_fraction: share of the images held out for validation.
        data_seed: the split, clips and questions drawn when the set is built.
    """

    def __init__(
        self,
        root: str | None = None,
        question_types: list[str] | None = None,
        drop_audio: bool = False,
        loader: LoaderSettings = LoaderSettings(batch_size=32),
        image_size: int = 32,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        seed: int = 0,
        missing_audio_fraction: float = 0.1,
        match_probability: float = 0.5,
        val_voices: list[str] | None = None,
        val_fraction: float = 0.2,
        data_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root, self.drop_audio = root, drop_audio
        self.question_types = list(question_types or TRIMODAL_QUESTION_TYPES)
        self.config = TriModalQAConfig(tuple(self.question_types), missing_audio_fraction, match_probability,
                                       tuple(val_voices or DEFAULT_VAL_VOICES), val_fraction, data_seed)
        self.inner_args = dict(loader=loader, image_size=image_size, image_mean=tuple(image_mean),
                               image_std=tuple(image_std), seed=seed)
        self.inner: ParquetQADataModule | None = None

    def prepare_data(self) -> None:
        ensure_trimodal_qa(self.root, self.config)

    def _build_inner(self) -> ParquetQADataModule:
        files = ensure_trimodal_qa(self.root, self.config)
        return ParquetQADataModule(str(files.train_parquet), str(files.val_parquet), question_type_column="question_type",
                                   label_column="label", audio_column=None if self.drop_audio else "audio",
                                   **self.inner_args)


__all__ = ["TriModalQADataModule"]
