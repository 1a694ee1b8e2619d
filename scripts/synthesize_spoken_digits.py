"""Synthesize the shipped spoken-digit clips with Debian's espeak-ng (run once; the output is committed).

    apt-get install -y espeak-ng
    python scripts/synthesize_spoken_digits.py            # rewrites prismrl/assets/spoken_digits/

Every digit word ("zero" .. "nine") is spoken in each of the RENDITIONS below (an espeak-ng voice + variant,
a speed in words per minute and a pitch 0..99). Each clip is synthesized at espeak-ng's 22,050 Hz, trimmed to
the span whose amplitude exceeds 1% of the clip's peak (plus 40 ms either side), peak-normalized to 0.9,
resampled to 16 kHz mono with ``prismrl.backbones.audio.to_mono_16k`` and written as 16-bit PCM WAV
(``<word>_<rendition>.wav``). ``manifest.csv`` lists file, digit, word, voice, speed, pitch, num_samples.
espeak-ng is deterministic for a given version, so a rerun reproduces the files (``--check``
synthesizes into a temporary folder and compares every file byte for byte instead of writing).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prismrl.backbones.audio import to_mono_16k  # noqa: E402
from prismrl.data.audio import encode_wav  # noqa: E402
from prismrl.data.digits import DIGIT_NAMES  # noqa: E402

OUT = REPO / "prismrl" / "assets" / "spoken_digits"
# (name, espeak-ng voice+variant, words per minute, pitch): six accents, male and female variants
RENDITIONS = [
    ("us_m3", "en-us+m3", 150, 45),
    ("gb_f2", "en-gb+f2", 165, 65),
    ("scot_m1", "en-gb-scotland+m1", 140, 40),
    ("rp_f4", "en-gb-x-rp+f4", 175, 70),
    ("car_m5", "en-029+m5", 155, 50),
    ("nyc_f3", "en-us-nyc+f3", 185, 60),
    ("lanc_m7", "en-gb-x-gbclan+m7", 130, 35),
    ("us_f5", "en-us+f5", 160, 75),
]
FIELDS = ["file", "digit", "word", "voice", "speed", "pitch", "num_samples"]
PAD_SECONDS = 0.04


def speak(word: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """espeak-ng's WAV output for ``word`` as float32 [N] in [-1, 1] and its sample rate."""
    from scipy.io import wavfile

    with tempfile.TemporaryDirectory() as tmp:  # a file, not --stdout: streamed headers carry no length
        path = Path(tmp) / "clip.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), word],
                       check=True, capture_output=True)
        rate, samples = wavfile.read(path)
    return samples.astype(np.float32) / 32768.0, int(rate)


def trim_and_normalize(audio: np.ndarray, rate: int) -> np.ndarray:
    """Keep [first, last] sample above 1% of the peak, +-PAD_SECONDS; scale the peak to 0.9."""
    loud = np.flatnonzero(np.abs(audio) > 0.01 * np.abs(audio).max())
    pad = int(PAD_SECONDS * rate)
    clip = audio[max(0, loud[0] - pad) : loud[-1] + pad + 1]
    return clip * (0.9 / np.abs(clip).max())


def synthesize(out: Path) -> list[dict]:
    """Write every clip and the manifest into ``out``; return the manifest rows."""
    rows = []
    for digit, word in enumerate(DIGIT_NAMES):
        for name, voice, speed, pitch in RENDITIONS:
            audio, rate = speak(word, voice, speed, pitch)
            clip = to_mono_16k(trim_and_normalize(audio, rate), rate, where=f"{word}/{name}")
            file = f"{word}_{name}.wav"
            (out / file).write_bytes(encode_wav(clip))
            rows.append(dict(file=file, digit=digit, word=word, voice=voice, speed=speed, pitch=pitch,
                             num_samples=len(clip)))
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="synthesize into a temp folder and compare with --out")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install -y espeak-ng")
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            rows = synthesize(Path(tmp))
            names = ["manifest.csv", *(r["file"] for r in rows)]
            differ = [n for n in names if (Path(tmp) / n).read_bytes() != (args.out / n).read_bytes()]
            print(f"{len(names) - len(differ)} of {len(names)} files match; differing: {differ[:5]}")
            raise SystemExit(1 if differ else 0)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.wav"):
        old.unlink()
    rows = synthesize(args.out)
    total = sum((args.out / r["file"]).stat().st_size for r in rows)
    print(f"wrote {len(rows)} clips ({total / 1e6:.2f} MB) and manifest.csv to {args.out}")


if __name__ == "__main__":
    main()
