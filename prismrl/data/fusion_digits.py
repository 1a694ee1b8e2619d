"""A real image + text classification set where neither modality alone suffices: "fusion digits".

Each of scikit-learn's 1,797 handwritten digits (label 0..9) becomes
  * an image: the 8x8 ink values (0..16) plus Gaussian noise (``noise_std``) with one
    ``occlusion_size x occlusion_size`` block wiped out (ink 0), clipped to 0..16 and rendered like
    ``prismrl.data.digits.render_digit`` (dark ink on light, 32x32 grey PNG);
  * a hint text carrying PARTIAL evidence, a coarse set of digits that contains the label:
    with probability ``set_hint_probability`` "one of a, b or c" (the label plus two other digits drawn
    uniformly, listed in increasing order), else a property of the label: odd / even, or greater than
    five / five or less.
Text alone pins the label down to 1 of 3-6 candidates (Bayes accuracy about 0.28); the degraded image alone
is about 0.72 with a linear (LDA) model on the pixels; both together about 0.85 (seen with the defaults).
Every random draw comes from generators seeded with ``seed`` and the row, so a build is deterministic.

Each row also carries logged bandit feedback for off-line RL: ``logged_action``, a digit drawn uniformly at
random (a uniform logging policy, its own per-row generator), and ``logged_reward`` = 1 if it equals the label
else 0.

Written once into a content-keyed cache directory as Parquet (train.parquet, val.parquet; columns
image, caption, label, label_name, hint_set, logged_action, logged_reward) with a stratified split; published
with one atomic rename.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from prismrl.cache import cache_dir, content_key, publish_cache_dir
from prismrl.data.digits import (
    DIGIT_NAMES,
    IMAGE_PX,
    ROW_GROUP_SIZE,
    render_digit,
    stratified_split,
    write_digit_parquet,
)

FUSION_DIGITS_VERSION = 2  # 2: logged_action / logged_reward columns
HINT_PREFIXES = ["a noisy handwritten digit", "a blurred scan of a digit", "a partly hidden handwritten number"]
PROPERTY_HINTS: dict[str, tuple[str, str, frozenset[int]]] = {
    # family: (text if the label has the property, text if not, the property's digits)
    "parity": ("an odd digit", "an even digit", frozenset({1, 3, 5, 7, 9})),
    "size": ("a digit greater than five", "a digit of five or less", frozenset({6, 7, 8, 9})),
}
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class FusionDigitsConfig:
    """How images are degraded and hints drawn (all part of the cache key)."""

    noise_std: float = 4.0  # Gaussian noise in ink units (ink range 0..16)
    occlusion_size: int = 3  # side of the wiped-out block, in 8x8 pixels (0 = none)
    set_hint_probability: float = 0.6  # "one of a, b or c" hints; the rest are property hints
    set_size: int = 3
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.noise_std < 0:
            raise ValueError(f"noise_std: expected a value >= 0, received {self.noise_std}")
        if not 0 <= self.occlusion_size <= 8:
            raise ValueError(f"occlusion_size: expected an int in [0, 8], received {self.occlusion_size}")
        if not 0.0 <= self.set_hint_probability <= 1.0:
            raise ValueError(f"set_hint_probability: expected a probability in [0, 1], received {self.set_hint_probability}")
        if not 1 <= self.set_size <= 10:
            raise ValueError(f"set_size: expected an int in [1, 10], received {self.set_size}")


@dataclass(frozen=True)
class FusionDigitsDataset:
    """Paths of one built copy."""

    root: Path
    train_parquet: Path
    val_parquet: Path
    class_names: list[str]
    num_train: int
    num_val: int


def degrade_digit(image: np.ndarray, rng: np.random.Generator, noise_std: float, occlusion_size: int) -> np.ndarray:
    """8x8 ink (0..16) -> noisy, partly occluded 8x8 ink clipped to 0..16."""
    ink = image.astype(np.float64) + rng.normal(0.0, noise_std, size=image.shape)  # [8, 8]
    if occlusion_size:
        row, col = rng.integers(0, 8 - occlusion_size + 1, size=2)
        ink[row : row + occlusion_size, col : col + occlusion_size] = 0.0
    return np.clip(ink, 0.0, 16.0)


def _join(digits: list[int]) -> str:
    words = [str(d) for d in digits]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def make_hint(label: int, rng: np.random.Generator, config: FusionDigitsConfig) -> tuple[str, list[int]]:
    """(hint text, sorted candidate digits); the candidates always contain ``label``."""
    prefix = HINT_PREFIXES[int(rng.integers(len(HINT_PREFIXES)))]
    if rng.random() < config.set_hint_probability:
        others = rng.choice([d for d in range(10) if d != label], size=config.set_size - 1, replace=False)
        candidates = sorted([label, *(int(d) for d in others)])
        return f"{prefix}: one of {_join(candidates)}", candidates
    family = sorted(PROPERTY_HINTS)[int(rng.integers(len(PROPERTY_HINTS)))]
    yes, no, members = PROPERTY_HINTS[family]
    has = label in members
    candidates = sorted(members) if has else sorted(set(range(10)) - members)
    return f"{prefix}: {yes if has else no}", candidates


def _records(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, config: FusionDigitsConfig) -> list[dict]:
    records = []
    for row in rows:
        rng = np.random.default_rng([config.seed, int(row)])  # per-row stream: independent of split order
        label = int(labels[row])
        text, candidates = make_hint(label, rng, config)
        ink = degrade_digit(images[row], rng, config.noise_std, config.occlusion_size)
        action = int(np.random.default_rng([config.seed, int(row), 1]).integers(0, len(DIGIT_NAMES)))
        records.append({"png": render_digit(ink), "caption": text, "label": label, "hint_set": candidates,
                        "logged_action": action, "logged_reward": float(action == label)})
    return records


def _write_parquet(records: list[dict], path: Path) -> None:
    hint_sets = pa.array([r["hint_set"] for r in records], type=pa.list_(pa.int64()))
    write_digit_parquet(records, path, {
        "hint_set": hint_sets,
        "logged_action": pa.array([r["logged_action"] for r in records], type=pa.int64()),
        "logged_reward": pa.array([r["logged_reward"] for r in records], type=pa.float32()),
    })


def _build(tmp: Path, config: FusionDigitsConfig) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)  # [N, 8, 8], [N]
    train_rows, val_rows = stratified_split(labels, config.val_fraction, config.seed)
    train, val = _records(images, labels, train_rows, config), _records(images, labels, val_rows, config)
    _write_parquet(train, tmp / "train.parquet")
    _write_parquet(val, tmp / "val.parquet")
    manifest = {"version": FUSION_DIGITS_VERSION, "num_train": len(train), "num_val": len(val)}
    (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2))  # written last: marks a complete build


def _dataset_at(folder: Path) -> FusionDigitsDataset:
    manifest = json.loads((folder / _MANIFEST).read_text())
    return FusionDigitsDataset(folder, folder / "train.parquet", folder / "val.parquet", list(DIGIT_NAMES),
                               int(manifest["num_train"]), int(manifest["num_val"]))


def fusion_digits_cache_path(root: str | Path | None = None, config: FusionDigitsConfig | None = None) -> Path:
    """``<root or cache_root()>/fusion_digits/<key>``, key = hash(version, render size, layout, config)."""
    config = config or FusionDigitsConfig()
    parts = dict(version=FUSION_DIGITS_VERSION, image_px=IMAGE_PX, row_group_size=ROW_GROUP_SIZE, **config.__dict__)
    if root is None:
        return cache_dir("fusion_digits", **parts)
    return Path(root) / "fusion_digits" / content_key(**parts)


def ensure_fusion_digits(root: str | Path | None = None, config: FusionDigitsConfig | None = None) -> FusionDigitsDataset:
    """Return the cached fusion digits set, building it (about a second) if it is not there yet."""
    config = config or FusionDigitsConfig()
    final = fusion_digits_cache_path(root, config)
    return _dataset_at(publish_cache_dir(final, lambda tmp: _build(tmp, config), _MANIFEST))


__all__ = [
    "FUSION_DIGITS_VERSION",
    "FusionDigitsConfig",
    "FusionDigitsDataset",
    "degrade_digit",
    "ensure_fusion_digits",
    "fusion_digits_cache_path",
    "make_hint",
]
