"""Adapter of prismrl's own visual-prefix LM (``prismrl.policy.visual_prefix_policy``, from a VL-SFT checkpoint).

A prompt is written as the VL-SFT stage wrote it: each image's ``num_latents`` prefix rows first (here as that many
reserved image tokens, replaced by the prefix in the policy's ``forward``), then the decoder's
``prompt_template.format(question=...)`` with the prompt's text (its "<image>" placeholders removed) as the
question. Images go through the VL-SFT run's preprocessing (``ImageTransform``: square resize to ``image_size``,
mean / std normalization), one ``[3, S, S]`` row per image. The template is the model's chat format, so no chat
template is applied and the tokenizer adds no special tokens (as the VL-SFT stage's ``text_ids``).
"""

from __future__ import annotations

import torch
from PIL import Image

from prismrl.data.images import ImageTransform
from prismrl.data.records import IMAGE_PLACEHOLDER
from prismrl.policy.adapters.base import ProcessedImages
from prismrl.policy.adapters.single_image_token import SingleImageTokenAdapter


class VisualPrefixAdapter(SingleImageTokenAdapter):
    """Batches for a ``VisualPrefixPolicy``; see the module docstring."""

    model_types = ("prismrl_visual_prefix",)

    def __init__(self, tokenizer, config, system_prompt: str | None = None, use_chat_template: bool = True,
                 processor=None) -> None:
        if system_prompt is not None:
            raise ValueError(f"system_prompt: a VL-SFT policy answers in its prompt_template "
                             f"({config.prompt_template!r}) only, received {system_prompt!r}")
        super().__init__(tokenizer, config, None, False, processor)  # no image settings: the VL-SFT run's preprocessing
        # render_prompt writes the model's own format; True here makes build_prompts add no special tokens
        self.use_chat_template = True
        self.transform = ImageTransform(config.image_size, config.image_mean, config.image_std)
        self.tokens_per_image = int(config.num_latents)
        self.set_image_token(config.image_token_id, config.image_token)

    def render_prompt(self, prompt: str) -> str:
        """One placeholder per image, then the VL-SFT prompt template around the prompt's text."""
        question = prompt.replace(IMAGE_PLACEHOLDER, "").strip()
        return IMAGE_PLACEHOLDER * prompt.count(IMAGE_PLACEHOLDER) + self.config.prompt_template.format(question=question)

    def process_images(self, images: list[Image.Image]) -> ProcessedImages:
        pixel_values = torch.stack([self.transform(image, f"images[{i}]") for i, image in enumerate(images)])
        n = len(images)
        return ProcessedImages(pixel_values, [1] * n, [self.tokens_per_image] * n, {})  # [N, 3, S, S]
