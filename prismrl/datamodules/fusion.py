"""The fusion digits set (``prismrl.data.fusion_digits``) as a DataModule, through ``ParquetDataModule``."""

from __future__ import annotations

from prismrl.data.digits import DIGIT_NAMES
from prismrl.data.fusion_digits import FusionDigitsConfig, ensure_fusion_digits
from prismrl.data.images import IMAGENET_MEAN, IMAGENET_STD
from prismrl.data.loaders import LoaderSettings
from prismrl.datamodules.delegating import DelegatingDataModule
from prismrl.datamodules.parquet import ParquetDataModule


class FusionDigitsDataModule(DelegatingDataModule):
    """Degraded digit images paired with partial-evidence hint texts; labels 0..9.

    ``prepare_data`` builds the cache once (degradation and hints set by the ``FusionDigitsConfig``
    fields); ``setup`` delegates to a ``ParquetDataModule`` over its train/val files (columns image,
    caption, label), so batches are ``ImageTextBatch``es and mid-epoch resume is exact.

    Args:
        root: cache folder of the built files (None = ``$PRISMRL_CACHE``).
        loader: batch sizes, DataLoader workers and pinned memory (``LoaderSettings``).
        image_size: side of the square images fed to the model, in pixels.
        image_mean: per-channel mean subtracted after scaling pixels to [0, 1] (ImageNet's by default).
        image_std: per-channel standard deviation divided by after the mean (ImageNet's by default).
        seed: the training order (a fresh shuffle per epoch).
        noise_std: Gaussian noise added to the 8x8 images, in ink units (ink range 0..16).
        occlusion_size: side of the wiped-out block, in 8x8 pixels (0 = none).
        set_hint_probability: share of "one of a, b or c" hints; the rest are property hints (even, large, ...).
        set_size: digits named by a set hint (1..10).
        val_fraction: share of the images held out for validation.
        data_seed: the degradation, the hints and the split drawn when the set is built.
        logged_feedback: also read the logged_reward / logged_action columns (a uniform logging policy's actions
            and their rewards) into ``batch.rewards`` / ``batch.actions``.
    """

    def __init__(
        self,
        root: str | None = None,
        loader: LoaderSettings = LoaderSettings(batch_size=64),
        image_size: int = 64,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        seed: int = 0,
        noise_std: float = 4.0,
        occlusion_size: int = 3,
        set_hint_probability: float = 0.6,
        set_size: int = 3,
        val_fraction: float = 0.2,
        data_seed: int = 0,
        logged_feedback: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = root
        self.config = FusionDigitsConfig(noise_std, occlusion_size, set_hint_probability, set_size, val_fraction, data_seed)
        self.inner_args = dict(loader=loader, image_size=image_size, image_mean=tuple(image_mean),
                               image_std=tuple(image_std), seed=seed)
        self.logged_columns = dict(reward_column="logged_reward", action_column="logged_action") if logged_feedback else {}
        self.inner: ParquetDataModule | None = None

    @property
    def class_names(self) -> list[str]:
        return list(DIGIT_NAMES)

    def prepare_data(self) -> None:
        ensure_fusion_digits(self.root, self.config)

    def _build_inner(self) -> ParquetDataModule:
        files = ensure_fusion_digits(self.root, self.config)
        return ParquetDataModule(
            train_path=str(files.train_parquet), val_path=str(files.val_parquet), image_column="image",
            caption_column="caption", label_column="label", class_names=self.class_names, **self.logged_columns,
            **self.inner_args,
        )
