"""Per-sample records produced by the image-text datasets and their collation into ``ImageTextBatch``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prismrl.data.batches import ImageTextBatch


@dataclass
class ImageTextSample:
    """One decoded sample.

    pixel_values: [3, H, W] float, normalized.
    caption: the text paired with the image.
    label: class id, -1 when the sample has no class.
    sample_id: stable identifier (``"<file>:<row>"`` for Parquet, the ``__key__`` for WebDataset).
    """

    pixel_values: torch.Tensor
    caption: str
    label: int = -1
    sample_id: str = ""


def collate_image_text(samples: Sequence[ImageTextSample]) -> ImageTextBatch:
    """Stack B samples: pixel_values [B, 3, H, W], captions list of B, labels [B] long."""
    if len(samples) == 0:
        raise ValueError("collate_image_text: expected at least one sample, got an empty list")
    shapes = {tuple(s.pixel_values.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate_image_text: all images must share one shape, got {sorted(shapes)}")
    return ImageTextBatch(
        pixel_values=torch.stack([s.pixel_values for s in samples]),  # [B, 3, H, W]
        captions=[s.caption for s in samples],
        labels=torch.tensor([int(s.label) for s in samples], dtype=torch.long),  # [B]
        sample_ids=[s.sample_id for s in samples],
    )
