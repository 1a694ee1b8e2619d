"""The base of families that write an image as one vision token repeated once per image feature (LLaVA-style)."""

from __future__ import annotations

from prismrl.policy.adapters.base import VLMAdapter

__all__ = ["SingleImageTokenAdapter"]


class SingleImageTokenAdapter(VLMAdapter):
    """A family that writes an image as one vision token repeated once per image feature (LLaVA-style).

    ``__init__`` calls ``set_image_token``; ``image_token_ids`` = [id], ``image_token_id`` = id and
    ``image_text(n)`` = the token's text n times."""

    def set_image_token(self, token_id: int, text: str | None = None) -> None:
        """Use ``token_id``, written as ``text`` (default: the tokenizer's token of that id), for every image."""
        self._image_id = int(token_id)
        self._image_text = self.tokenizer.convert_ids_to_tokens(self._image_id) if text is None else str(text)

    @property
    def image_token_ids(self) -> list[int]:
        return [self._image_id]

    @property
    def image_token_id(self) -> int:
        return self._image_id

    def image_text(self, num_tokens: int) -> str:
        return self._image_text * num_tokens
