"""Optional audio (WAV bytes) and optional captions in the Parquet and WebDataset DataModules."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from prismrl.datamodules.parquet import ParquetDataModule
from prismrl.datamodules.webdataset import WebDataModule
from prismrl.data.loaders import LoaderSettings


def _wav(seconds: float, rate: int, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    tone = np.rint(0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    wavfile.write(buffer, rate, tone if channels == 1 else np.stack([tone] * channels, axis=1))
    return buffer.getvalue()


# row i: audio at 16 kHz mono (0.25 s), at 8 kHz (0.5 s), stereo 16 kHz (0.125 s), or none; caption null every 5th
CLIPS = [(_wav(0.25, 16_000), 4000), (_wav(0.5, 8_000), 8000), (_wav(0.125, 16_000, channels=2), 2000), (None, 0)]


def _rows(writers, n: int = 16) -> list[dict]:
    rows = writers.make_rows(n)
    for i, row in enumerate(rows):
        row["audio"] = CLIPS[i % 4][0]
        row["caption"] = None if i % 5 == 0 else row["caption"]
    return rows


def _parquet(writers, tmp_path, rows, **kwargs) -> ParquetDataModule:
    path = writers.write_parquet(tmp_path / "train.parquet", rows)
    options = dict(val_path=str(path), loader=LoaderSettings(batch_size=16), image_size=8, audio_column="audio",
                   optional_captions=True)
    return ParquetDataModule(str(path), **{**options, **kwargs})


def test_parquet_batches_carry_resampled_mono_audio_and_caption_masks(writers, tmp_path):
    dm = _parquet(writers, tmp_path, _rows(writers))
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))  # sequential: row i is batch row i
    assert batch.audio_lengths.tolist() == [CLIPS[i % 4][1] for i in range(16)]
    assert batch.audio.shape == (16, 8000) and batch.audio.dtype == torch.float32
    assert not batch.audio[3].any() and batch.audio_mask.tolist() == [i % 4 != 3 for i in range(16)]
    assert batch.caption_mask.tolist() == [i % 5 != 0 for i in range(16)]
    assert batch.captions[0] == "" and batch.captions[1] == "picture 1 in mode LA"
    # the stereo clip was averaged, the 8 kHz clip resampled: same tone, so the first 0.1 s agree
    torch.testing.assert_close(batch.audio[1, 200:1600], batch.audio[0, 200:1600], atol=2e-3, rtol=0)
    torch.testing.assert_close(batch.audio[2, :1600], batch.audio[0, :1600], atol=1e-4, rtol=0)


def test_parquet_without_audio_or_missing_captions_is_unchanged(writers, tmp_path):
    dm = ParquetDataModule(str(writers.write_parquet(tmp_path / "t.parquet", writers.make_rows(8))), val_fraction=0.5,
                           loader=LoaderSettings(batch_size=4), image_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert not batch.has_audio and batch.audio.numel() == 0 and batch.caption_mask.numel() == 0
    assert batch.text_mask.all() and not batch.audio_mask.any()


def test_parquet_audio_errors_name_the_row_and_column(writers, tmp_path):
    rows = _rows(writers)
    rows[5]["audio"] = _wav(0.0, 16_000)  # a zero-length file is corrupt data, not a missing clip
    dm = _parquet(writers, tmp_path, rows)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"row 5 of column 'audio' in train.parquet: expected at least one audio sample"):
        next(iter(dm.val_dataloader()))
    rows = _rows(writers)
    with pytest.raises(ValueError, match="caption_column: caption 'caption' is empty at row 0"):
        _parquet(writers, tmp_path, rows, optional_captions=False).setup("fit")
    for row in rows:
        row["audio"] = "not bytes"
    with pytest.raises(ValueError, match="audio_column: column 'audio' of train.parquet should hold WAV file bytes"):
        _parquet(writers, tmp_path, rows).setup("fit")


def test_webdataset_samples_may_lack_wav_or_txt(writers, tmp_path):
    samples = []
    for i in range(8):
        sample = writers.make_sample(f"k{i}", label=i % 3)
        if CLIPS[i % 4][0] is not None:
            sample["wav"] = CLIPS[i % 4][0]
        if i % 5 == 0:
            del sample["txt"]
        samples.append(sample)
    pattern = writers.write_shards(tmp_path, [samples], prefix="val")
    dm = WebDataModule(train_shards=pattern, val_shards=pattern, loader=LoaderSettings(batch_size=8), image_size=8,
                       samples_per_epoch=8,
                       class_names=["a", "b", "c"], audio_key="wav", optional_captions=True)
    batch = next(iter(dm.val_dataloader()))
    assert batch.sample_ids == [f"k{i}" for i in range(8)]
    assert batch.audio_lengths.tolist() == [CLIPS[i % 4][1] for i in range(8)]
    assert batch.caption_mask.tolist() == [i % 5 != 0 for i in range(8)]
    strict = WebDataModule(train_shards=pattern, val_shards=pattern, loader=LoaderSettings(batch_size=8), image_size=8,
                           samples_per_epoch=8,
                           class_names=["a", "b", "c"], audio_key="wav")
    with pytest.raises(ValueError, match="caption_key 'txt' is missing"):
        next(iter(strict.val_dataloader()))
