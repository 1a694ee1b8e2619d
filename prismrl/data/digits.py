"""The built-in real dataset: scikit-learn's 1,797 handwritten digits as captioned images.

Each 8x8 image (ink 0..16) is mapped to grey ``255 - 255 * v / 16`` (dark digit on a light background),
upscaled bilinearly to 32x32 and stored as a mode "L" PNG, so loaders exercise the grey -> RGB path.
Captions combine a template with the number word or numeral, chosen by a seeded RNG. The split is
stratified per class (``round(n_c * val_fraction)`` of each class go to val) and rows are shuffled
before writing so every Parquet row group / tar shard holds mixed classes.

The files are written once into a content-keyed cache directory, both as Parquet (train.parquet,
val.parquet; columns image, caption, label, label_name) and as WebDataset shards (keys png, txt, json).
A build writes into a private temporary directory and publishes it with one atomic ``os.rename``; the
published directory is complete by construction, and concurrent builders just keep the winner's copy.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from prismrl.cache import cache_dir, content_key, publish_cache_dir

DIGITS_VERSION = 1
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ZERO_SHOT_TEMPLATES = [
    "a handwritten {}",
    "the digit {}",
    "a scanned image of the number {}",
    "{}, written by hand",
    "a photo of the handwritten digit {}",
]
CAPTION_TEMPLATES = ZERO_SHOT_TEMPLATES + [
    "a small grayscale picture of a {}",
    "the number {} drawn with a pen",
    "a low-resolution {}",
]
IMAGE_PX = 32
ROW_GROUP_SIZE = 128
TRAIN_SHARDS = 8
VAL_SHARDS = 2
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DigitsDataset:
    """Paths of one built copy of the digits dataset."""

    root: Path
    train_parquet: Path
    val_parquet: Path
    train_shards: str  # brace pattern, e.g. ".../train-{000000..000007}.tar"
    val_shards: str
    class_names: list[str]
    num_train: int
    num_val: int


def render_digit(image: np.ndarray, size: int = IMAGE_PX) -> bytes:
    """8x8 ink values 0..16 -> PNG bytes of a ``size x size`` mode "L" image, dark ink on light."""
    grey = np.clip(np.rint(255.0 - image * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # [8, 8]
    picture = Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def make_caption(label: int, rng: np.random.Generator) -> str:
    """One of the caption templates filled with the number word (p=0.7) or the numeral."""
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    value = DIGIT_NAMES[label] if rng.random() < 0.7 else str(label)
    return template.format(value)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows), both shuffled: per class, ``round(n_c * val_fraction)`` rows go to val."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a value in (0, 1), received {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(rows) * val_fraction))
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


def _records(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "key": f"digits-{int(row):06d}",
            "png": render_digit(images[row]),
            "caption": make_caption(int(labels[row]), rng),
            "label": int(labels[row]),
        }
        for row in rows
    ]


def write_digit_parquet(records: list[dict], path: Path, extra_columns: dict[str, pa.Array] | None = None) -> None:
    """Columns image (PNG bytes), caption, label, label_name (+ ``extra_columns``), in row groups of ROW_GROUP_SIZE."""
    table = pa.table(
        {
            "image": pa.array([r["png"] for r in records], type=pa.binary()),
            "caption": pa.array([r["caption"] for r in records], type=pa.string()),
            "label": pa.array([r["label"] for r in records], type=pa.int64()),
            "label_name": pa.array([DIGIT_NAMES[r["label"]] for r in records], type=pa.string()),
            **(extra_columns or {}),
        }
    )
    pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE)


def _write_shards(records: list[dict], folder: Path, prefix: str, num_shards: int) -> str:
    import webdataset as wds

    for shard, part in enumerate(np.array_split(np.arange(len(records)), num_shards)):
        with wds.TarWriter(str(folder / f"{prefix}-{shard:06d}.tar")) as sink:
            for i in part:
                r = records[int(i)]
                meta = {"label": r["label"], "label_name": DIGIT_NAMES[r["label"]]}
                sink.write({"__key__": r["key"], "png": r["png"], "txt": r["caption"], "json": json.dumps(meta)})
    return str(folder / f"{prefix}-{{000000..{num_shards - 1:06d}}}.tar")


def _dataset_at(folder: Path) -> DigitsDataset:
    manifest = json.loads((folder / _MANIFEST).read_text())
    return DigitsDataset(
        root=folder,
        train_parquet=folder / "train.parquet",
        val_parquet=folder / "val.parquet",
        train_shards=str(folder / manifest["train_shards"]),
        val_shards=str(folder / manifest["val_shards"]),
        class_names=list(DIGIT_NAMES),
        num_train=int(manifest["num_train"]),
        num_val=int(manifest["num_val"]),
    )


def _build(tmp: Path, val_fraction: float, seed: int) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)  # [N, 8, 8], [N]
    train_rows, val_rows = stratified_split(labels, val_fraction, seed)
    train = _records(images, labels, train_rows, seed + 1)
    val = _records(images, labels, val_rows, seed + 2)
    write_digit_parquet(train, tmp / "train.parquet")
    write_digit_parquet(val, tmp / "val.parquet")
    train_pattern = _write_shards(train, tmp, "train", TRAIN_SHARDS)
    val_pattern = _write_shards(val, tmp, "val", VAL_SHARDS)
    manifest = {
        "version": DIGITS_VERSION,
        "num_train": len(train),
        "num_val": len(val),
        "train_shards": Path(train_pattern).name,
        "val_shards": Path(val_pattern).name,
    }
    (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2))  # written last: marks a complete build


def digits_cache_path(root: str | Path | None = None, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """``<root or cache_root()>/digits/<key>``, key = hash(version, render size, split, seed, layout)."""
    parts = dict(
        version=DIGITS_VERSION,
        image_px=IMAGE_PX,
        val_fraction=val_fraction,
        seed=seed,
        row_group_size=ROW_GROUP_SIZE,
        shards=(TRAIN_SHARDS, VAL_SHARDS),
    )
    if root is None:
        return cache_dir("digits", **parts)
    return Path(root) / "digits" / content_key(**parts)


def ensure_digits_dataset(root: str | Path | None = None, val_fraction: float = 0.2, seed: int = 0) -> DigitsDataset:
    """Return the cached digits dataset, building it (about a second) if it is not there yet."""
    final = digits_cache_path(root, val_fraction, seed)
    return _dataset_at(publish_cache_dir(final, lambda tmp: _build(tmp, val_fraction, seed), _MANIFEST))


__all__ = [
    "CAPTION_TEMPLATES",
    "DIGITS_VERSION",
    "DIGIT_NAMES",
    "ZERO_SHOT_TEMPLATES",
    "DigitsDataset",
    "digits_cache_path",
    "ensure_digits_dataset",
    "make_caption",
    "render_digit",
    "stratified_split",
]
