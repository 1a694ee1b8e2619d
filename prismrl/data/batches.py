"""Batch dataclasses passed from DataModules to LightningModules.

Lightning moves dataclass batches to the device field by field (tensors only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ImageTextBatch:
    """A batch of paired images and captions.

    pixel_values: [B, 3, H, W] float, normalized.
    captions: B strings (tokenized by the text encoder, so every text backbone brings its own
        tokenizer and the data pipeline stays model-agnostic).
    labels: [B] long class ids, -1 where the sample has no class. Items that share a class are
        treated as mutual positives by the retrieval metrics.
    sample_ids: B stable sample identifiers (``"<file>:<row>"`` or a WebDataset ``__key__``), or
        empty when the source has none; used to check data order and to trace bad samples.
    audio: [B, N] float32 mono 16 kHz waveforms, zero-padded to the longest clip, or empty when the source
        has no audio (encoded by the audio tower, which brings its own feature extractor).
    audio_lengths: [B] long samples per clip, 0 where the sample has no audio; empty when ``audio`` is.
    caption_mask: [B] bool, False where the sample has no caption (its caption is ""); empty = all present.
    rewards / actions: [B] float32 logged rewards and [B] long logged action ids, or empty when the source
        has no logged feedback.
    """

    pixel_values: torch.Tensor
    captions: list[str]
    labels: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    sample_ids: list[str] = field(default_factory=list)
    audio: torch.Tensor = field(default_factory=lambda: torch.empty(0, 0))
    audio_lengths: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    caption_mask: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.bool))
    rewards: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    actions: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])

    @property
    def has_audio(self) -> bool:
        """Whether the batch carries an audio column (individual rows may still lack a clip)."""
        return self.audio_lengths.numel() > 0

    @property
    def audio_mask(self) -> torch.Tensor:
        """[B] bool, True where the sample has audio (all False when the batch has no audio column)."""
        return self.audio_lengths > 0 if self.has_audio else torch.zeros(len(self), dtype=torch.bool)

    @property
    def text_mask(self) -> torch.Tensor:
        """[B] bool, True where the sample has a caption."""
        return self.caption_mask if self.caption_mask.numel() else torch.ones(len(self), dtype=torch.bool)
