"""Shared fixtures: the shipped MiniLM (loaded once) and tiny transformer configs."""

from __future__ import annotations

import pytest
import torch

from prismrl.backbones import HFTextEncoder

TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY_VISION = {**TINY_TEXT, "patch_size": 8}


def tiny_text_config(model_type: str, **overrides) -> dict:
    return {"model_type": model_type, **TINY_TEXT, **overrides}


def tiny_vision_config(model_type: str, **overrides) -> dict:
    size = {"num_patches": 16} if model_type == "siglip2_vision_model" else {"image_size": 32}
    return {"model_type": model_type, **TINY_VISION, **size, **overrides}


@pytest.fixture(scope="session")
def minilm() -> HFTextEncoder:
    """The shipped all-MiniLM-L6-v2 in eval mode; tests must not modify it."""
    torch.manual_seed(0)
    return HFTextEncoder("shipped:all-minilm-l6-v2").eval()
