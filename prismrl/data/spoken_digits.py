"""The shipped spoken-digit clips: the words "zero" .. "nine" in several espeak-ng voices, speeds and pitches.

The 16 kHz mono 16-bit WAV files and ``manifest.csv`` live in the package (``prismrl/assets/spoken_digits``),
written once by ``scripts/synthesize_spoken_digits.py``; nothing is synthesized at run time, so CI machines
need no espeak-ng. Waveforms are decoded with ``prismrl.data.audio.decode_wav`` (float32 [N] at 16 kHz).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import torch

from prismrl.data.audio import decode_wav

ASSET_PACKAGE = "prismrl"
ASSET_FOLDER = ("assets", "spoken_digits")
MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class SpokenDigitClip:
    """One shipped clip: its file name, the digit spoken, and how it was synthesized."""

    file: str
    digit: int
    word: str
    voice: str
    speed: int  # words per minute
    pitch: int  # espeak-ng pitch, 0..99
    num_samples: int  # at 16 kHz


def _folder() -> resources.abc.Traversable:
    folder = resources.files(ASSET_PACKAGE)
    for part in ASSET_FOLDER:
        folder = folder / part
    return folder


@lru_cache(maxsize=1)
def spoken_digit_clips() -> tuple[SpokenDigitClip, ...]:
    """Every shipped clip, in manifest order (digit-major)."""
    manifest = _folder() / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"spoken digits: {'/'.join(ASSET_FOLDER)}/{MANIFEST} is missing from the installed prismrl package "
            "(package data not installed?); regenerate with scripts/synthesize_spoken_digits.py"
        )
    rows = csv.DictReader(io.StringIO(manifest.read_text()))
    return tuple(
        SpokenDigitClip(r["file"], int(r["digit"]), r["word"], r["voice"], int(r["speed"]), int(r["pitch"]),
                        int(r["num_samples"]))
        for r in rows
    )


def spoken_digit_voices() -> list[str]:
    """The distinct voices, in manifest order."""
    return list(dict.fromkeys(clip.voice for clip in spoken_digit_clips()))


def clip_bytes(clip: SpokenDigitClip | str) -> bytes:
    """The WAV file bytes of a clip (or of a file name from the manifest)."""
    name = clip.file if isinstance(clip, SpokenDigitClip) else str(clip)
    known = {c.file for c in spoken_digit_clips()}
    if name not in known:
        raise ValueError(f"clip: expected a file listed in {MANIFEST} (e.g. {sorted(known)[0]!r}), received {name!r}")
    return (_folder() / name).read_bytes()


def load_clip(clip: SpokenDigitClip | str) -> torch.Tensor:
    """A clip's waveform: float32 [N] at 16 kHz."""
    name = clip.file if isinstance(clip, SpokenDigitClip) else str(clip)
    return decode_wav(clip_bytes(clip), where=f"spoken digit clip {name}")


def clips_by_digit(voices: list[str] | None = None) -> dict[int, list[SpokenDigitClip]]:
    """digit -> its clips (only those in ``voices`` when given); every digit must keep at least one clip."""
    known = spoken_digit_voices()
    if voices is not None and (unknown := [v for v in voices if v not in known]):
        raise ValueError(f"voices: expected names from {known}, received unknown {unknown}")
    groups: dict[int, list[SpokenDigitClip]] = {d: [] for d in range(10)}
    for clip in spoken_digit_clips():
        if voices is None or clip.voice in voices:
            groups[clip.digit].append(clip)
    if empty := [d for d, clips in groups.items() if not clips]:
        raise ValueError(f"voices: {voices} leave digits {empty} without a clip")
    return groups


__all__ = ["SpokenDigitClip", "clip_bytes", "clips_by_digit", "load_clip", "spoken_digit_clips", "spoken_digit_voices"]
