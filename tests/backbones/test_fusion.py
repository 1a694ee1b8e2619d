"""CrossModalFusion: shapes, padding never matters, missing streams, bad input."""

from __future__ import annotations

import pytest
import torch

from prismrl.backbones.fusion import CrossModalFusion


def _fusion(**overrides) -> CrossModalFusion:
    torch.manual_seed(0)
    settings = dict(text_dim=12, vision_dim=20, hidden_dim=16, num_heads=4, num_layers=2, dropout=0.1) | overrides
    return CrossModalFusion(**settings).eval()


def _inputs(batch: int = 3, nt: int = 5, nv: int = 7):
    torch.manual_seed(1)
    text, vision = torch.randn(batch, nt, 12), torch.randn(batch, nv, 20)
    text_mask = torch.ones(batch, nt, dtype=torch.bool)
    text_mask[0, 3:] = False  # row 0 has 3 real text tokens
    text_mask[2, 1:] = False  # row 2 has 1
    vision_mask = torch.ones(batch, nv, dtype=torch.bool)
    vision_mask[1, 4:] = False
    return text, vision, text_mask, vision_mask


@pytest.mark.parametrize("num_layers", [0, 1, 2])
def test_output_shape(num_layers):
    fusion = _fusion(num_layers=num_layers)
    text, vision, text_mask, vision_mask = _inputs()
    assert fusion(text, vision, text_mask, vision_mask).shape == (3, 16)
    assert fusion(text, vision).shape == (3, 16)  # masks default to "every token is real"


def test_changing_padded_tokens_does_not_change_the_output():
    fusion = _fusion()
    text, vision, text_mask, vision_mask = _inputs()
    expected = fusion(text, vision, text_mask, vision_mask)
    text2 = torch.where(text_mask.unsqueeze(-1), text, torch.randn_like(text) * 100)
    vision2 = torch.where(vision_mask.unsqueeze(-1), vision, torch.randn_like(vision) * 100)
    torch.testing.assert_close(fusion(text2, vision2, text_mask, vision_mask), expected)
    text2[0, 0] += 1.0  # a real token does matter
    assert not torch.allclose(fusion(text2, vision2, text_mask, vision_mask)[0], expected[0])


def test_padded_batch_matches_each_example_run_alone():
    fusion = _fusion()
    text, vision, text_mask, vision_mask = _inputs()
    batched = fusion(text, vision, text_mask, vision_mask)
    for b in range(3):
        alone = fusion(text[b : b + 1, text_mask[b]], vision[b : b + 1, vision_mask[b]])
        torch.testing.assert_close(batched[b : b + 1], alone, rtol=1e-5, atol=1e-5)


def test_single_stream_ablation_pools_the_missing_stream_to_zero():
    fusion = _fusion()
    text, vision, text_mask, _ = _inputs()
    text_only = fusion(text, None, text_mask)
    assert text_only.shape == (3, 16) and torch.isfinite(text_only).all()
    assert fusion(None, vision).shape == (3, 16)
    # reference: the text stream alone through its blocks (no cross-attention), zeros for vision
    t = fusion.text_proj(text)
    for block in fusion.text_layers:
        t = t + block.mlp(block.norm_mlp(t))
    pooled = (fusion.text_norm(t) * text_mask.unsqueeze(-1)).sum(1) / text_mask.sum(1, keepdim=True)
    zeros = torch.zeros_like(pooled)
    expected = fusion.out_norm(fusion.out_mlp(torch.cat([pooled, zeros], -1)) + 0.5 * pooled)
    torch.testing.assert_close(text_only, expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_both_projections():
    fusion = _fusion().train()
    text, vision, text_mask, vision_mask = _inputs()
    fusion(text, vision, text_mask, vision_mask).pow(2).sum().backward()
    assert fusion.text_proj.weight.grad.abs().sum() > 0 and fusion.vision_proj.weight.grad.abs().sum() > 0


def test_bad_input_raises_clear_errors():
    fusion = _fusion()
    text, vision, text_mask, vision_mask = _inputs()
    with pytest.raises(ValueError, match="text_tokens: expected shape"):
        fusion(text[..., :5], vision)
    with pytest.raises(ValueError, match="vision_mask: expected shape"):
        fusion(text, vision, text_mask, vision_mask[:, :3])
    empty = text_mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match="text_mask: rows \\[1\\] have no real token"):
        fusion(text, vision, empty)
    with pytest.raises(ValueError, match="at least one stream"):
        fusion(None, None)
    with pytest.raises(ValueError, match="batch size"):
        fusion(text, vision[:2])
    with pytest.raises(ValueError, match="num_heads"):
        CrossModalFusion(12, 20, hidden_dim=10, num_heads=4)
