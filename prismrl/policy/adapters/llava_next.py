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

from typing import Any

import torch
from PIL import Image

from prismrl.backbones.tokenizers import tiny_decoder_kwargs
from prismrl.policy.adapters.base import ProcessedImages, ProcessorSettings, VLMAdapter
from prismrl.policy.adapters.llava import CLS_VISION_TYPES, side
from prismrl.policy.adapters.tiny import add_special_tokens, merged_overrides


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


class LlavaNextAdapter(VLMAdapter):
    """LLaVA-NeXT: anyres tiles, ``<image>`` tokens, ``image_sizes``, 1-D RoPE; see the module docstring."""

    model_types = ("llava_next",)
    special_tokens = {"image_token_id": "<image>"}
    image_settings = ("image_mean", "image_std")

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """LLaVA-NeXT: a 2-layer llama of width 64, a 2-layer CLIP tower at 28 px, patch 14 (4 patches per tile),
        grid pinpoints 28x56, 56x28, 56x56 (2 to 4 tiles + the base tile)."""
        import transformers

        overrides = dict(overrides)
        ids = add_special_tokens(tokenizer, cls.special_tokens)
        text = merged_overrides({**tiny_decoder_kwargs(tokenizer), "model_type": "llama"}, overrides, "text_config")
        vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
        vision = merged_overrides(vision, overrides, "vision_config")
        overrides.setdefault("image_grid_pinpoints", [[28, 56], [56, 28], [56, 56]])
        return transformers.LlavaNextConfig(text_config=text, vision_config=vision,
                                            image_token_index=ids["image_token_id"], **overrides)

    def __init__(
        self, tokenizer, config, image_processor=None, system_prompt: str | None = None, use_chat_template: bool = True,
        processor: ProcessorSettings | None = None,
    ) -> None:
        super().__init__(tokenizer, config, system_prompt, use_chat_template, processor)
        vision = config.vision_config
        self.tile, self.patch = side(vision.image_size), side(vision.patch_size)
        has_cls = vision.model_type in CLS_VISION_TYPES
        drops_first = config.vision_feature_select_strategy == "default"
        self.base_tokens = (self.tile // self.patch) ** 2 + int(has_cls) - int(drops_first)
        if self.base_tokens != (self.tile // self.patch) ** 2:
            raise ValueError(
                f"config.vision_feature_select_strategy: LLaVA-NeXT needs one feature per patch; with a "
                f"{vision.model_type} tower use {'default' if has_cls else 'full'}, received "
                f"{config.vision_feature_select_strategy!r}")
        self.pinpoints = [list(p) for p in config.image_grid_pinpoints]
        import transformers

        cls = getattr(transformers, "LlavaNextImageProcessorPil", None) or transformers.LlavaNextImageProcessor
        self.image_processor = self.build_image_processor(
            image_processor, cls, size={"shortest_edge": self.tile}, crop_size={"height": self.tile, "width": self.tile},
            image_grid_pinpoints=self.pinpoints)
        self._image_id = int(config.image_token_id)
        self._image_text = tokenizer.convert_ids_to_tokens(self._image_id)

    @property
    def image_token_ids(self) -> list[int]:
        return [self._image_id]

    @property
    def image_token_id(self) -> int:
        return self._image_id

    def process_images(self, images: list[Image.Image]) -> ProcessedImages:
        out = self.image_processor(images=images, return_tensors="pt")
        padded, sizes = out["pixel_values"], out["image_sizes"].long()  # [N, max tiles, 3, S, S], [N, 2]
        counts = [anyres_tokens(int(h), int(w), self.tile, self.patch, self.pinpoints, self.base_tokens)
                  for h, w in sizes.tolist()]
        tiles = [t for t, _ in counts]
        pixel_values = torch.cat([padded[i, :t] for i, t in enumerate(tiles)])  # [sum tiles, 3, S, S]
        return ProcessedImages(pixel_values, tiles, [n for _, n in counts], {"image_sizes": sizes})

    def image_text(self, num_tokens: int) -> str:
        return self._image_text * num_tokens
