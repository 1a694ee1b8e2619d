"""Tri-modal question answering over digits: an image, a spoken number word and a question about them.

Every row of scikit-learn's digits (label 0..9) becomes one row with
  * the image, rendered like ``prismrl.data.digits`` (32x32 grey PNG);
  * a shipped spoken-digit clip (``prismrl.data.spoken_digits``) saying the image's digit with probability
    ``match_probability`` (an audio-described image) or another digit drawn uniformly (a spoken question), from
    the split's voices; null with probability ``missing_audio_fraction``;
  * one question, its type drawn uniformly from the selected ``question_types`` the row can answer:
      "digit":   "What digit is shown?"                 -> the image's number word (image only)
      "spoken":  "Which number is spoken?"              -> the clip's number word (needs the audio)
      "match":   "Is the spoken number the one shown?"  -> "yes" | "no" (needs both)
    Rows without a clip only get the "digit" question.
Validation rows only use the ``val_voices`` (unseen in training). Every draw comes from a generator seeded with
(seed, row), so a build is deterministic.

Written once into a content-keyed cache directory as Parquet (train.parquet, val.parquet; columns image, audio
(WAV bytes or null), question, answer, question_type, label, spoken_label (-1 = no clip), audio_file, voice),
published with one atomic rename.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from prismrl.cache import MANIFEST, cache_dir, content_key, publish_cache_dir
from prismrl.data.digit_builds import (
    QADataset,
    check_val_voices,
    clip_columns,
    draw_clip,
    seeded_rows,
    split_digit_records,
    split_voices,
    write_manifest,
    write_record_parquet,
)
from prismrl.data.digits import DIGIT_NAMES, IMAGE_PX, ROW_GROUP_SIZE, render_digit
from prismrl.data.spoken_digits import clips_by_digit, spoken_digit_clips
from prismrl.data.trimodal_digits import DEFAULT_VAL_VOICES

TRIMODAL_QA_VERSION = 1
# question type -> (wordings, answer of (image label, spoken label), needs audio)
TRIMODAL_QUESTION_TYPES: dict[str, tuple[tuple[str, ...], Callable[[int, int], str], bool]] = {
    "digit": (("What digit is shown?", "Which number is written here?"), lambda shown, spoken: DIGIT_NAMES[shown],
              False),
    "spoken": (("Which number is spoken?", "What number do you hear?"), lambda shown, spoken: DIGIT_NAMES[spoken],
               True),
    "match": (("Is the spoken number the one shown?", "Does the voice say the digit in the image?"),
              lambda shown, spoken: "yes" if shown == spoken else "no", True),
}
COLUMNS = ("image", "audio", "question", "answer", "question_type", "label", "spoken_label", "audio_file", "voice")


@dataclass(frozen=True)
class TriModalQAConfig:
    """What is asked, how often audio is missing or matches the image, held-out voices and the split (all part of
    the cache key)."""

    question_types: tuple[str, ...] = tuple(TRIMODAL_QUESTION_TYPES)
    missing_audio_fraction: float = 0.1
    match_probability: float = 0.5
    val_voices: tuple[str, ...] = field(default=DEFAULT_VAL_VOICES)
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        types = tuple(self.question_types)
        if not types or len(set(types)) != len(types) or not set(types) <= set(TRIMODAL_QUESTION_TYPES):
            raise ValueError(f"question_types: expected distinct names from {list(TRIMODAL_QUESTION_TYPES)}, "
                             f"received {list(types)}")
        object.__setattr__(self, "question_types", types)
        if not 0.0 <= self.missing_audio_fraction < 1.0:
            raise ValueError(f"missing_audio_fraction: expected a probability in [0, 1), "
                             f"received {self.missing_audio_fraction!r}")
        if not 0.0 <= self.match_probability <= 1.0:
            raise ValueError(f"match_probability: expected a probability in [0, 1], received {self.match_probability!r}")
        object.__setattr__(self, "val_voices", check_val_voices(self.val_voices))


class TriModalQADataset(QADataset):
    """Paths of one built copy."""


def trimodal_qa_records(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, voices: list[str],
                        config: TriModalQAConfig) -> list[dict]:
    """One record per image row (see the module docstring), in ``rows`` order."""
    pools = clips_by_digit(voices)
    records = []
    for row, rng in seeded_rows(rows, config.seed):
        shown = int(labels[row])
        others = [d for d in range(10) if d != shown]
        spoken = shown if rng.random() < config.match_probability else others[int(rng.integers(len(others)))]
        clip = draw_clip(pools, spoken, rng)
        has_audio = bool(rng.random() >= config.missing_audio_fraction)
        allowed = [t for t in config.question_types if has_audio or not TRIMODAL_QUESTION_TYPES[t][2]] or ["digit"]
        question_type = allowed[int(rng.integers(len(allowed)))]
        wordings, answer, _ = TRIMODAL_QUESTION_TYPES[question_type]
        records.append({
            "image": render_digit(images[row]), **clip_columns(clip, has_audio),
            "question": wordings[int(rng.integers(len(wordings)))], "answer": answer(shown, spoken),
            "question_type": question_type, "label": shown, "spoken_label": spoken if has_audio else -1,
        })
    return records


def write_trimodal_qa_parquet(records: list[dict], path: Path) -> None:
    """The ``COLUMNS`` of ``records`` in row groups of ROW_GROUP_SIZE."""
    types = {"image": pa.binary(), "audio": pa.binary(), "label": pa.int64(), "spoken_label": pa.int64()}
    write_record_parquet(records, path, COLUMNS, types)


def _build(tmp: Path, config: TriModalQAConfig) -> None:
    voices = split_voices(config.val_voices)
    train, val = split_digit_records(config.val_fraction, config.seed, lambda images, labels, rows, split:
                                     trimodal_qa_records(images, labels, rows, voices[split], config))
    write_trimodal_qa_parquet(train, tmp / "train.parquet")
    write_trimodal_qa_parquet(val, tmp / "val.parquet")
    write_manifest(tmp, {"version": TRIMODAL_QA_VERSION, "num_train": len(train), "num_val": len(val)})


def trimodal_qa_cache_path(root: str | Path | None = None, config: TriModalQAConfig | None = None) -> Path:
    """``<root or cache_root()>/trimodal_qa/<key>``, key = hash(version, layout, config, clip manifest)."""
    config = config or TriModalQAConfig()
    clips = hashlib.sha256(repr(spoken_digit_clips()).encode()).hexdigest()[:16]
    parts = dict(version=TRIMODAL_QA_VERSION, image_px=IMAGE_PX, row_group_size=ROW_GROUP_SIZE, clips=clips,
                 **asdict(config))
    if root is None:
        return cache_dir("trimodal_qa", **parts)
    return Path(root) / "trimodal_qa" / content_key(**parts)


def ensure_trimodal_qa(root: str | Path | None = None, config: TriModalQAConfig | None = None) -> TriModalQADataset:
    """Return the cached tri-modal QA set, building it (a few seconds) if it is not there yet."""
    config = config or TriModalQAConfig()
    folder = publish_cache_dir(trimodal_qa_cache_path(root, config), lambda tmp: _build(tmp, config), MANIFEST)
    return TriModalQADataset.at(folder, config.question_types)


__all__ = [
    "COLUMNS",
    "TRIMODAL_QA_VERSION",
    "TRIMODAL_QUESTION_TYPES",
    "TriModalQAConfig",
    "TriModalQADataset",
    "ensure_trimodal_qa",
    "trimodal_qa_cache_path",
    "trimodal_qa_records",
    "write_trimodal_qa_parquet",
]
