"""Text-only causal LM adapter: chat template, no images, 1-D positions."""

from __future__ import annotations

from PIL import Image

from prismrl.data.adapters.base import ProcessedImages, VLMAdapter


class CausalLMAdapter(VLMAdapter):
    """Any ``AutoModelForCausalLM`` family; prompts are used verbatim ("<image>" is plain text)."""

    supports_images = False

    def process_images(self, images: list[Image.Image]) -> ProcessedImages:
        raise ValueError(f"images: {type(self).__name__} is text-only, got {len(images)} image(s)")

    def image_text(self, num_tokens: int) -> str:
        raise ValueError(f"images: {type(self).__name__} is text-only and writes no image tokens")
