"""InternVL adapter (``InternVLForConditionalGeneration``, transformers' InternVL 2.5 / 3 port).

Each image is split into up to ``max_tiles`` square tiles of the tower's ``image_size`` S (plus a
thumbnail when it has several tiles; GotOcr2's dynamic tiling). ``pixel_values`` is
``[total tiles, 3, S, S]``; an image owns ``num_tiles`` rows. Each tile gives
``(S // patch)**2 * downsample_ratio**2`` tokens (pixel shuffle), written
``<img><IMG_CONTEXT>...</img>``. Tiles are normalized with ImageNet's mean / std (InternVL's, not CLIP's)
unless the model folder's processor or ``ProcessorSettings`` says otherwise.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from prismrl.backbones.tokenizers import tiny_decoder_kwargs
from prismrl.policy.adapters.base import ProcessedImages, ProcessorSettings, VLMAdapter
from prismrl.policy.adapters.llava import side
from prismrl.policy.adapters.tiny import add_special_tokens, merged_overrides

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # InternVL's normalization


class InternVLAdapter(VLMAdapter):
    """InternVL: tiled images, ``<IMG_CONTEXT>`` tokens, 1-D RoPE; see the module docstring."""

    model_types = ("internvl",)
    special_tokens = {"start_image_token_id": "<img>", "end_image_token_id": "</img>", "image_token_id": "<IMG_CONTEXT>"}
    image_settings = ("min_tiles", "max_tiles", "image_mean", "image_std")

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """InternVL: a 2-layer qwen2 of width 64 and a 1-layer vision tower at 56 px per tile, patch 14
        (16 patches, pixel shuffle 0.5 -> 4 tokens per tile)."""
        import transformers

        overrides = dict(overrides)
        ids = add_special_tokens(tokenizer, cls.special_tokens)
        text = merged_overrides({**tiny_decoder_kwargs(tokenizer), "model_type": "qwen2"}, overrides, "text_config")
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "image_size": 56, "patch_size": 14}
        vision = transformers.InternVLVisionConfig(**merged_overrides(vision, overrides, "vision_config"))
        return transformers.InternVLConfig(text_config=text, vision_config=vision,
                                           image_token_id=ids["image_token_id"], **overrides)

    def __init__(
        self,
        tokenizer,
        config,
        image_processor=None,
        max_tiles: int | None = None,
        start_image_token: str = "<img>",
        end_image_token: str = "</img>",
        system_prompt: str | None = None,
        use_chat_template: bool = True,
        processor: ProcessorSettings | None = None,
    ) -> None:
        """``max_tiles`` given here applies where ``processor`` leaves it None; without either, the folder's saved
        setting or 12. The default image processor normalizes with ImageNet's mean / std, as InternVL does."""
        processor = (processor or ProcessorSettings()).with_defaults(max_tiles=max_tiles)
        super().__init__(tokenizer, config, system_prompt, use_chat_template, processor)
        vision = config.vision_config
        size, patch = side(vision.image_size), side(vision.patch_size)
        self.tokens_per_tile = int(round((size // patch) ** 2 * config.downsample_ratio**2))
        import transformers

        cls = getattr(transformers, "GotOcr2ImageProcessorPil", None) or transformers.GotOcr2ImageProcessor
        self.image_processor = self.build_image_processor(
            image_processor, cls, crop_to_patches=True, min_patches=1, max_patches=12, size={"height": size, "width": size},
            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
        self._image_id = int(config.image_token_id)
        self._context = tokenizer.convert_ids_to_tokens(self._image_id)
        vocab = tokenizer.get_vocab()
        for name, token in (("start_image_token", start_image_token), ("end_image_token", end_image_token)):
            if token not in vocab:
                raise ValueError(f"{name}: {token!r} is not a token of the tokenizer (add it as a special token)")
        self._start, self._end = start_image_token, end_image_token
        self._frame_ids = [vocab[start_image_token], vocab[end_image_token]]

    def image_kwargs(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Tiles are the GotOcr2 image processor's ``min_patches`` / ``max_patches``."""
        names = {"min_tiles": "min_patches", "max_tiles": "max_patches"}
        return {names.get(k, k): v for k, v in settings.items()}

    @property
    def image_token_ids(self) -> list[int]:
        return [self._image_id, *self._frame_ids]

    @property
    def image_token_id(self) -> int:
        return self._image_id

    def process_images(self, images: list[Image.Image]) -> ProcessedImages:
        out = self.image_processor(images=images, return_tensors="pt")
        tiles = [int(t) for t in out["num_patches"]]
        return ProcessedImages(out["pixel_values"], tiles, [t * self.tokens_per_tile for t in tiles], {})

    def image_text(self, num_tokens: int) -> str:
        return self._start + self._context * num_tokens + self._end
