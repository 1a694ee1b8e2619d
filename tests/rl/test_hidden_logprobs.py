"""Token log-probs from hidden states in blocks vs the naive full-logits log_softmax + gather."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from prismrl.rl.hidden_logprobs import hidden_token_logprobs

V, H = 37, 8


def _naive(hidden, weight, bias, tokens, temperature=1.0, scale=1.0, softcap=None):
    z = (hidden @ weight.T + bias).to(torch.promote_types(hidden.dtype, torch.float32)) * scale  # [B, T, V]
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    logp = torch.log_softmax(z / temperature, -1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 7, H, generator=g).to(dtype).requires_grad_()
    linear = torch.nn.Linear(H, V, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(V, H, generator=g) * 0.8)
        linear.bias.copy_(torch.randn(V, generator=g) * 0.3)
    tokens = torch.randint(0, V, (3, 7), generator=g)
    mask = torch.ones(3, 7)
    mask[1, 4:] = 0  # right padding: ids there are a valid pad id, the result is masked
    mask[2, :2] = 0  # prompt tokens
    tokens[1, 4:] = 0
    return hidden, linear, tokens, mask


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("chunk", [1, 4, 100])
@pytest.mark.parametrize("temperature,scale,softcap", [(1.0, 1.0, None), (0.7, 1.0, None), (1.3, 0.5, 3.0)])
@pytest.mark.parametrize("kind", ["linear", "callable"])  # custom autograd function / checkpointed blocks
def test_values_entropies_and_gradients_equal_naive(dtype, tol, chunk, temperature, scale, softcap, kind):
    hidden, linear, tokens, mask = _inputs(dtype)
    head = linear if kind == "linear" else (lambda h: linear(h))
    logp, entropy = hidden_token_logprobs(hidden, head, tokens, V, temperature, chunk, True, scale, softcap)
    assert logp.dtype == torch.float32 and logp.shape == (3, 7) and not entropy.requires_grad
    leaves = (hidden, linear.weight, linear.bias)
    ((logp * mask).sum() * 0.37).backward()
    grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    naive, naive_entropy = _naive(hidden, linear.weight, linear.bias, tokens, temperature, scale, softcap)
    ((naive * mask).sum() * 0.37).backward()
    torch.testing.assert_close(logp * mask, naive * mask, atol=tol, rtol=tol)
    torch.testing.assert_close(entropy, naive_entropy, atol=tol, rtol=tol)
    for got, t in zip(grads, leaves):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), t.grad.float(), atol=tol, rtol=tol)


def test_frozen_head_gets_no_gradient_and_hidden_does():
    hidden, linear, tokens, _ = _inputs(torch.float32)
    linear.requires_grad_(False)
    logp, _ = hidden_token_logprobs(hidden, linear, tokens, V, chunk_size=2)
    logp.sum().backward()
    assert linear.weight.grad is None and hidden.grad is not None
    naive, _ = _naive(hidden.detach(), linear.weight, linear.bias, tokens)
    torch.testing.assert_close(logp.detach(), naive)


def test_non_contiguous_views_float64_and_no_grad():
    hidden, head, tokens, _ = _inputs(torch.float64)
    logp, none = hidden_token_logprobs(hidden[:, :-1], head, tokens[:, 1:], V, chunk_size=5)
    assert none is None and logp.dtype == torch.float64
    naive, _ = _naive(hidden[:, :-1], head.weight, head.bias, tokens[:, 1:])
    torch.testing.assert_close(logp, naive)
    with torch.no_grad():
        again, _ = hidden_token_logprobs(hidden[:, :-1], head, tokens[:, 1:], V, chunk_size=5)
    assert not again.requires_grad
    torch.testing.assert_close(again, logp.detach())
    empty, ent = hidden_token_logprobs(hidden[:, :0], head, tokens[:, :0], V, with_entropy=True)
    assert empty.shape == (3, 0) and ent.shape == (3, 0)


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("kind", ["linear", "callable"])
def test_forward_and_backward_never_build_full_logits(kind):
    torch.manual_seed(0)
    vocab, rows, chunk = 5000, 64, 8
    linear = torch.nn.Linear(16, vocab)
    head = linear if kind == "linear" else (lambda h: linear(h))
    hidden = torch.randn(2, rows // 2, 16, requires_grad=True)
    tokens = torch.randint(0, vocab, (2, rows // 2))
    with _LargestTensor() as seen:
        logp, _ = hidden_token_logprobs(hidden, head, tokens, vocab, chunk_size=chunk, with_entropy=True)
        logp.sum().backward()
    assert seen.largest <= max(chunk * vocab, linear.weight.numel())  # one block's logits, or the weight's gradient
    assert seen.largest < rows * vocab
    with _LargestTensor() as naive:
        torch.log_softmax(linear(hidden), -1).gather(-1, tokens.unsqueeze(-1)).sum().backward()
    assert naive.largest >= rows * vocab  # the check sees a full [B, T, V] tensor when there is one


def test_errors_name_the_field():
    hidden, head, tokens, _ = _inputs(torch.float32)
    with pytest.raises(ValueError, match=r"hidden: expected a floating \(B, T, H\) tensor, received"):
        hidden_token_logprobs(hidden[0], head, tokens, V)
    with pytest.raises(ValueError, match="tokens: expected shape"):
        hidden_token_logprobs(hidden, head, tokens[:, 1:], V)
    with pytest.raises(ValueError, match=r"tokens: expected ids in \[0, 37\), received min -100"):
        hidden_token_logprobs(hidden, head, tokens.masked_fill(tokens == tokens[0, 0], -100), V)
    with pytest.raises(TypeError, match="tokens: expected an integer tensor"):
        hidden_token_logprobs(hidden, head, tokens.float(), V)
    for kwargs, field in [({"chunk_size": 0}, "chunk_size"), ({"temperature": 0.0}, "temperature"),
                          ({"softcap": -1.0}, "softcap"), ({"logit_scale": 0.0}, "logit_scale")]:
        with pytest.raises(ValueError, match=f"{field}: expected"):
            hidden_token_logprobs(hidden, head, tokens, V, **kwargs)
