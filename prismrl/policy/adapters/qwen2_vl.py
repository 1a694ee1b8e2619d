"""Qwen2-VL / Qwen2.5-VL adapters.

An image of patch grid (t, h, w) becomes ``t * h * w`` flattened patches (rows of ``pixel_values``,
``[sum patches, C * temporal_patch * patch**2]``) and ``t * h * w / merge_size**2`` ``<|image_pad|>``
tokens, written ``<|vision_start|><|image_pad|>...<|vision_end|>``. ``image_grid_thw`` [N, 3] has one
row per image. ``mm_token_type_ids`` (0 text, 1 image, 2 video) is always built: Qwen2-VL's forward
needs it for M-RoPE whenever images are passed.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from torch import Tensor

from prismrl.backbones.tokenizers import tiny_decoder_kwargs
from prismrl.policy.adapters.base import (
    ProcessedImages,
    ProcessorSettings,
    RopeIndexFn,
    VLMAdapter,
)
from prismrl.policy.adapters.tiny import add_special_tokens, merged_overrides
from prismrl.policy.multimodal import MultimodalBatch

QWEN_SPECIAL_TOKENS = {
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
}


def _qwen_image_processor(config, min_pixels: int, max_pixels: int, **settings: Any):
    import transformers

    cls = getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor
    vision = config.vision_config
    return cls(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        **settings,
    )


def tiny_qwen_config(config_cls, vision: dict[str, Any], width_key: str, tokenizer, overrides: dict[str, Any]):
    """A tiny Qwen-VL config: 2 text layers of width 64 whose M-RoPE sections [2, 3, 3] sum to head_dim / 2 = 8;
    the vision tower ``vision`` (patch 14, 2x2 merge, 2 frames per patch) whose ``width_key`` is the text width."""
    ids = add_special_tokens(tokenizer, QWEN_SPECIAL_TOKENS)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = merged_overrides({**tiny_decoder_kwargs(tokenizer), "rope_parameters": rope}, overrides, "text_config")
    vision = {**vision, width_key: text["hidden_size"], "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    vision = merged_overrides(vision, overrides, "vision_config")
    return config_cls(text_config=text, vision_config=vision, **ids, **overrides)


def find_rope_index(model):
    """The bound ``get_rope_index`` of ``model`` or of its first submodule that has one (PEFT-safe)."""
    for module in model.modules():
        if callable(getattr(module, "get_rope_index", None)):
            return module.get_rope_index
    raise ValueError(f"model: {type(model).__name__} has no submodule with a get_rope_index method (M-RoPE)")


class Qwen2VLAdapter(VLMAdapter):
    """Qwen2-VL: dynamic-resolution images, M-RoPE positions; see the module docstring."""

    model_types = ("qwen2_vl",)
    token_kwarg_keys = ("mm_token_type_ids",)
    special_tokens = QWEN_SPECIAL_TOKENS
    image_settings = ("min_pixels", "max_pixels", "image_mean", "image_std")

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """Qwen2-VL with a 1-block vision tower of width 32 (``tiny_qwen_config``)."""
        import transformers

        vision = {"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2}
        return tiny_qwen_config(transformers.Qwen2VLConfig, vision, "hidden_size", tokenizer, dict(overrides))

    def __init__(
        self,
        tokenizer,
        config,
        image_processor=None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        system_prompt: str | None = None,
        use_chat_template: bool = True,
        processor: ProcessorSettings | None = None,
    ) -> None:
        """``min_pixels`` / ``max_pixels`` given here apply where ``processor`` leaves them None; without either,
        the folder's saved settings or 56*56 / 28*28*1280."""
        processor = (processor or ProcessorSettings()).with_defaults(min_pixels=min_pixels, max_pixels=max_pixels)
        super().__init__(tokenizer, config, system_prompt, use_chat_template, processor)
        self.merge_size = int(config.vision_config.spatial_merge_size)
        self.image_processor = self.build_image_processor(
            image_processor, lambda **kw: _qwen_image_processor(config, **kw), min_pixels=56 * 56,
            max_pixels=28 * 28 * 1280)
        self._ids = {
            "start": int(config.vision_start_token_id),
            "end": int(config.vision_end_token_id),
            "image": int(config.image_token_id),
            "video": int(config.video_token_id),
        }
        self._text = {name: tokenizer.convert_ids_to_tokens(i) for name, i in self._ids.items()}

    @property
    def image_token_ids(self) -> list[int]:
        return list(self._ids.values())

    @property
    def image_token_id(self) -> int:
        return self._ids["image"]

    def process_images(self, images: list[Image.Image]) -> ProcessedImages:
        out = self.image_processor(images=images, return_tensors="pt")
        grid = out["image_grid_thw"].long()  # [N, 3]
        patches = grid.prod(-1)  # [N]
        return ProcessedImages(
            pixel_values=out["pixel_values"],  # [sum patches, D]
            pixel_rows_per_image=patches.tolist(),
            tokens_per_image=(patches // self.merge_size**2).tolist(),
            per_image_kwargs={"image_grid_thw": grid},
        )

    def image_text(self, num_tokens: int) -> str:
        return self._text["start"] + self._text["image"] * num_tokens + self._text["end"]

    def token_kwargs(self, input_ids: Tensor) -> dict[str, Tensor]:
        mm = (input_ids == self._ids["image"]).int() + 2 * (input_ids == self._ids["video"]).int()  # [B, T]
        return {"mm_token_type_ids": mm}

    def rope_index_fn(self, model) -> RopeIndexFn:
        """batch -> [3, B, T] positions from the model's own ``get_rope_index`` (padding positions 0)."""
        get_rope_index = find_rope_index(model)

        def rope_index(batch: MultimodalBatch) -> Tensor:
            extra = batch.extra_model_kwargs
            mm = extra.get("mm_token_type_ids")
            if mm is None:
                mm = self.token_kwargs(batch.input_ids)["mm_token_type_ids"]
            position_ids, _ = get_rope_index(
                batch.input_ids,
                mm_token_type_ids=mm,
                image_grid_thw=extra.get("image_grid_thw"),
                attention_mask=batch.attention_mask,
            )
            return position_ids

        return rope_index


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: same tokens, image processor and M-RoPE layout as Qwen2-VL for images."""

    model_types = ("qwen2_5_vl",)

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """Qwen2.5-VL with a 2-block windowed vision tower of width 32, the second block full attention."""
        import transformers

        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "window_size": 56,
                  "fullatt_block_indexes": [1]}
        return tiny_qwen_config(transformers.Qwen2_5_VLConfig, vision, "out_hidden_size", tokenizer, dict(overrides))
