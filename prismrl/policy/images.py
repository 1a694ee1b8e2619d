"""Image inputs of a vision-language batch -> one list of RGB PIL images per sample.

Accepted per batch (B samples):
- ``None``: no images anywhere;
- a tensor ``[B, C, H, W]`` (one image per sample) or ``[B, N, C, H, W]`` (N images per sample);
- a list of B entries, each ``None`` / ``[]`` (no image), a PIL image, a tensor ``[C, H, W]``, a tensor
  ``[N, C, H, W]`` (N images) or a list of PIL images / ``[C, H, W]`` tensors (sizes may differ).

C is 1 (greyscale, repeated to RGB) or 3. uint8 tensors hold 0..255; float tensors hold [0, 1]
and are quantized as ``round(x * 255)``. Any PIL mode goes through ``prismrl.data.images.to_rgb``.
Each family's image processor then resizes and normalizes the PIL images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from prismrl.data.images import to_rgb

_CHANNELS = (1, 3)


def _tensor_to_pil(image: torch.Tensor, where: str) -> Image.Image:
    """[C, H, W] uint8 or float in [0, 1] -> RGB PIL image."""
    if image.dim() != 3 or image.shape[0] not in _CHANNELS or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(
            f"{where}: expected an image tensor [C, H, W] with C in {_CHANNELS}, got shape {tuple(image.shape)}"
        )
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        pixels = image
    elif image.is_floating_point():
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{where}: float image values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
        pixels = (image.float() * 255.0).round().to(torch.uint8)
    else:
        raise TypeError(f"{where}: expected a uint8 or floating image tensor, got dtype {image.dtype}")
    pixels = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels  # [3, H, W]
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()), mode="RGB")


def to_pil_rgb(image: Any, where: str = "image") -> Image.Image:
    """One PIL image or ``[C, H, W]`` tensor -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        return _tensor_to_pil(image, where)
    raise TypeError(f"{where}: expected a PIL image or a [C, H, W] tensor, got {type(image).__name__}")


def _sample_images(entry: Any, where: str) -> list[Image.Image]:
    """One sample's images: None, a PIL image, [C, H, W], [N, C, H, W] or a list of images."""
    if entry is None:
        return []
    if isinstance(entry, torch.Tensor):
        if entry.dim() == 4:
            return [_tensor_to_pil(img, f"{where}[{n}]") for n, img in enumerate(entry)]
        if entry.dim() == 3:
            return [_tensor_to_pil(entry, where)]
        raise ValueError(
            f"{where}: expected an image tensor [C, H, W] or images [N, C, H, W], got shape {tuple(entry.shape)}"
        )
    if isinstance(entry, (list, tuple)):
        return [to_pil_rgb(img, f"{where}[{n}]") for n, img in enumerate(entry)]
    return [to_pil_rgb(entry, where)]


def normalize_images(images: Any, batch_size: int, field: str = "images") -> list[list[Image.Image]]:
    """Any accepted layout (see module doc) -> B lists of RGB PIL images (possibly empty)."""
    if images is None:
        return [[] for _ in range(batch_size)]
    if isinstance(images, torch.Tensor):
        if images.dim() not in (4, 5):
            raise ValueError(
                f"{field}: expected a batch tensor [B, C, H, W] or [B, N, C, H, W], got shape {tuple(images.shape)}"
            )
        entries = [img.unsqueeze(0) if images.dim() == 4 else img for img in images]
    elif isinstance(images, (list, tuple)):
        entries = list(images)
    else:
        raise TypeError(
            f"{field}: expected None, a tensor or a list with one entry per sample, got {type(images).__name__}"
        )
    if len(entries) != batch_size:
        raise ValueError(f"{field}: expected one entry per prompt ({batch_size}), got {len(entries)}")
    return [_sample_images(entry, f"{field}[{b}]") for b, entry in enumerate(entries)]
