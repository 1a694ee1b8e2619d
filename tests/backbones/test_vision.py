import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from prismrl.backbones import HFVisionEncoder
from prismrl.backbones.vision import patchify

from .conftest import TINY_VISION, tiny_vision_config

VISION_TYPES = ["clip_vision_model", "siglip_vision_model", "siglip2_vision_model"]


@pytest.mark.parametrize("model_type", VISION_TYPES)
def test_tiny_vision_shapes(model_type):
    torch.manual_seed(0)
    enc = HFVisionEncoder(tiny_config=tiny_vision_config(model_type)).eval()
    assert enc.hidden_size == 32
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, 16, 32)  # (32 / 8)^2 patches, CLS dropped for CLIP
    assert out.mask is None
    assert out.pooled.shape == (2, 32)
    assert not torch.allclose(out.pooled[0], out.pooled[1])


def test_clip_tokens_and_pooled_come_from_the_model():
    torch.manual_seed(0)
    enc = HFVisionEncoder(tiny_config=tiny_vision_config("clip_vision_model")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = enc(x)
        raw = enc.model(pixel_values=x)
        normed = enc.model.post_layernorm(raw.last_hidden_state)
        torch.testing.assert_close(out.tokens, normed[:, 1:])
        torch.testing.assert_close(out.pooled, normed[:, 0])
        torch.testing.assert_close(out.pooled, raw.pooler_output)


def test_siglip_without_head_pools_by_mean():
    enc = HFVisionEncoder(tiny_config=tiny_vision_config("siglip_vision_model", vision_use_head=False)).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(out.pooled, out.tokens.mean(dim=1))


@pytest.mark.parametrize("model_type", ["clip_vision_model", "siglip_vision_model"])
def test_fixed_size_models_name_image_size(model_type):
    enc = HFVisionEncoder(tiny_config=tiny_vision_config(model_type))
    with pytest.raises(ValueError, match="image_size=32"):
        enc(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"pixel_values: expected shape \[B, 3, H, W\]"):
        enc(torch.randn(1, 1, 32, 32))


def test_patchify_matches_the_siglip2_processor_layout():
    from transformers.models.siglip2.image_processing_pil_siglip2 import (
        convert_image_to_patches,
    )

    x = torch.randn(2, 3, 16, 24)
    patches = patchify(x, 8)
    assert patches.shape == (2, 6, 8 * 8 * 3)
    for b in range(2):
        np.testing.assert_array_equal(patches[b].numpy(), convert_image_to_patches(x[b].numpy(), 8))
    # hand check: pixel (c=1, row=9, col=18) -> patch (1, 2) = index 1 * 3 + 2, offset ((9 % 8) * 8 + 18 % 8) * 3 + 1
    assert patches[0, 5, (1 * 8 + 2) * 3 + 1] == x[0, 1, 9, 18]


def test_siglip2_takes_any_size_divisible_by_patch_size():
    torch.manual_seed(0)
    enc = HFVisionEncoder(tiny_config=tiny_vision_config("siglip2_vision_model")).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 48, 64))
        assert out.tokens.shape == (2, 6 * 8, 32) and out.pooled.shape == (2, 32)
        x = torch.randn(1, 3, 32, 32)
        grid = torch.tensor([[4, 4]])
        ones = torch.ones(1, 16, dtype=torch.long)
        raw = enc.model(pixel_values=patchify(x, 8), pixel_attention_mask=ones, spatial_shapes=grid)
        torch.testing.assert_close(enc(x).tokens, raw.last_hidden_state)
    with pytest.raises(ValueError, match="patch_size=8"):
        enc(torch.randn(1, 3, 30, 32))


def test_vision_tower_loads_from_a_full_clip_checkpoint(tmp_path):
    torch.manual_seed(0)
    vision = {**TINY_VISION, "image_size": 32}
    full = CLIPModel(CLIPConfig(vision_config=vision, text_config=dict(TINY_VISION))).eval()
    full.save_pretrained(str(tmp_path))
    enc = HFVisionEncoder(str(tmp_path)).eval()
    assert enc.model.config.model_type == "clip_vision_model"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = full.vision_model(pixel_values=x)
        out = enc(x)
    torch.testing.assert_close(out.tokens, full.vision_model.post_layernorm(want.last_hidden_state)[:, 1:])
    torch.testing.assert_close(out.pooled, want.pooler_output)


def test_bad_model_sources():
    with pytest.raises(ValueError, match="tiny_config.model_type"):
        HFVisionEncoder(tiny_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="exactly one"):
        HFVisionEncoder()


@pytest.mark.parametrize(
    "model_type,extra", [("clip_vision_model", {}), ("siglip_vision_model", {"vision_use_head": False})]
)
def test_token_pooling_gives_every_parameter_a_gradient(model_type, extra):
    """A tower that pools tokens itself must reach every trainable weight (DDP without unused parameters)."""
    enc = HFVisionEncoder(tiny_config=tiny_vision_config(model_type, **extra))
    enc(torch.randn(2, 3, 32, 32)).tokens.pow(2).sum().backward()
    assert [n for n, p in enc.named_parameters() if p.grad is None] == []
