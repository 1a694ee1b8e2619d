"""Image-caption(-label) data from WebDataset tar shards.

Shards are split statically: rank r of W takes shards ``r, r + W, ...`` of the expanded list, and
DataLoader worker k of K takes every K-th of those, so each shard is read by exactly one (rank, worker)
per pass. Within that share, the shard order and a sample shuffle buffer are reseeded from
(seed, rank, epoch, pass). Training streams repeat their share forever and ``EpochLoader`` cuts an epoch
at ``samples_per_epoch // (world_size * batch_size)`` batches on every rank, so all ranks run the same
number of steps even when their shards hold different numbers of samples. The epoch is the trainer's
``current_epoch`` (or the loader's own iteration count without a trainer), written into the pipeline
before the worker processes start. Validation is one sequential pass, split by shard across ranks when
there are at least as many shards as ranks (else every rank reads all of it).

Mid-epoch resume is exact: ``EpochLoader`` checkpoints ``{epoch, batches_done}``; every (rank, worker) stream of an
epoch is a deterministic function of (seed, rank, worker, epoch), and batch b of a rank comes from worker b mod K,
so on resume worker k drops the ``batch_size`` samples of each of its batches among the first ``batches_done``
(``SkipSamples``, before decoding; worker roles rotate so that the batch due next comes first) and the epoch
continues where it stopped: no sample is repeated or skipped.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable
from typing import Any

import braceexpand
import torch
import webdataset as wds
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from prismrl.choices import check_positive_int
from prismrl.data.audio import decode_wav
from prismrl.data.collate import ImageTextSample, collate_image_text
from prismrl.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    decode_image,
)
from prismrl.data.loaders import LoaderSettings, resolve_rank_world
from prismrl.datamodules.shard_stream import (
    EpochLoader,
    EpochShuffle,
    RankSplitter,
    SkipSamples,
    WorkerShare,
)

_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://")


def expand_shards(spec: str | list[str], field: str) -> list[str]:
    """Brace-expand a pattern (or each of a list); every local path must exist."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{field}: expected a brace pattern string or a list of them, received {spec!r}")
    urls = [url for pattern in patterns for url in braceexpand.braceexpand(pattern)]
    local = [u for u in urls if not u.startswith(_REMOTE_PREFIXES)]
    missing = [u for u in local if not os.path.isfile(u.removeprefix("file:"))]
    if local and len(missing) == len(local):
        raise FileNotFoundError(f"{field}: pattern {spec!r} matched no files (first expected: '{missing[0]}')")
    if missing:
        raise FileNotFoundError(
            f"{field}: {len(missing)} of {len(urls)} shards of {spec!r} are missing, e.g. '{missing[0]}'"
        )
    for url in local:
        check_tar_shard(url.removeprefix("file:"), field)
    return urls


def check_tar_shard(path: str, field: str) -> None:
    """ValueError naming ``field`` and the shard when ``path`` is not a whole tar archive.

    Reads the member headers only (seeks over the data). A cut inside a header or a member raises in tarfile; a cut
    between members leaves no end-of-archive marker: a whole archive has at least two zero blocks (1,024 bytes)
    after its last member's data, padded to 512-byte blocks.
    """
    try:
        with tarfile.open(path) as archive:
            members = archive.getmembers()
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"{field}: shard '{path}' is not a readable tar archive ({err}); rewrite the shard") from None
    if members:
        data_end = -(-(members[-1].offset_data + members[-1].size) // 512) * 512
        if os.path.getsize(path) < data_end + 1024:
            raise ValueError(f"{field}: shard '{path}' is truncated: it ends {os.path.getsize(path)} bytes in, without the "
                             f"end-of-archive marker after its last member '{members[-1].name}'; rewrite the shard")


def _split_key(key: str) -> tuple[str, str | None]:
    """``"json:label"`` -> ("json", "label"); ``"txt"`` -> ("txt", None)."""
    ext, _, inner = key.partition(":")
    return ext.lower(), (inner or None)


class SampleDecoder:
    """Raw WebDataset sample (``__key__`` + bytes per extension) -> ``ImageTextSample``.

    With ``audio_key`` (e.g. "wav") a sample without that member has no audio; with ``optional_captions`` a
    sample without its caption member has no text.
    """

    def __init__(self, image_keys: str, caption_key: str, label_key: str | None,
                 num_classes: int | None, transform: ImageTransform, audio_key: str | None = None,
                 optional_captions: bool = False) -> None:
        self.image_keys = [k.strip().lower() for k in image_keys.split(";") if k.strip()]
        self.caption_key, self.label_key = _split_key(caption_key), (_split_key(label_key) if label_key else None)
        self.num_classes, self.transform = num_classes, transform
        self.audio_key, self.optional_captions = (audio_key.lower() if audio_key else None), optional_captions

    def _field(self, sample: dict[str, Any], spec: tuple[str, str | None], arg: str) -> Any:
        ext, inner = spec
        name = f"{ext}:{inner}" if inner else ext
        if ext not in sample:
            present = sorted(k for k in sample if not k.startswith("__"))
            raise ValueError(f"sample '{sample.get('__key__')}' in {sample.get('__url__')}: {arg} '{name}' "
                             f"is missing; keys present: {present}")
        raw = sample[ext]
        if inner is None:
            return raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        record = json.loads(raw) if isinstance(raw, (bytes, bytearray, str)) else raw
        if not isinstance(record, dict) or inner not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"sample '{sample.get('__key__')}': {arg} '{name}' not found; '{ext}' holds {keys}")
        return record[inner]

    def __call__(self, sample: dict[str, Any]) -> ImageTextSample:
        key = str(sample.get("__key__"))
        ext = next((k for k in self.image_keys if k in sample), None)
        if ext is None:
            present = sorted(k for k in sample if not k.startswith("__"))
            raise ValueError(f"sample '{key}' in {sample.get('__url__')}: no image under image_keys "
                             f"{self.image_keys}; keys present: {present}")
        where = f"sample '{key}' key '{ext}'"
        has_caption = not self.optional_captions or self.caption_key[0] in sample
        caption = str(self._field(sample, self.caption_key, "caption_key")) if has_caption else ""
        if has_caption and not caption.strip():
            raise ValueError(f"sample '{key}': caption is empty")
        audio = None
        if self.audio_key is not None:
            clip = sample.get(self.audio_key)
            audio = torch.empty(0) if clip is None else decode_wav(clip, f"sample '{key}' key '{self.audio_key}'")
        label = -1
        if self.label_key is not None:
            value = self._field(sample, self.label_key, "label_key")
            label = -1 if value is None else int(value)
            if label < -1 or (self.num_classes is not None and label >= self.num_classes):
                raise ValueError(f"sample '{key}': label {label} is outside [0, {self.num_classes}) (-1 = no class)")
        pixels = self.transform(decode_image(sample[ext], where), where)  # [3, H, W]
        return ImageTextSample(pixels, caption, label, key, audio=audio, has_caption=has_caption)


class WebDataModule(LightningDataModule):
    """``ImageTextBatch`` batches from WebDataset shards (see the module docstring for the splitting).

    Args:
        train_shards: training shards: a brace pattern (``data/train-{000..009}.tar``) or a list of them.
        val_shards: validation shards, in the same forms (None = no validation).
        image_keys: the image member's extensions, tried in order (``"jpg;png;jpeg;webp"``).
        caption_key: the caption: a member extension (``"txt"``) or a field of a JSON member (``"json:caption"``).
        label_key: the int label, in the same forms (``"json:label"``; None = no labels).
        class_names: one name per label id, used by zero-shot prompts (None = none).
        audio_key: an optional WAV member (``"wav"``) for a third modality.
        optional_captions: samples may lack the caption member; ``batch.caption_mask`` marks the present ones.
        loader: batch sizes, DataLoader workers and pinned memory (``LoaderSettings``).
        shuffle_buffer: samples in the training shuffle buffer.
        samples_per_epoch: required for training: each rank yields
            ``samples_per_epoch // (world_size * loader.batch_size)`` batches per epoch.
        image_size: side of the square images fed to the model, in pixels.
        image_mean: per-channel mean subtracted after scaling pixels to [0, 1] (ImageNet's by default).
        image_std: per-channel standard deviation divided by after the mean (ImageNet's by default).
        seed: the shard order and the shuffle buffer.
    """

    def __init__(
        self,
        train_shards: str | list[str],
        val_shards: str | list[str] | None = None,
        image_keys: str = "jpg;png;jpeg;webp",
        caption_key: str = "txt",
        label_key: str | None = "json:label",
        class_names: list[str] | None = None,
        audio_key: str | None = None,
        optional_captions: bool = False,
        loader: LoaderSettings = LoaderSettings(batch_size=32),
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        image_size: int = 224,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_positive_int("shuffle_buffer", shuffle_buffer, minimum=0)
        if samples_per_epoch is not None:
            check_positive_int("samples_per_epoch", samples_per_epoch)
        self.train_spec, self.val_spec = train_shards, val_shards
        self.loader, self.shuffle_buffer = loader, shuffle_buffer
        self.samples_per_epoch, self.seed = samples_per_epoch, seed
        self._class_names = list(class_names) if class_names is not None else None
        self.transform = ImageTransform(image_size, image_mean, image_std)
        self.decoder = SampleDecoder(image_keys, caption_key, label_key,
                                     len(class_names) if class_names is not None else None, self.transform,
                                     audio_key, optional_captions)
        self.train_urls: list[str] | None = None
        self.val_urls: list[str] | None = None

    @property
    def class_names(self) -> list[str] | None:
        return self._class_names

    def setup(self, stage: str | None = None) -> None:
        """Expand and check the shard patterns (FileNotFoundError names the field and pattern)."""
        if self.train_urls is None:
            self.train_urls = expand_shards(self.train_spec, "train_shards")
        if self.val_spec is not None and self.val_urls is None:
            self.val_urls = expand_shards(self.val_spec, "val_shards")

    def batches_per_epoch(self, world_size: int) -> int:
        """``samples_per_epoch // (world_size * loader.batch_size)`` batches on every rank."""
        if self.samples_per_epoch is None:
            raise ValueError("samples_per_epoch: required for training on WebDataset shards (a fixed epoch length "
                             "keeps every rank at the same number of steps), got None")
        batches = self.samples_per_epoch // (world_size * self.loader.batch_size)
        if batches == 0:
            raise ValueError(f"loader.batch_size: {self.loader.batch_size} x world_size {world_size} exceeds "
                             f"samples_per_epoch "
                             f"{self.samples_per_epoch}, which would give 0 batches per epoch")
        return batches

    def train_pipeline(self, rank: int, world_size: int) -> wds.DataPipeline:
        """Endless stream of batches for one rank (split further by DataLoader worker)."""
        self.setup("fit")
        if len(self.train_urls) < world_size:
            raise ValueError(f"train_shards: {len(self.train_urls)} shards cannot feed {world_size} ranks; "
                             "write at least one shard per rank")
        stages: list[Any] = [
            wds.SimpleShardList(self.train_urls),
            RankSplitter(rank, world_size),
            WorkerShare(),
            EpochShuffle(len(self.train_urls), seed=self.seed),
            wds.tarfile_to_samples(),
        ]
        if self.shuffle_buffer > 1:
            stages.append(EpochShuffle(self.shuffle_buffer, seed=self.seed * 1_000_003 + rank + 1))
        stages += [SkipSamples(), wds.map(self.decoder),
                   wds.batched(self.loader.batch_size, collation_fn=collate_image_text, partial=False)]
        return wds.DataPipeline(*stages).repeat()

    def make_train_loader(self, rank: int, world_size: int, epoch_fn: Callable[[], int] | None = None) -> EpochLoader:
        return EpochLoader(self.train_pipeline(rank, world_size), self.batches_per_epoch(world_size), epoch_fn,
                           samples_per_batch=self.loader.batch_size, seed=self.seed, rank=rank,
                           **self.loader.worker_kwargs())

    def make_val_loader(self, rank: int, world_size: int) -> DataLoader:
        self.setup("validate")
        if self.val_urls is None:
            raise ValueError("val_shards: no validation shards were given")
        splitter = RankSplitter(rank, world_size) if len(self.val_urls) >= world_size else None
        dataset = wds.WebDataset(self.val_urls, shardshuffle=False, nodesplitter=splitter,
                                 workersplitter=wds.split_by_worker, empty_check=False)
        dataset = dataset.map(self.decoder).batched(self.loader.eval_batch_size, collation_fn=collate_image_text,
                                                    partial=True)
        return DataLoader(dataset, batch_size=None, **self.loader.worker_kwargs())

    def _current_epoch(self) -> int:
        return int(self.trainer.current_epoch)

    def train_dataloader(self) -> EpochLoader:
        epoch_fn = self._current_epoch if self.trainer is not None else None
        return self.make_train_loader(*resolve_rank_world(self.trainer), epoch_fn=epoch_fn)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_spec is None:
            return []
        return self.make_val_loader(*resolve_rank_world(self.trainer))
