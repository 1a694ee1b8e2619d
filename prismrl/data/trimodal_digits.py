"""Tri-modal digits: each handwritten digit image with a caption and a spoken clip of its number word.

Every row of scikit-learn's digits (label 0..9) becomes
  * the image, rendered like ``prismrl.data.digits`` (32x32 grey PNG),
  * a caption from ``make_caption`` (template + number word or numeral), null with probability
    ``missing_text_fraction``,
  * a shipped spoken-digit clip of the label's word (``prismrl.data.spoken_digits``) drawn uniformly from
    the split's voices, null with probability ``missing_audio_fraction``.
Validation rows only use the ``val_voices`` (held out from training, so audio retrieval is measured on
unseen voices); training rows use the rest. The two missing-draws are independent, so some rows have
image only. Every random draw comes from a generator seeded with (seed, row): a build is deterministic.

Written once into a content-keyed cache directory (the key includes a hash of the clip manifest) as
Parquet (train.parquet, val.parquet; columns image, caption, label, label_name, audio (WAV bytes), audio_file,
voice)
and WebDataset shards (keys png, txt, wav, json; a missing modality is a missing member), published with
one atomic rename.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from prismrl.cache import MANIFEST, cache_dir, content_key, publish_cache_dir
from prismrl.data.digit_builds import (
    check_val_voices,
    clip_columns,
    draw_clip,
    seeded_rows,
    split_digit_records,
    split_voices,
    write_manifest,
)
from prismrl.data.digits import (
    DIGIT_NAMES,
    IMAGE_PX,
    ROW_GROUP_SIZE,
    make_caption,
    render_digit,
    write_digit_parquet,
)
from prismrl.data.spoken_digits import clips_by_digit, spoken_digit_clips

TRIMODAL_DIGITS_VERSION = 1
TRAIN_SHARDS = 4
VAL_SHARDS = 2
DEFAULT_VAL_VOICES = ("en-gb-x-gbclan+m7", "en-us+f5")


@dataclass(frozen=True)
class TriModalDigitsConfig:
    """Missing-modality rates, held-out voices and the split (all part of the cache key)."""

    missing_text_fraction: float = 0.1
    missing_audio_fraction: float = 0.1
    val_voices: tuple[str, ...] = field(default=DEFAULT_VAL_VOICES)
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("missing_text_fraction", "missing_audio_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1), received {value!r}")
        object.__setattr__(self, "val_voices", check_val_voices(self.val_voices))


@dataclass(frozen=True)
class TriModalDigitsDataset:
    """Paths of one built copy."""

    root: Path
    train_parquet: Path
    val_parquet: Path
    train_shards: str  # brace pattern
    val_shards: str
    class_names: list[str]
    num_train: int
    num_val: int


def _records(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, voices: list[str],
             config: TriModalDigitsConfig) -> list[dict]:
    pools = clips_by_digit(voices)
    records = []
    for row, rng in seeded_rows(rows, config.seed):
        label = int(labels[row])
        caption = make_caption(label, rng)
        clip = draw_clip(pools, label, rng)
        no_text, no_audio = rng.random(2) < (config.missing_text_fraction, config.missing_audio_fraction)
        records.append({
            "key": f"trimodal-{row:06d}", "png": render_digit(images[row]), "label": label,
            "caption": None if no_text else caption, **clip_columns(clip, not no_audio),
        })
    return records


def _write_parquet(records: list[dict], path: Path) -> None:
    extra = {"audio": pa.array([r["audio"] for r in records], type=pa.binary())}
    extra.update({name: pa.array([r[name] for r in records], type=pa.string()) for name in ("audio_file", "voice")})
    write_digit_parquet(records, path, extra)


def write_member_shards(samples: list[dict[str, object]], folder: Path, prefix: str, num_shards: int) -> str:
    """Write dicts of WebDataset members (``__key__`` + extension -> bytes/str; None members are left out)
    into ``num_shards`` tar files of consecutive samples; returns the brace pattern."""
    import webdataset as wds

    for shard, part in enumerate(np.array_split(np.arange(len(samples)), num_shards)):
        with wds.TarWriter(str(folder / f"{prefix}-{shard:06d}.tar")) as sink:
            for i in part:
                sink.write({k: v for k, v in samples[int(i)].items() if v is not None})
    return str(folder / f"{prefix}-{{000000..{num_shards - 1:06d}}}.tar")


def _members(record: dict) -> dict[str, object]:
    meta = {"label": record["label"], "label_name": DIGIT_NAMES[record["label"]], "audio_file": record["audio_file"],
            "voice": record["voice"]}
    return {"__key__": record["key"], "png": record["png"], "txt": record["caption"], "wav": record["audio"],
            "json": json.dumps(meta)}


def _build(tmp: Path, config: TriModalDigitsConfig) -> None:
    voices = split_voices(config.val_voices)
    train, val = split_digit_records(config.val_fraction, config.seed, lambda images, labels, rows, split:
                                     _records(images, labels, rows, voices[split], config))
    _write_parquet(train, tmp / "train.parquet")
    _write_parquet(val, tmp / "val.parquet")
    train_pattern = write_member_shards([_members(r) for r in train], tmp, "train", TRAIN_SHARDS)
    val_pattern = write_member_shards([_members(r) for r in val], tmp, "val", VAL_SHARDS)
    write_manifest(tmp, {"version": TRIMODAL_DIGITS_VERSION, "num_train": len(train), "num_val": len(val),
                         "train_shards": Path(train_pattern).name, "val_shards": Path(val_pattern).name})


def _dataset_at(folder: Path) -> TriModalDigitsDataset:
    manifest = json.loads((folder / MANIFEST).read_text())
    return TriModalDigitsDataset(
        folder, folder / "train.parquet", folder / "val.parquet", str(folder / manifest["train_shards"]),
        str(folder / manifest["val_shards"]), list(DIGIT_NAMES), int(manifest["num_train"]), int(manifest["num_val"]),
    )


def trimodal_digits_cache_path(root: str | Path | None = None, config: TriModalDigitsConfig | None = None) -> Path:
    """``<root or cache_root()>/trimodal_digits/<key>``, key = hash(version, layout, config, clip manifest)."""
    config = config or TriModalDigitsConfig()
    clips = hashlib.sha256(repr(spoken_digit_clips()).encode()).hexdigest()[:16]
    parts = dict(version=TRIMODAL_DIGITS_VERSION, image_px=IMAGE_PX, row_group_size=ROW_GROUP_SIZE,
                 shards=(TRAIN_SHARDS, VAL_SHARDS), clips=clips, **asdict(config))
    if root is None:
        return cache_dir("trimodal_digits", **parts)
    return Path(root) / "trimodal_digits" / content_key(**parts)


def ensure_trimodal_digits(root: str | Path | None = None,
                           config: TriModalDigitsConfig | None = None) -> TriModalDigitsDataset:
    """Return the cached tri-modal digits set, building it (a few seconds) if it is not there yet."""
    config = config or TriModalDigitsConfig()
    final = trimodal_digits_cache_path(root, config)
    return _dataset_at(publish_cache_dir(final, lambda tmp: _build(tmp, config), MANIFEST))


__all__ = [
    "DEFAULT_VAL_VOICES",
    "TRIMODAL_DIGITS_VERSION",
    "TriModalDigitsConfig",
    "TriModalDigitsDataset",
    "ensure_trimodal_digits",
    "trimodal_digits_cache_path",
    "write_member_shards",
]
