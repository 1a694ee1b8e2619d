"""Encoder output type, masked mean pooling and learned-query attention pooling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prismrl.choices import check_positive_int


@dataclass
class EncoderOutput:
    """What every encoder returns.

    tokens: `[B, N, H]` token / patch features.
    mask: `[B, N]` bool, True = real token; None means every token is real.
    pooled: `[B, H]` one vector per example.
    """

    tokens: Tensor
    mask: Tensor | None
    pooled: Tensor


def check_mask(tokens: Tensor, mask: Tensor | None, name: str = "mask") -> Tensor | None:
    """Validate a `[B, N]` mask for `[B, N, H]` tokens and return it as bool.

    Raises ValueError if a row has no real token (pooling over it would be undefined).
    """
    if tokens.dim() != 3:
        raise ValueError(f"tokens: expected shape [B, N, H], received {tuple(tokens.shape)}")
    if mask is None:
        return None
    if mask.shape != tokens.shape[:2]:
        raise ValueError(f"{name}: expected shape {tuple(tokens.shape[:2])} (= tokens [B, N]), received {tuple(mask.shape)}")
    mask = mask.bool()
    empty = ~mask.any(dim=1)  # [B]
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"{name}: rows {rows} have no real token (all False); at least one is needed per row")
    return mask


def masked_mean(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over real tokens: `sum_n m_bn x_bn / sum_n m_bn`.  `[B, N, H]`, `[B, N]` -> `[B, H]`."""
    mask = check_mask(tokens, mask)
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # [B, N, 1]
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1)  # [B, H]


class AttentionPool(nn.Module):
    """Learned queries attend over tokens (open_clip's AttentionalPooler).

    `out = MHA(q = LN_q(Q), k = v = LN_kv(x), key_padding_mask = ~mask) W_out`, with queries
    `Q: [num_queries, dim]`; masked keys get zero attention weight.
    Input tokens `[B, N, dim]` (+ mask `[B, N]`, True = real), output `[B, num_queries, out_dim or dim]`.
    """

    def __init__(
        self,
        dim: int,
        num_queries: int = 1,
        num_heads: int = 8,
        out_dim: int | None = None,
        dropout: float = 0.0,
        use_layernorm: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_queries", num_queries), ("num_heads", num_heads), ("out_dim", out_dim)):
            if value is not None:
                check_positive_int(name, value)
        if dim % num_heads != 0:
            raise ValueError(f"num_heads: must divide dim={dim}, received num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), received {dropout!r}")
        self.dim, self.num_queries, self.num_heads = dim, num_queries, num_heads
        self.out_dim, self.use_layernorm = out_dim or dim, use_layernorm
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * dim**-0.5)  # [Q, dim]
        self.ln_q = nn.LayerNorm(dim) if use_layernorm else nn.Identity()
        self.ln_kv = nn.LayerNorm(dim) if use_layernorm else nn.Identity()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.proj = nn.Linear(dim, out_dim) if out_dim is not None else nn.Identity()

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = check_mask(tokens, mask)
        if tokens.shape[-1] != self.dim:
            raise ValueError(f"tokens: expected last dim dim={self.dim}, received shape {tuple(tokens.shape)}")
        kv = self.ln_kv(tokens)  # [B, N, dim]
        q = self.ln_q(self.queries).unsqueeze(0).expand(tokens.shape[0], -1, -1)  # [B, Q, dim]
        key_padding_mask = None if mask is None else ~mask  # MHA: True = ignore
        out, _ = self.attn(q, kv, kv, key_padding_mask=key_padding_mask, need_weights=False)  # [B, Q, dim]
        return self.proj(out)  # [B, Q, out_dim]
