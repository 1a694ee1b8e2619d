import math

import pytest
import torch
import torch.nn.functional as F

from prismrl.backbones import AttentionPool, masked_mean


def test_masked_mean_hand_computed():
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    expected = torch.tensor([[2.0, 3.0], [7.0, 8.0]])
    torch.testing.assert_close(masked_mean(tokens, mask), expected)
    torch.testing.assert_close(masked_mean(tokens, None), tokens.mean(dim=1))
    torch.testing.assert_close(masked_mean(tokens, mask.long()), expected)  # 0/1 masks work too


def test_masked_mean_errors():
    tokens = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"rows \[1\] have no real token"):
        masked_mean(tokens, torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="mask: expected shape"):
        masked_mean(tokens, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"tokens: expected shape \[B, N, H\]"):
        masked_mean(torch.randn(2, 3), None)


def naive_attention_pool(pool: AttentionPool, tokens, mask):
    """Loop-based reference: per example, per query, per head softmax attention over real tokens."""
    dim, heads = pool.dim, pool.num_heads
    head_dim = dim // heads
    w_q, w_k, w_v = pool.attn.in_proj_weight.split(dim)
    b_q, b_k, b_v = pool.attn.in_proj_bias.split(dim)
    queries = pool.queries
    if pool.use_layernorm:
        queries = F.layer_norm(queries, (dim,), pool.ln_q.weight, pool.ln_q.bias, pool.ln_q.eps)
        tokens = F.layer_norm(tokens, (dim,), pool.ln_kv.weight, pool.ln_kv.bias, pool.ln_kv.eps)
    outputs = []
    for b in range(tokens.shape[0]):
        real = [n for n in range(tokens.shape[1]) if mask is None or mask[b, n]]
        rows = []
        for q in queries:
            head_outputs = []
            for h in range(heads):
                sl = slice(h * head_dim, (h + 1) * head_dim)
                qh = (w_q @ q + b_q)[sl]
                scores = [float((w_k @ tokens[b, n] + b_k)[sl] @ qh) / math.sqrt(head_dim) for n in real]
                weights = torch.softmax(torch.tensor(scores), dim=0)
                head_outputs.append(sum(w * (w_v @ tokens[b, n] + b_v)[sl] for w, n in zip(weights, real)))
            attended = torch.cat(head_outputs)
            rows.append(pool.attn.out_proj.weight @ attended + pool.attn.out_proj.bias)
        outputs.append(torch.stack(rows))
    out = torch.stack(outputs)
    if not isinstance(pool.proj, torch.nn.Identity):
        out = pool.proj(out)
    return out


@pytest.mark.parametrize(
    "num_heads,num_queries,use_layernorm,out_dim", [(1, 1, False, None), (1, 1, True, None), (2, 3, True, 5)]
)
def test_attention_pool_matches_naive_reference(num_heads, num_queries, use_layernorm, out_dim):
    torch.manual_seed(0)
    pool = AttentionPool(8, num_queries=num_queries, num_heads=num_heads, out_dim=out_dim, use_layernorm=use_layernorm)
    with torch.no_grad():  # non-trivial LayerNorm affine params so the reference must apply them
        for ln in (pool.ln_q, pool.ln_kv):
            if use_layernorm:
                ln.weight.normal_()
                ln.bias.normal_()
    tokens = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        got = pool(tokens, mask)
        want = naive_attention_pool(pool, tokens, mask)
        assert got.shape == (3, num_queries, out_dim or 8)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pool(tokens, None), naive_attention_pool(pool, tokens, None), atol=1e-5, rtol=1e-5)


def test_masked_tokens_do_not_change_the_output():
    torch.manual_seed(0)
    pool = AttentionPool(16, num_queries=2, num_heads=4).eval()
    tokens = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 1]], dtype=torch.bool)
    changed = tokens.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 16) * 100
    torch.testing.assert_close(pool(tokens, mask), pool(changed, mask))
    assert not torch.allclose(pool(tokens, None), pool(changed, None))  # without the mask they matter


def test_attention_pool_errors_and_gradients():
    with pytest.raises(ValueError, match="num_heads: must divide dim=10"):
        AttentionPool(10, num_heads=4)
    pool = AttentionPool(8, num_heads=2)
    with pytest.raises(ValueError, match=r"rows \[0\] have no real token"):
        pool(torch.randn(2, 3, 8), torch.tensor([[False, False, False], [True, False, False]]))
    with pytest.raises(ValueError, match="dim=8"):
        pool(torch.randn(2, 3, 6))
    pool(torch.randn(2, 3, 8)).sum().backward()
    assert pool.queries.grad is not None and pool.queries.grad.abs().sum() > 0
