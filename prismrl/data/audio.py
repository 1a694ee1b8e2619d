"""WAV bytes <-> float32 mono 16 kHz waveforms, the form audio takes inside prismrl's data pipeline.

Decoding accepts PCM 8/16/32-bit integer and 32/64-bit float WAV files at any sample rate and with any
number of channels (<= 8): integer samples are scaled to [-1, 1) (``x / 2^(bits-1)``; unsigned 8-bit is
centred first), channels are averaged and other rates are resampled to 16 kHz with
``to_mono_16k``. A file with no sample is an error (there is nothing to encode);
a sample *without* audio is represented by ``None`` / a null cell, never by an empty file.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from torch import Tensor

from prismrl.choices import check_positive_int

SAMPLING_RATE = 16_000  # Whisper's rate, the one every audio encoder in prismrl takes


def to_mono_16k(waveform: np.ndarray | Tensor, sampling_rate: int, where: str = "waveform") -> np.ndarray:
    """A float32 mono waveform at 16 kHz.

    Accepts [N] or channel-first [C, N] (C <= 8; channels are averaged). Other rates are resampled with a
    polyphase filter. Empty audio is an error: it has no frame to encode.
    """
    audio = waveform.detach().cpu().numpy() if isinstance(waveform, Tensor) else np.asarray(waveform)
    if audio.ndim == 2 and audio.shape[0] <= 8:
        audio = audio.mean(axis=0)
    if audio.ndim != 1:
        raise ValueError(f"{where}: expected a mono [N] or channel-first [C, N] waveform, received shape {audio.shape}")
    if audio.size == 0:
        raise ValueError(f"{where}: expected at least one audio sample, received an empty waveform")
    check_positive_int("sampling_rate", sampling_rate)
    audio = audio.astype(np.float32)
    if sampling_rate != SAMPLING_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(sampling_rate, SAMPLING_RATE)
        audio = resample_poly(audio, SAMPLING_RATE // g, sampling_rate // g).astype(np.float32)
    return audio


def _to_float(samples: np.ndarray, where: str) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1); float samples pass through."""
    if samples.dtype == np.uint8:
        return (samples.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(samples.dtype, np.signedinteger):
        return samples.astype(np.float32) / float(2 ** (8 * samples.dtype.itemsize - 1))
    if np.issubdtype(samples.dtype, np.floating):
        return samples.astype(np.float32)
    raise ValueError(f"{where}: expected integer or float PCM samples, received dtype {samples.dtype}")


def decode_wav(data: bytes, where: str = "audio") -> torch.Tensor:
    """WAV file bytes -> float32 mono waveform [N] at 16 kHz (N >= 1)."""
    from scipy.io import wavfile

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{where}: expected WAV file bytes, received {type(data).__name__}")
    try:
        rate, samples = wavfile.read(io.BytesIO(bytes(data)))
    except (ValueError, EOFError, OSError) as error:
        raise ValueError(f"{where}: could not decode WAV bytes ({error})") from None
    samples = _to_float(np.asarray(samples), where)
    if samples.ndim == 2:
        samples = samples.T  # [N, C] -> [C, N], the channel-first layout to_mono_16k averages
    return torch.from_numpy(to_mono_16k(samples, int(rate), where=where))  # [N]


def encode_wav(waveform: np.ndarray | torch.Tensor, sampling_rate: int = SAMPLING_RATE) -> bytes:
    """Mono float waveform [N] in [-1, 1] -> 16-bit PCM WAV bytes at ``sampling_rate`` (clipped, rounded)."""
    from scipy.io import wavfile

    audio = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"waveform: expected a non-empty mono [N] array, received shape {audio.shape}")
    pcm = np.clip(np.rint(audio.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    wavfile.write(buffer, int(sampling_rate), pcm)
    return buffer.getvalue()


def pad_waveforms(waveforms: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """B waveforms (None = no audio) -> (zero-padded [B, max(1, N_max)] float32, lengths [B] long, 0 = none)."""
    lengths = torch.tensor([0 if w is None else int(w.shape[0]) for w in waveforms], dtype=torch.long)  # [B]
    audio = torch.zeros(len(waveforms), max(1, int(lengths.max()) if len(waveforms) else 1))  # [B, N]
    for row, wave in enumerate(waveforms):
        if wave is not None:
            audio[row, : wave.shape[0]] = wave
    return audio, lengths


def unpad_waveforms(audio: torch.Tensor, lengths: torch.Tensor, placeholder: int = 160) -> list[torch.Tensor]:
    """Inverse of ``pad_waveforms`` for encoders: row i -> ``audio[i, :lengths[i]]``; rows without audio get
    ``placeholder`` samples of silence (they are masked out of losses and metrics, but keep every row encoded)."""
    if audio.dim() != 2 or lengths.shape != (audio.shape[0],):
        raise ValueError(
            f"audio/audio_lengths: expected [B, N] and [B], received {tuple(audio.shape)} and {tuple(lengths.shape)}"
        )
    return [audio[i, : int(n)] if int(n) > 0 else audio.new_zeros(placeholder) for i, n in enumerate(lengths.tolist())]


__all__ = ["SAMPLING_RATE", "decode_wav", "encode_wav", "pad_waveforms", "unpad_waveforms"]
