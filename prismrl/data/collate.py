"""Per-sample records produced by the image-text datasets and their collation into ``ImageTextBatch``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prismrl.data.audio import pad_waveforms
from prismrl.data.batches import ImageTextBatch


@dataclass
class ImageTextSample:
    """One decoded sample.

    pixel_values: [3, H, W] float, normalized.
    caption: the text paired with the image.
    label: class id, -1 when the sample has no class.
    sample_id: stable identifier (``"<file>:<row>"`` for Parquet, the ``__key__`` for WebDataset).
    audio: float32 mono 16 kHz waveform [N]; an empty [0] tensor when the source has audio but this sample
        has none; None when the source has no audio at all.
    has_caption: False when the sample has no caption (``caption`` is then "").
    reward / action: logged feedback (the reward the logged action earned), None when the source has none.
    """

    pixel_values: torch.Tensor
    caption: str
    label: int = -1
    sample_id: str = ""
    audio: torch.Tensor | None = None
    has_caption: bool = True
    reward: float | None = None
    action: int | None = None


def collate_image_text(samples: Sequence[ImageTextSample]) -> ImageTextBatch:
    """Stack B samples: pixel_values [B, 3, H, W], captions list of B, labels [B] long; with audio, waveforms
    zero-padded to [B, N] with lengths [B] (0 = no clip); a caption mask [B] when some caption is missing."""
    if len(samples) == 0:
        raise ValueError("collate_image_text: expected at least one sample, received an empty list")
    shapes = {tuple(s.pixel_values.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate_image_text: all images must share one shape, received {sorted(shapes)}")
    batch = ImageTextBatch(
        pixel_values=torch.stack([s.pixel_values for s in samples]),  # [B, 3, H, W]
        captions=[s.caption for s in samples],
        labels=torch.tensor([int(s.label) for s in samples], dtype=torch.long),  # [B]
        sample_ids=[s.sample_id for s in samples],
    )
    if any(s.audio is not None for s in samples):
        clips = [s.audio if s.audio is not None and s.audio.numel() else None for s in samples]
        batch.audio, batch.audio_lengths = pad_waveforms(clips)  # [B, N], [B]
    for name, dtype in (("reward", torch.float32), ("action", torch.long)):
        values = [getattr(s, name) for s in samples]
        if any(v is not None for v in values):
            if any(v is None for v in values):
                raise ValueError(f"collate_image_text: {name} is missing for some samples of the batch")
            setattr(batch, f"{name}s", torch.tensor(values, dtype=dtype))  # [B]
    if not all(s.has_caption for s in samples):
        batch.caption_mask = torch.tensor([s.has_caption for s in samples], dtype=torch.bool)  # [B]
    return batch
