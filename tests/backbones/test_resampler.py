import math

import pytest
import torch

from prismrl.backbones.resampler import PerceiverAttention, PerceiverResampler


def test_output_shape_and_input_projection():
    resampler = PerceiverResampler(dim=16, input_dim=24, num_latents=5, depth=2, num_heads=2, head_dim=8)
    out = resampler(torch.randn(3, 11, 24))
    assert out.shape == (3, 5, 16) and torch.isfinite(out).all()


def test_padded_tokens_do_not_change_the_output():
    torch.manual_seed(0)
    resampler = PerceiverResampler(dim=16, num_latents=4, depth=2, num_heads=2, head_dim=8).eval()
    tokens = torch.randn(2, 7, 16)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    out = resampler(tokens, mask)
    changed = tokens.clone()
    changed[1, 4:] = 100.0  # garbage in the padded positions of sample 1
    out_changed = resampler(changed, mask)
    torch.testing.assert_close(out_changed[1], out[1])
    torch.testing.assert_close(out_changed[0], out[0])
    # the same sample without its padding gives the same latents
    alone = resampler(tokens[1:2, :4])
    torch.testing.assert_close(alone[0], out[1], atol=1e-5, rtol=1e-5)


def test_all_padding_row_is_finite():
    resampler = PerceiverResampler(dim=8, num_latents=2, depth=1, num_heads=1, head_dim=8)
    out = resampler(torch.randn(2, 3, 8), torch.tensor([[True, True, False], [False, False, False]]))
    assert torch.isfinite(out).all()


def test_attention_matches_naive_reference():
    torch.manual_seed(1)
    attention = PerceiverAttention(dim=6, num_heads=2, head_dim=3).eval()
    tokens, latents = torch.randn(1, 4, 6), torch.randn(1, 2, 6)
    mask = torch.tensor([[True, False, True, True]])
    out = attention(tokens, latents, mask)
    t, l = attention.norm_tokens(tokens)[0], attention.norm_latents(latents)[0]
    kv = torch.cat([t[mask[0]], l])  # masked token removed entirely
    q = attention.to_q(l)
    k, v = attention.to_kv(kv).chunk(2, dim=-1)
    heads = []
    for h in range(2):
        sl = slice(3 * h, 3 * h + 3)
        weights = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(3), dim=-1)
        heads.append(weights @ v[:, sl])
    expected = attention.to_out(torch.cat(heads, dim=-1))
    torch.testing.assert_close(out[0], expected, atol=1e-6, rtol=1e-5)


def test_bad_inputs_are_named():
    resampler = PerceiverResampler(dim=8, num_latents=2, num_heads=1, head_dim=8, max_tokens=4)
    with pytest.raises(ValueError, match="tokens: expected shape"):
        resampler(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="mask: expected a bool"):
        resampler(torch.randn(2, 3, 8), torch.ones(2, 3))
    with pytest.raises(ValueError, match="max_tokens=4"):
        resampler(torch.randn(1, 5, 8))
    with pytest.raises(ValueError, match="num_latents"):
        PerceiverResampler(dim=8, num_latents=0)
