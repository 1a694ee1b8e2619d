"""Pixtral adapter (``LlavaForConditionalGeneration`` with a ``pixtral`` vision tower, e.g. Pixtral-12B).

transformers stores Pixtral as ``model_type: llava`` whose ``vision_config.model_type`` is ``pixtral``; the
registry sends such configs here rather than to ``LlavaAdapter``.

Each image keeps its aspect ratio: it is scaled down (never up) to fit ``longest_edge`` (the tower's
``image_size`` unless the processor says otherwise), and each side rounded up to a multiple of the patch p,
giving (h, w) = (rows * p, cols * p). ``pixel_values`` is ``[N, 3, H_max, W_max]`` (one row per image, zero-padded
to the largest image of the batch) and ``image_sizes`` ``[N, 2]`` = (h, w); the tower reads only the top-left
(h, w) of each row. An image is written as ``rows`` lines of ``cols`` ``[IMG]`` tokens, each line ended by
``[IMG_BREAK]`` except the last, ended by ``[IMG_END]`` (as ``PixtralProcessor`` writes it): rows * cols image
features, rows * (cols + 1) tokens.
"""

from __future__ import annotations

from typing import Any, Self

from PIL import Image

from prismrl.backbones.tokenizers import tiny_decoder_kwargs
from prismrl.policy.adapters.base import ProcessedImages, ProcessorSettings, VLMAdapter
from prismrl.policy.adapters.llava import side
from prismrl.policy.adapters.tiny import add_special_tokens, merged_overrides


class ImageGrid(int):
    """The ``[IMG]`` count rows * cols of one image, carrying its patch grid for ``PixtralAdapter.image_text``."""

    rows: int
    cols: int

    def __new__(cls, rows: int, cols: int) -> Self:
        grid = super().__new__(cls, rows * cols)
        grid.rows, grid.cols = rows, cols
        return grid


def is_pixtral(config) -> bool:
    """True for a LLaVA config whose vision tower is Pixtral's."""
    vision = getattr(config, "vision_config", None)
    return getattr(config, "model_type", None) == "llava" and getattr(vision, "model_type", None) == "pixtral"


class PixtralAdapter(VLMAdapter):
    """Pixtral: native-resolution images, ``[IMG]`` / ``[IMG_BREAK]`` / ``[IMG_END]``, 1-D RoPE in the text model."""

    model_types = ()  # reached through is_pixtral (its model_type is "llava")
    special_tokens = {"image_token_id": "[IMG]", "image_break_token_id": "[IMG_BREAK]",
                      "image_end_token_id": "[IMG_END]"}
    image_settings = ("image_mean", "image_std")

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """Pixtral: a 2-layer mistral of width 64 and a 2-layer Pixtral tower of width 32, patch 14, images up to
        56 px (at most 4x4 patches); all features kept (``vision_feature_select_strategy: full``, last layer)."""
        import transformers

        overrides = dict(overrides)
        ids = add_special_tokens(tokenizer, cls.special_tokens)
        text = merged_overrides({**tiny_decoder_kwargs(tokenizer), "model_type": "mistral"}, overrides, "text_config")
        vision = {"model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "image_size": 56, "patch_size": 14}
        vision = merged_overrides(vision, overrides, "vision_config")
        overrides = {"vision_feature_select_strategy": "full", "vision_feature_layer": -1,
                     "projector_hidden_act": "gelu", **overrides}
        return transformers.LlavaConfig(text_config=text, vision_config=vision, image_token_index=ids["image_token_id"],
                                        **overrides)

    def __init__(
        self,
        tokenizer,
        config,
        image_processor=None,
        image_break_token: str = "[IMG_BREAK]",
        image_end_token: str = "[IMG_END]",
        system_prompt: str | None = None,
        use_chat_template: bool = True,
        processor: ProcessorSettings | None = None,
    ) -> None:
        if not is_pixtral(config):
            raise ValueError(f"config: expected a llava config with a pixtral vision tower, received model_type "
                             f"{config.model_type!r} / {getattr(getattr(config, 'vision_config', None), 'model_type', None)!r}")
        super().__init__(tokenizer, config, system_prompt, use_chat_template, processor)
        vision = config.vision_config
        self.patch = side(vision.patch_size)
        import transformers

        cls = getattr(transformers, "PixtralImageProcessorPil", None) or transformers.PixtralImageProcessor
        self.image_processor = self.build_image_processor(
            image_processor, cls, size={"longest_edge": side(vision.image_size)},
            patch_size={"height": self.patch, "width": self.patch})
        self._image_id = int(config.image_token_id)
        vocab = tokenizer.get_vocab()
        for name, token in (("image_break_token", image_break_token), ("image_end_token", image_end_token)):
            if token not in vocab:
                raise ValueError(f"{name}: {token!r} is not a token of the tokenizer (add it as a special token)")
        self._text = {"image": tokenizer.convert_ids_to_tokens(self._image_id), "break": image_break_token,
                      "end": image_end_token}
        self._frame_ids = [vocab[image_break_token], vocab[image_end_token]]

    @property
    def image_token_ids(self) -> list[int]:
        return [self._image_id, *self._frame_ids]

    @property
    def image_token_id(self) -> int:
        return self._image_id

    def process_images(self, images: list[Image.Image]) -> ProcessedImages:
        out = self.image_processor(images=images, return_tensors="pt")
        sizes = out["image_sizes"].long()  # [N, 2] resized (h, w), multiples of the patch
        grids = [ImageGrid(h // self.patch, w // self.patch) for h, w in sizes.tolist()]
        return ProcessedImages(out["pixel_values"], [1] * len(images), grids, {"image_sizes": sizes})

    def image_text(self, num_tokens: int) -> str:
        """``num_tokens`` is the ImageGrid of one image from ``process_images``."""
        if not isinstance(num_tokens, ImageGrid):
            raise TypeError(f"num_tokens: PixtralAdapter needs the ImageGrid from process_images, received "
                            f"{type(num_tokens).__name__}")
        line = self._text["image"] * num_tokens.cols
        return (line + self._text["break"]) * (num_tokens.rows - 1) + line + self._text["end"]
