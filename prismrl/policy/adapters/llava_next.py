"""LLaVA-NeXT adapter (``LlavaNextForConditionalGeneration``, "anyres" images).

An image of size (h, w) is resized to the grid pinpoint (H, W) that fits it best
(``config.image_grid_pinpoints``) and cut into (H / S) * (W / S) tiles of the tower's ``image_size`` S,
plus one base tile of the whole image: tiles = (H / S) * (W / S) + 1. ``pixel_values`` holds the tiles of
every image one after another, ``[sum tiles, 3, S, S]`` (image i owns its tiles as rows, no padding tiles);
the model also takes this flat layout (it splits the rows by ``image_sizes``, ``[N, 2]`` original (h, w),
one row per image). The image processor's own ``[N, max tiles, 3, S, S]`` differs only by padding tiles,
which the model drops.

Image tokens (``<image>``), with p = S // patch and (gh, gw) = (H / S, W / S):
    base   = p * p + [CLS tower] - [strategy "default"]
    (ch, cw) = (p * gh, p * gw) with the letterbox padding removed: if w / h > cw / ch then
             ch -= 2 * ((ch - round(h * cw / w)) // 2), else cw -= 2 * ((cw - round(w * ch / h)) // 2)
    tokens = base + ch * cw + ch            (one image_newline feature per row of the unpadded grid)
as ``LlavaNextProcessor`` counts them.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch
from PIL import Image

from prismrl.policy.adapters.base import ProcessedImages
from prismrl.policy.adapters.llava import CLS_VISION_TYPES, LlavaAdapter


def anyres_tokens(height: int, width: int, tile: int, patch: int, pinpoints: list[list[int]], base: int
                  ) -> tuple[int, int]:
    """(tiles, image tokens) of one (h, w) image; see the module docstring for the formula."""
    from transformers.image_processing_utils import select_best_resolution

    grid_h, grid_w = select_best_resolution((height, width), pinpoints)  # most effective pixels, then least waste
    gh, gw = grid_h // tile, grid_w // tile
    p = tile // patch
    ch, cw = p * gh, p * gw
    if width / height > cw / ch:
        ch -= 2 * ((ch - int(round(height * (cw / width), 7))) // 2)
    else:
        cw -= 2 * ((cw - int(round(width * (ch / height), 7))) // 2)
    return gh * gw + 1, base + ch * cw + ch


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT: anyres tiles, ``<image>`` tokens, ``image_sizes``, 1-D RoPE; see the module docstring.

    LLaVA's tiny towers, tile size, image token and processor setup, with anyres tiling added."""

    model_types = ("llava_next",)
    config_class = "LlavaNextConfig"
    image_processor_class = "LlavaNextImageProcessor"

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """LLaVA-NeXT: a 2-layer llama of width 64, a 2-layer CLIP tower at 28 px, patch 14 (4 patches per tile),
        grid pinpoints 28x56, 56x28, 56x56 (2 to 4 tiles + the base tile)."""
        return super().tiny_config(tokenizer, **{"image_grid_pinpoints": [[28, 56], [56, 28], [56, 56]], **overrides})

    @property
    def base_tokens(self) -> int:
        """Image tokens of the base tile: p * p, one feature per patch."""
        return self.tokens_per_image

    @cached_property
    def pinpoints(self) -> list[list[int]]:
        """The (H, W) grid resolutions an image may be resized to (``config.image_grid_pinpoints``)."""
        return [list(p) for p in self.config.image_grid_pinpoints]

    def image_processor_kwargs(self) -> dict[str, Any]:
        """LLaVA's kwargs plus the grid pinpoints; first checks that the tower keeps one feature per patch."""
        vision, strategy = self.config.vision_config, self.config.vision_feature_select_strategy
        if self.base_tokens != (self.tile // self.patch) ** 2:
            has_cls = vision.model_type in CLS_VISION_TYPES
            raise ValueError(
                f"config.vision_feature_select_strategy: LLaVA-NeXT needs one feature per patch; with a "
                f"{vision.model_type} tower use {'default' if has_cls else 'full'}, received {strategy!r}")
        return {**super().image_processor_kwargs(), "image_grid_pinpoints": self.pinpoints}

    def process_images(self, images: list[Image.Image]) -> ProcessedImages:
        out = self.image_processor(images=images, return_tensors="pt")
        padded, sizes = out["pixel_values"], out["image_sizes"].long()  # [N, max tiles, 3, S, S], [N, 2]
        counts = [anyres_tokens(int(h), int(w), self.tile, self.patch, self.pinpoints, self.base_tokens)
                  for h, w in sizes.tolist()]
        tiles = [t for t, _ in counts]
        pixel_values = torch.cat([padded[i, :t] for i, t in enumerate(tiles)])  # [sum tiles, 3, S, S]
        return ProcessedImages(pixel_values, tiles, [n for _, n in counts], {"image_sizes": sizes})
