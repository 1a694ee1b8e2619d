"""VisualPrefix: shapes, the aligned-embedding token, freezing, and loading an alignment checkpoint's image tower."""

from __future__ import annotations

import pytest
import torch

from prismrl.backbones.tower import EmbeddingTower
from prismrl.backbones.vision import HFVisionEncoder
from prismrl.backbones.visual_prefix import VisualPrefix, load_aligned_vision

TINY_CLIP = {"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8, "hidden_size": 32,
             "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def _tower(embed_dim: int = 24) -> EmbeddingTower:
    return EmbeddingTower(HFVisionEncoder(tiny_config=TINY_CLIP), embed_dim=embed_dim, attention_heads=2)


def test_prefix_shapes_and_the_aligned_embedding_token():
    torch.manual_seed(0)
    prefix = VisualPrefix(_tower(), out_dim=40, num_latents=3, resampler_dim=16, depth=1, num_heads=2, head_dim=8,
                          use_aligned_embedding=True, freeze=False)
    pixels = torch.randn(2, 3, 32, 32)
    tokens, mask = prefix.vision_tokens(pixels)
    assert tokens.shape == (2, 16 + 1, 32) and mask is None  # 4x4 patches + the embedding token
    embedding, encoded = prefix.vision_encoder.forward_with_tokens(pixels)
    torch.testing.assert_close(tokens[:, -1], prefix.embedding_token(embedding))
    torch.testing.assert_close(tokens[:, :-1], encoded.tokens)
    assert prefix(pixels).shape == (2, 3, 40)
    with pytest.raises(ValueError, match="use_aligned_embedding: needs an EmbeddingTower"):
        VisualPrefix(HFVisionEncoder(tiny_config=TINY_CLIP), out_dim=8, use_aligned_embedding=True)


def test_freeze_keeps_the_encoder_fixed_and_in_eval_mode():
    prefix = VisualPrefix(HFVisionEncoder(tiny_config=TINY_CLIP), out_dim=8, num_latents=2, num_heads=2, head_dim=8)
    prefix.train()
    assert not prefix.vision_encoder.training and prefix.resampler.training
    out = prefix(torch.randn(1, 3, 32, 32))
    out.sum().backward()
    assert all(p.grad is None for p in prefix.vision_encoder.parameters())
    assert prefix.resampler.latents.grad is not None and prefix.resampler.latents.grad.abs().sum() > 0


def test_load_aligned_vision_into_a_tower_or_its_bare_encoder(tmp_path):
    torch.manual_seed(1)
    aligned = _tower()
    path = tmp_path / "alignment.ckpt"
    weights = {f"image_tower.{k}": v for k, v in aligned.state_dict().items()}
    weights["text_tower.projection.net.weight"] = torch.zeros(24, 8)
    torch.save({"state_dict": weights}, path)
    tower, encoder = _tower(), HFVisionEncoder(tiny_config=TINY_CLIP)
    load_aligned_vision(tower, path)
    load_aligned_vision(encoder, path)
    for key, value in aligned.state_dict().items():
        torch.testing.assert_close(tower.state_dict()[key], value, rtol=0, atol=0)
    for key, value in aligned.encoder.state_dict().items():
        torch.testing.assert_close(encoder.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"projection.net.weight: \(24, 32\) in the checkpoint, \(16, 32\) in vision_encoder"):
        load_aligned_vision(_tower(embed_dim=16), path)
    torch.save({"state_dict": {"text_tower.x": torch.zeros(1)}}, tmp_path / "text_only.ckpt")
    with pytest.raises(ValueError, match="holds no 'image_tower.\\*' weights"):
        load_aligned_vision(tower, tmp_path / "text_only.ckpt")
