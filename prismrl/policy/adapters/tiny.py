"""Pieces of the per-family tiny configs (``VLMAdapter.tiny_config``): special tokens and override merging.

No VLM tokenizer is available offline, so a family's tiny config adds the family's vision special tokens to
the shipped SmolLM2 tokenizer and points the config's special-token ids at them.
"""

from __future__ import annotations

from typing import Any


def add_special_tokens(tokenizer, tokens: dict[str, str]) -> dict[str, int]:
    """Add ``tokens`` ({config field: special token}) to ``tokenizer`` (in place, idempotent).

    Returns {config field: token id}, e.g. ``{"image_token_id": 49153, ...}`` for the tiny config.
    """
    missing = [t for t in tokens.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return {field: tokenizer.convert_tokens_to_ids(token) for field, token in tokens.items()}


def merged_overrides(defaults: dict[str, Any], overrides: dict[str, Any], name: str) -> dict[str, Any]:
    """``{**defaults, **overrides.pop(name)}``: the sub-config ``name`` (e.g. "vision_config") taken out of ``overrides``."""
    extra = overrides.pop(name, None) or {}
    if not isinstance(extra, dict):
        raise TypeError(f"{name}: expected a dict of overrides, received {type(extra).__name__}")
    return {**defaults, **extra}
