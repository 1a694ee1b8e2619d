"""Shipped spoken digits, WAV decoding (rates, channels, sample formats, empty files) and the tri-modal digits set."""

from __future__ import annotations

import io
import json
import tarfile
from importlib import resources

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy.io import wavfile

from prismrl.data.audio import decode_wav, encode_wav, pad_waveforms, unpad_waveforms
from prismrl.data.digits import DIGIT_NAMES
from prismrl.data.spoken_digits import (
    clip_bytes,
    clips_by_digit,
    load_clip,
    spoken_digit_clips,
    spoken_digit_voices,
)
from prismrl.data.trimodal_digits import TriModalDigitsConfig, ensure_trimodal_digits


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    wavfile.write(buffer, rate, samples)
    return buffer.getvalue()


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ----- the shipped clips -----
def test_every_digit_is_spoken_in_every_voice():
    clips = spoken_digit_clips()
    voices = spoken_digit_voices()
    assert len(clips) == 80 and len(voices) == 8
    assert {(c.digit, c.voice) for c in clips} == {(d, v) for d in range(10) for v in voices}
    assert all(c.word == DIGIT_NAMES[c.digit] and c.file.startswith(c.word + "_") for c in clips)
    folder = resources.files("prismrl") / "assets" / "spoken_digits"
    assert sum((folder / c.file).stat().st_size for c in clips) < 2_000_000  # small enough for the package


def test_clips_decode_to_16k_mono_speech():
    for clip in spoken_digit_clips()[::7]:
        wave = load_clip(clip)
        assert wave.dtype == torch.float32 and wave.dim() == 1 and wave.shape[0] == clip.num_samples
        assert 0.2 < wave.shape[0] / 16_000 < 1.5
        assert 0.5 < float(wave.abs().max()) <= 1.0  # peak-normalized, not silent
        rate, raw = wavfile.read(io.BytesIO(clip_bytes(clip)))
        assert rate == 16_000 and raw.dtype == np.int16 and raw.ndim == 1


def test_clip_lookup_errors_name_the_field():
    with pytest.raises(ValueError, match="clip: expected a file listed in manifest.csv"):
        clip_bytes("eleven_us_m3.wav")
    with pytest.raises(ValueError, match="voices: expected names from"):
        clips_by_digit(["klingon"])
    assert all(len(v) == 2 for v in clips_by_digit(["en-us+m3", "en-us+f5"]).values())


# ----- WAV decoding -----
def test_stereo_44k_int16_becomes_mono_16k():
    left = _tone(0.5, 44_100)
    stereo = np.stack([left, left], axis=1)  # [N, 2] as WAV files store it
    wave = decode_wav(_wav(np.rint(stereo * 32767).astype(np.int16), 44_100))
    assert wave.shape == (8000,)
    np.testing.assert_allclose(wave[400:7600].numpy(), _tone(0.5, 16_000)[400:7600], atol=2e-3)


def test_sample_formats_are_scaled_to_unit_range():
    tone = _tone(0.1, 16_000)
    for samples, atol in (
        (tone, 1e-7),
        (np.rint(tone * 32767).astype(np.int16), 1e-4),
        (np.rint(tone * 2**31 * 0.999).astype(np.int32), 1e-3),
        (np.rint(tone * 127 + 128).astype(np.uint8), 1e-2),
    ):
        np.testing.assert_allclose(decode_wav(_wav(samples, 16_000)).numpy(), tone, atol=atol, err_msg=str(samples.dtype))


def test_encode_decode_round_trip():
    tone = _tone(0.2, 16_000)
    np.testing.assert_allclose(decode_wav(encode_wav(tone)).numpy(), tone, atol=1 / 32767)
    with pytest.raises(ValueError, match="waveform: expected a non-empty mono"):
        encode_wav(np.zeros((2, 5)))


def test_bad_audio_is_a_clear_error():
    with pytest.raises(ValueError, match="row 3: expected at least one audio sample"):
        decode_wav(_wav(np.zeros(0, dtype=np.int16), 16_000), where="row 3")
    with pytest.raises(ValueError, match="row 4: could not decode WAV bytes"):
        decode_wav(b"RIFF not really a wav", where="row 4")
    with pytest.raises(TypeError, match="expected WAV file bytes"):
        decode_wav("clip.wav")


def test_pad_and_unpad_waveforms():
    a, b = torch.ones(3), torch.full((5,), 2.0)
    audio, lengths = pad_waveforms([a, None, b])
    assert audio.shape == (3, 5) and lengths.tolist() == [3, 0, 5]
    assert audio[0].tolist() == [1, 1, 1, 0, 0] and not audio[1].any()
    back = unpad_waveforms(audio, lengths, placeholder=4)
    assert back[0].tolist() == [1, 1, 1] and back[1].tolist() == [0, 0, 0, 0] and back[2].tolist() == [2] * 5
    assert pad_waveforms([None, None])[0].shape == (2, 1)


# ----- the tri-modal digits set -----
@pytest.fixture(scope="module")
def trimodal(tmp_path_factory):
    config = TriModalDigitsConfig(missing_text_fraction=0.3, missing_audio_fraction=0.2)
    return ensure_trimodal_digits(tmp_path_factory.mktemp("trimodal"), config), config


def test_parquet_rows_pair_each_image_with_its_spoken_label(trimodal):
    files, config = trimodal
    assert files.num_train + files.num_val == 1797
    by_file = {c.file: c for c in spoken_digit_clips()}
    for path, split_voices in ((files.train_parquet, None), (files.val_parquet, set(config.val_voices))):
        table = pq.read_table(path).to_pylist()
        with_audio = [r for r in table if r["audio"] is not None]
        assert 0.15 < 1 - len(with_audio) / len(table) < 0.25  # missing_audio_fraction 0.2
        assert 0.25 < sum(r["caption"] is None for r in table) / len(table) < 0.35  # missing_text_fraction 0.3
        for row in with_audio:
            clip = by_file[row["audio_file"]]
            assert clip.digit == row["label"] and row["audio"] == clip_bytes(clip) and row["voice"] == clip.voice
        voices = {r["voice"] for r in with_audio}
        if split_voices is None:
            assert voices == set(spoken_digit_voices()) - set(config.val_voices)  # held-out voices never trained on
        else:
            assert voices == split_voices
        assert all(r["audio_file"] is None and r["voice"] is None for r in table if r["audio"] is None)


def test_shards_leave_out_missing_members(trimodal):
    files, _ = trimodal
    rows = pq.read_table(files.val_parquet).to_pylist()
    members: dict[str, set[str]] = {}
    for shard in range(2):
        with tarfile.open(files.val_shards.replace("{000000..000001}", f"{shard:06d}")) as tar:
            for name in tar.getnames():
                key, ext = name.rsplit(".", 1)
                members.setdefault(key, set()).add(ext)
    assert len(members) == len(rows)
    no_audio = sum("wav" not in m for m in members.values())
    no_text = sum("txt" not in m for m in members.values())
    assert no_audio == sum(r["audio"] is None for r in rows) and no_text == sum(r["caption"] is None for r in rows)
    assert all({"png", "json"} <= m for m in members.values())


def test_build_is_deterministic_and_cached(trimodal, tmp_path):
    files, config = trimodal
    again = ensure_trimodal_digits(files.root.parent.parent, config)
    assert again.root == files.root  # same key, no rebuild
    other = ensure_trimodal_digits(tmp_path, config)
    assert pq.read_table(other.val_parquet).equals(pq.read_table(files.val_parquet))
    manifest = json.loads((files.root / "manifest.json").read_text())
    assert manifest["num_val"] == files.num_val


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="missing_audio_fraction"):
        TriModalDigitsConfig(missing_audio_fraction=1.0)
    with pytest.raises(ValueError, match="val_voices"):
        TriModalDigitsConfig(val_voices=("klingon",))
    with pytest.raises(ValueError, match="val_voices"):
        TriModalDigitsConfig(val_voices=tuple(spoken_digit_voices()))
