"""Image decoding and the tensor transform shared by every image DataModule (no torchvision).

Pipeline: bytes -> PIL (``decode_image``) -> RGB (``to_rgb``) -> square bicubic resize ->
float in [0, 1] -> ``(x - mean) / std`` per channel -> ``[3, H, W]``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from prismrl.choices import check_positive_int

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}


def decode_image(data: bytes, where: str) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, WebP, ...) into a fully loaded PIL image.

    ``where`` names the sample in error messages, e.g. ``"row 17 of column 'image' in train.parquet"``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"{where}: expected encoded image bytes, received {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{where}: image bytes are empty")
    try:
        image = Image.open(io.BytesIO(bytes(data)))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{where}: could not decode image ({len(data)} bytes): {exc}") from exc
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Alpha (LA, RGBA, PA, palette with transparency) is composited on white:
    ``rgb = alpha * color + (1 - alpha) * 255``. 16/32-bit greyscale (I;16, I) is scaled by
    ``value / 257`` to 8 bits (``65535 -> 255``); CMYK, L, P, 1, YCbCr go through PIL's ``convert``.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64)  # [H, W]
        grey8 = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey8).convert("RGB")
    if image.mode == "F":
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


class ImageTransform:
    """PIL image or encoded bytes -> normalized ``[3, image_size, image_size]`` float tensor.

    The resize is square (aspect ratio is not kept) with bicubic interpolation; then
    ``x = (pixel / 255 - mean[c]) / std[c]``.
    """

    def __init__(
        self,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        check_positive_int("image_size", image_size)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"image_mean/image_std: expected 3 values each, received {tuple(mean)} and {tuple(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"image_std: expected positive values, received {tuple(std)}")
        self.image_size = image_size
        self.mean = torch.tensor([float(m) for m in mean]).view(3, 1, 1)  # [3, 1, 1]
        self.std = torch.tensor([float(s) for s in std]).view(3, 1, 1)  # [3, 1, 1]

    def __call__(self, image: Image.Image | bytes, where: str = "image") -> torch.Tensor:
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = decode_image(bytes(image), where)
        if not isinstance(image, Image.Image):
            raise TypeError(f"{where}: expected a PIL image or bytes, received {type(image).__name__}")
        rgb = to_rgb(image)
        if rgb.size != (self.image_size, self.image_size):
            rgb = rgb.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        array = np.asarray(rgb, dtype=np.uint8)  # [H, W, 3]
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # [3, H, W]
        return (pixels - self.mean) / self.std

    def __repr__(self) -> str:
        return (
            f"ImageTransform(image_size={self.image_size}, mean={self.mean.flatten().tolist()}, "
            f"std={self.std.flatten().tolist()})"
        )
