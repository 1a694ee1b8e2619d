"""LLaVA adapter (``LlavaForConditionalGeneration``).

Every image is resized and center-cropped to the vision tower's ``image_size`` (``pixel_values``
``[N, 3, S, S]``, one row per image) and written as ``<image>`` repeated once per visual feature:
``(S // patch)**2`` patches, plus 1 for a CLS token (CLIP towers), minus 1 when
``vision_feature_select_strategy == "default"`` drops the first feature. LLaVA-1.5 (CLIP 336 px,
patch 14): 576 tokens.
"""

from __future__ import annotations

from typing import Any, ClassVar

from PIL import Image

from prismrl.backbones.tokenizers import tiny_decoder_kwargs
from prismrl.policy.adapters.base import ProcessedImages, ProcessorSettings
from prismrl.policy.adapters.single_image_token import SingleImageTokenAdapter
from prismrl.policy.adapters.tiny import add_special_tokens, merged_overrides

CLS_VISION_TYPES = frozenset({"clip_vision_model"})


def side(value) -> int:
    """An int size, or the first of a (height, width) pair (square towers)."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)


class LlavaAdapter(SingleImageTokenAdapter):
    """LLaVA: fixed-size images, ``<image>`` tokens, 1-D RoPE; see the module docstring."""

    model_types = ("llava",)
    special_tokens = {"image_token_id": "<image>"}
    image_settings = ("image_mean", "image_std")
    config_class: ClassVar[str] = "LlavaConfig"  # transformers names of the family's config and image processor
    image_processor_class: ClassVar[str] = "LlavaImageProcessor"  # (its "...Pil" variant when transformers has one)

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """LLaVA: a 2-layer llama of width 64 and a 2-layer CLIP tower at 28 px, patch 14 (4 patches)."""
        import transformers

        overrides = dict(overrides)
        ids = add_special_tokens(tokenizer, cls.special_tokens)
        text = merged_overrides({**tiny_decoder_kwargs(tokenizer), "model_type": "llama"}, overrides, "text_config")
        vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
        vision = merged_overrides(vision, overrides, "vision_config")
        return getattr(transformers, cls.config_class)(text_config=text, vision_config=vision,
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
        self.tokens_per_image = (self.tile // self.patch) ** 2 + int(has_cls) - int(drops_first)  # of one tile
        import transformers

        name = self.image_processor_class
        cls = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)
        self.image_processor = self.build_image_processor(image_processor, cls, **self.image_processor_kwargs())
        self.set_image_token(config.image_token_id)

    def image_processor_kwargs(self) -> dict[str, Any]:
        """The default image processor's kwargs: resize the shortest edge to the tile, center-crop a square tile."""
        return {"size": {"shortest_edge": self.tile}, "crop_size": {"height": self.tile, "width": self.tile}}

    def process_images(self, images: list[Image.Image]) -> ProcessedImages:
        pixel_values = self.image_processor(images=images, return_tensors="pt")["pixel_values"]  # [N, 3, S, S]
        n = len(images)
        return ProcessedImages(pixel_values, [1] * n, [self.tokens_per_image] * n, {})
