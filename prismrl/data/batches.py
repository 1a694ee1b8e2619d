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
    """

    pixel_values: torch.Tensor
    captions: list[str]
    labels: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    sample_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.pixel_values.shape[0])
