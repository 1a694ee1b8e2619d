"""Spoken clips -> a fixed-length audio prefix for a decoder: audio encoder -> Perceiver resampler -> projector.

    features, frame_mask = encoder.featurize(waveforms)         # log-mel [B_a, n_mels, F] on the CPU
    tokens, mask         = audio_encoder(features, frame_mask)  # [B_a, F/2, H] (+ the tower's z as one more token)
    prefix               = ProjectionHead(PerceiverResampler(tokens, mask))   # [B_a, L_a, out_dim]

Only the rows that have a clip are encoded; ``batch_prefix`` places them in a ``[B, L_a, out_dim]`` block with a
``[B]`` mask of the rows that hold audio (the decoder masks the other rows' audio positions out).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prismrl.backbones.visual_prefix import EncoderPrefix


class AudioPrefix(EncoderPrefix):
    """Waveforms (mono 16 kHz, float [N] each) -> prefix ``[B_a, num_latents, out_dim]``.

    ``audio_encoder``: an ``EmbeddingTower`` over ``WhisperAudioEncoder`` (e.g. the audio tower of an alignment
    config) or a bare encoder with ``featurize(waveforms)``; other arguments as ``EncoderPrefix``.
    """

    encoder_field = "audio_encoder"

    def __init__(self, audio_encoder: nn.Module, out_dim: int, **kwargs) -> None:
        super().__init__(audio_encoder, out_dim, **kwargs)
        inner = audio_encoder.encoder if self.is_tower else audio_encoder
        if not callable(getattr(inner, "featurize", None)):
            raise TypeError(f"audio_encoder: expected an encoder with featurize(waveforms) (e.g. WhisperAudioEncoder) "
                            f"or a tower over one, received {type(inner).__name__}")
        self.featurize = inner.featurize

    def forward(self, waveforms: Sequence[Tensor]) -> Tensor:  # type: ignore[override]
        """B_a >= 1 waveforms -> ``[B_a, num_latents, out_dim]``."""
        device = self.resampler.latents.device
        inputs = self.featurize([w.detach().cpu() for w in waveforms])  # log-mel on the CPU
        return super().forward(inputs["input_features"].to(device), inputs["feature_mask"].to(device))

    def batch_prefix(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(prefix ``[B, L_a, out_dim]``, present ``[B]`` bool) from zero-padded ``audio [B, N]`` and ``lengths [B]``
        (0 = no clip); rows without a clip are zeros and are not encoded."""
        if audio.dim() != 2 or lengths.shape != (audio.shape[0],):
            raise ValueError(f"audio / audio_lengths: expected [B, N] and [B], received {tuple(audio.shape)} and "
                             f"{tuple(lengths.shape)}")
        present = lengths > 0  # [B]
        rows = present.nonzero().flatten().tolist()
        width = self.projector.out_dim
        out = torch.zeros(audio.shape[0], self.resampler.num_latents, width, device=self.resampler.latents.device)
        if rows:
            encoded = self(([audio[i, : int(lengths[i])] for i in rows]))  # [B_a, L_a, out_dim]
            out = out.to(encoded.dtype)
            out[present.to(out.device)] = encoded
        return out, present.to(out.device)


__all__ = ["AudioPrefix"]
