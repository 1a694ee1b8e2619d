"""Token log-probs and entropies straight from last hidden states, never holding [B, T, V] logits, pure torch.

    z[n]    = post(head(h[n])) / temperature              h [N, H] -> z [N, V], one block of rows at a time
    post(x) = cap * tanh(x * scale / cap)                 with a soft cap (Gemma-2/3), else x * scale
    logp[n] = z[n, y[n]] - logsumexp_v z[n, v]
    H[n]    = logsumexp_v z[n, v] - sum_v softmax(z[n])_v z[n, v]   (without gradient)

The rows are processed in blocks of at most ``chunk_size`` rows; each block's logits [c, V] are upcast
to float32 on their own, and only the per-row log-sum-exp [N] is kept. The backward recomputes one
block's logits at a time, so peak extra memory is O(chunk_size * V) floats in forward and backward alike,
as fused linear-cross-entropy kernels do. A plain ``nn.Linear`` head (HF's ``lm_head``, tied or not)
goes through a custom autograd function that accumulates the weight gradient in one buffer
(dW += dz_c^T h_c per block); any other callable [c, H] -> [c, V] (e.g. a LoRA-wrapped head) runs each
block under non-reentrant activation checkpointing, which keeps only the block's hidden states. Both
give exact gradients (the formulas autograd uses on the naive path, summed over blocks).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from prismrl.choices import check_positive_float, check_positive_int
from prismrl.rl.advantages import check_shape
from prismrl.rl.logprobs import default_chunk_size


def _post(z: Tensor, temperature: float, scale: float, softcap: float | None, inplace: bool = False) -> Tensor:
    """Scale / soft cap / temperature of head outputs z [c, V] in float32 (float64 stays float64); ``inplace``
    only on fresh tensors outside autograd."""
    z = z.to(torch.promote_types(z.dtype, torch.float32))  # [c, V]
    if not inplace:
        z = z * scale if scale != 1.0 else z
        z = torch.tanh(z / softcap) * softcap if softcap is not None else z
        return z / temperature if temperature != 1.0 else z
    if scale != 1.0:
        z.mul_(scale)
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    return z.div_(temperature) if temperature != 1.0 else z


def default_hidden_chunk_size(vocab_size: int, device: torch.device | str | None = None) -> int:
    """Rows per block from hidden states: float32 logits of about 64 MiB per block on CPU (110 rows at
    V = 151,936), 256 MiB elsewhere (``default_chunk_size``). Each block multiplies by the whole head
    weight [V, H], so blocks much smaller than this re-read the weight too often (measured on CPU: 27-row
    blocks take 1.4-2x the time of 128-row ones)."""
    if torch.device(device or "cpu").type == "cpu":
        return max(1, 64 * 2**20 // (4 * vocab_size))
    return default_chunk_size(vocab_size, device)


def _block(head: Callable[[Tensor], Tensor], h: Tensor, y: Tensor, temperature: float, scale: float,
           softcap: float | None, with_entropy: bool) -> tuple[Tensor, Tensor]:
    """log-probs [c] of ``y`` [c] and (detached) entropies [c] (empty when not asked) of one block h [c, H]."""
    z = _post(head(h), temperature, scale, softcap)  # [c, V]
    lse = torch.logsumexp(z, dim=-1)  # [c]
    logp = z.gather(-1, y.unsqueeze(-1)).squeeze(-1) - lse  # [c]
    if not with_entropy:
        return logp, logp.new_empty(0)
    with torch.no_grad():
        p = torch.exp(z - lse.unsqueeze(-1))  # [c, V]
        entropy = lse - p.mul_(z).nan_to_num_(nan=0.0).sum(-1)  # -inf logits (banned ids) add 0
    return logp, entropy


class _LinearTokenLogprobs(torch.autograd.Function):
    """logp = z[y] - lse(z), z = post(h W^T + b); d logp / dz = onehot(y) - softmax(z), chained through post."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, tokens: Tensor, rows: int,
                post: tuple[float, float, float | None], with_entropy: bool) -> tuple[Tensor, Tensor]:
        logps, lses, entropies = [], [], []
        for start in range(0, hidden.shape[0], rows):
            z = _post(nn.functional.linear(hidden[start:start + rows], weight, bias), *post, inplace=True)
            lse = torch.logsumexp(z, dim=-1)  # [c]
            logps.append(z.gather(-1, tokens[start:start + rows].unsqueeze(-1)).squeeze(-1) - lse)
            lses.append(lse)
            if with_entropy:
                entropies.append(lse - torch.exp(z - lse.unsqueeze(-1)).mul_(z).nan_to_num_(nan=0.0).sum(-1))
        ctx.save_for_backward(hidden, weight, bias, tokens, torch.cat(lses))
        ctx.rows, ctx.post = rows, post
        entropy = torch.cat(entropies) if with_entropy else logps[0].new_empty(0)
        ctx.mark_non_differentiable(entropy)
        return torch.cat(logps), entropy  # [N], [N] or [0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp: Tensor, _grad_entropy: Tensor) -> tuple:
        hidden, weight, bias, tokens, lse = ctx.saved_tensors
        temperature, scale, softcap = ctx.post
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None  # [N, H]
        wide = torch.promote_types(weight.dtype, torch.float32)
        grad_w = torch.zeros(weight.shape, dtype=wide, device=weight.device) if need_w else None  # [V, H]
        grad_b = torch.zeros(weight.shape[0], dtype=wide, device=weight.device) if need_b else None  # [V]
        for start in range(0, hidden.shape[0], ctx.rows):
            h = hidden[start:start + ctx.rows]  # [c, H]
            z = nn.functional.linear(h, weight, bias).to(lse.dtype)  # [c, V] raw logits (fresh)
            if scale != 1.0:
                z.mul_(scale)
            t = z.div_(softcap).tanh() if softcap is not None else None  # [c, V]
            z = torch.mul(t, softcap / temperature, out=z) if t is not None else z.div_(temperature)
            g = grad_logp[start:start + ctx.rows].to(lse.dtype).unsqueeze(-1)  # [c, 1]
            dz = z.sub_(lse[start:start + ctx.rows].unsqueeze(-1)).exp_().mul_(-g)  # [c, V] = -g softmax(z)
            dz.scatter_add_(-1, tokens[start:start + ctx.rows].unsqueeze(-1), g)
            dz.mul_(scale / temperature)  # d z / d (h W^T + b) = scale / T (* (1 - t^2) with a soft cap)
            if t is not None:
                dz.mul_(t.square_().neg_().add_(1.0))
            if need_h:
                grad_h[start:start + ctx.rows] = dz.to(weight.dtype) @ weight
            if need_w:
                grad_w.addmm_(dz.T.to(wide), h.to(wide))
            if need_b:
                grad_b.add_(dz.sum(0))
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None


def hidden_token_logprobs(
    hidden: Tensor,
    head: Callable[[Tensor], Tensor],
    tokens: Tensor,
    vocab_size: int,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    with_entropy: bool = False,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """log softmax(post(head(hidden)) / temperature)[tokens] per position [B, T] float32, and entropies [B, T].

    ``hidden`` [B, T, H] (any float dtype, may be a non-contiguous view such as ``h[:, :-1]``);
    ``tokens`` [B, T] ids in [0, vocab_size) everywhere (replace padding ids before calling and mask the
    result); ``head`` maps [c, H] -> [c, vocab_size]. ``chunk_size`` rows per block (None picks
    ``default_hidden_chunk_size(vocab_size, hidden.device)``: about 64 MiB of float32 logits per block on
    CPU, 256 MiB elsewhere). Entropies (``with_entropy``) carry no gradient; else None.
    """
    if not isinstance(hidden, Tensor) or hidden.dim() != 3 or not hidden.is_floating_point():
        received = f"{hidden.dtype} {tuple(hidden.shape)}" if isinstance(hidden, Tensor) else type(hidden).__name__
        raise ValueError(f"hidden: expected a floating (B, T, H) tensor, received {received}")
    check_shape("tokens", tokens, hidden.shape[:2])
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"tokens: expected an integer tensor, received {tokens.dtype}")
    check_positive_int("vocab_size", vocab_size)
    check_positive_float("temperature", temperature)
    check_positive_float("logit_scale", logit_scale)
    if softcap is not None:
        check_positive_float("softcap", softcap)
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(
            f"tokens: expected ids in [0, {vocab_size}), received min {int(tokens.min())} max {int(tokens.max())}"
        )
    rows = default_hidden_chunk_size(vocab_size, hidden.device) if chunk_size is None else check_positive_int(
        "chunk_size", chunk_size)
    batch, time, width = hidden.shape
    flat_h = hidden.reshape(batch * time, width)  # [N, H]
    flat_y = tokens.reshape(batch * time).long()  # [N]
    if type(head) is nn.Linear and batch * time:
        logp, entropy = _LinearTokenLogprobs.apply(flat_h, head.weight, head.bias, flat_y, rows,
                                                   (temperature, logit_scale, softcap), with_entropy)
        return logp.view(batch, time), (entropy.view(batch, time) if with_entropy else None)
    logps, entropies = [], []
    track = torch.is_grad_enabled()
    for start in range(0, batch * time, rows):
        h, y = flat_h[start:start + rows], flat_y[start:start + rows]  # [c, H], [c]
        if track:
            logp, entropy = checkpoint(_block, head, h, y, temperature, logit_scale, softcap, with_entropy,
                                       use_reentrant=False)
        else:
            logp, entropy = _block(head, h, y, temperature, logit_scale, softcap, with_entropy)
        logps.append(logp)
        entropies.append(entropy)
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    if not logps:
        empty = hidden.new_zeros(batch, time, dtype=dtype)
        return empty, (empty if with_entropy else None)
    logp = torch.cat(logps).view(batch, time)  # [B, T]
    return logp, (torch.cat(entropies).view(batch, time) if with_entropy else None)
