"""Text-only causal LM adapter: chat template, no images, 1-D positions."""

from __future__ import annotations

from typing import Any

from PIL import Image

from prismrl.backbones.tokenizers import tiny_llama_config
from prismrl.policy.adapters.base import ProcessedImages, VLMAdapter


class CausalLMAdapter(VLMAdapter):
    """Any ``AutoModelForCausalLM`` family; prompts are used verbatim ("<image>" is plain text)."""

    supports_images = False

    @classmethod
    def tiny_config(cls, tokenizer, **overrides: Any):
        """A 2-layer llama of width 64 (``prismrl.backbones.tokenizers.tiny_llama_config``)."""
        return tiny_llama_config(tokenizer, **overrides)

    def process_images(self, images: list[Image.Image]) -> ProcessedImages:
        raise ValueError(f"images: {type(self).__name__} is text-only, received {len(images)} image(s)")

    def image_text(self, num_tokens: int) -> str:
        raise ValueError(f"images: {type(self).__name__} is text-only and writes no image tokens")


class ResponsePrefixAdapter(CausalLMAdapter):
    """A text causal-LM adapter whose prompts end with the assistant turn prefilled with ``response_prefix``
    (after the chat template's generation prompt, or on a new line without a chat template)."""

    def __init__(self, tokenizer, config, response_prefix: str = "", **kwargs: Any) -> None:
        super().__init__(tokenizer, config, **kwargs)
        self.response_prefix = response_prefix

    def render_prompt(self, prompt: str) -> str:
        text = super().render_prompt(prompt)
        if not self.response_prefix:
            return text
        return text + self.response_prefix if self.use_chat_template else f"{text}\n{self.response_prefix}"
