"""Chunked token log-probs and entropies vs naive log_softmax at a Qwen-size vocabulary, values and grads."""

from __future__ import annotations

import pytest
import torch

from prismrl.rl.logprobs import (
    default_chunk_size,
    entropy_from_logits,
    shift_for_causal_lm,
    token_logprobs,
)

VOCAB = 151_936


def naive_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _inputs(batch: int, time: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, time, VOCAB, generator=g) * 3.0).to(dtype)
    tokens = torch.randint(0, VOCAB, (batch, time), generator=g)
    tokens[0, 0] = int(logits[0, 0].float().argmax())  # one high-probability token
    return logits, tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_size", [1, 2, 5, None])  # blocks inside a row, several rows, one block
def test_token_logprobs_values_and_grads_match_naive(dtype, chunk_size):
    logits, tokens = _inputs(2, 3, dtype)
    weights = torch.randn(2, 3, generator=torch.Generator().manual_seed(9))
    fast_in = logits.clone().requires_grad_()
    naive_in = logits.clone().requires_grad_()
    fast = token_logprobs(fast_in, tokens, chunk_size)
    naive = naive_logprobs(naive_in, tokens)
    assert fast.dtype == torch.float32 and fast.shape == (2, 3)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)
    (fast * weights).sum().backward()
    (naive * weights).sum().backward()
    assert fast_in.grad.dtype == dtype
    tol = dict(atol=1e-7, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-7, rtol=1e-2)
    torch.testing.assert_close(fast_in.grad, naive_in.grad, **tol)
    assert torch.equal(fast_in.detach(), logits)  # inputs untouched by the in-place block arithmetic


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_entropy_values_and_grads_match_naive(dtype):
    logits, _ = _inputs(2, 3, dtype, seed=1)
    fast_in = logits.clone().requires_grad_()
    naive_in = logits.clone().requires_grad_()
    fast = entropy_from_logits(fast_in, chunk_size=2)
    naive = naive_entropy(naive_in)
    torch.testing.assert_close(fast, naive, atol=1e-4, rtol=1e-5)
    weights = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    (fast * weights).sum().backward()
    (naive * weights).sum().backward()
    tol = dict(atol=1e-6, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-6, rtol=1e-2)
    torch.testing.assert_close(fast_in.grad, naive_in.grad, **tol)
    assert torch.equal(fast_in.detach(), logits)


def test_gradcheck_small_vocab_float64():
    logits = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 3))
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, tokens, chunk_size=2), (logits,))
    assert torch.autograd.gradcheck(lambda x: entropy_from_logits(x, chunk_size=4), (logits,))


def test_shifted_non_contiguous_logits():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, 11, generator=g, requires_grad=True)
    input_ids = torch.randint(0, 11, (3, 5), generator=g)
    shifted, targets = shift_for_causal_lm(logits, input_ids)
    assert shifted.shape == (3, 4, 11) and targets.shape == (3, 4) and not shifted.is_contiguous()
    assert torch.equal(targets, input_ids[:, 1:])
    fast = token_logprobs(shifted, targets, chunk_size=3)
    torch.testing.assert_close(fast, naive_logprobs(logits[:, :-1], input_ids[:, 1:]))
    (fast_grad,) = torch.autograd.grad(fast.sum(), logits)
    (naive_grad,) = torch.autograd.grad(naive_logprobs(logits[:, :-1], input_ids[:, 1:]).sum(), logits)
    torch.testing.assert_close(fast_grad, naive_grad)
    assert torch.equal(fast_grad[:, -1], torch.zeros(3, 11))


def test_entropy_with_masked_out_vocabulary():
    logits = torch.randn(1, 2, 6)
    logits[..., 4:] = float("-inf")  # e.g. a logits processor banned two ids
    logits.requires_grad_()
    out = entropy_from_logits(logits, chunk_size=1)
    torch.testing.assert_close(out, naive_entropy(logits.detach()[..., :4]))
    out.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.equal(logits.grad[..., 4:], torch.zeros(1, 2, 2))


def test_default_chunk_and_errors():
    assert default_chunk_size(VOCAB) == 27 and default_chunk_size(VOCAB, "cuda") == 441
    assert default_chunk_size(10**12) == 1
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"tokens: expected shape \(2, 3\), received \(2, 4\)"):
        token_logprobs(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens: expected ids in \[0, 5\), received min -100"):
        token_logprobs(logits, torch.full((2, 3), -100))
    with pytest.raises(TypeError, match="tokens: expected an integer tensor"):
        token_logprobs(logits, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match=r"logits: expected a floating \(B, T, V\) tensor"):
        entropy_from_logits(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"input_ids: expected shape \(2, 3\)"):
        shift_for_causal_lm(logits, torch.zeros(2, 4, dtype=torch.long))
    assert token_logprobs(torch.randn(0, 3, 5), torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3)
