"""Perceiver resampler: compress a variable-length token sequence into a fixed number of latents.

Each layer (as in Flamingo / open_flamingo's PerceiverResampler):
    kv      = concat(LN(x), LN(latents))                       # [B, N + L, D]
    latents = latents + Attn(q=LN(latents), k=kv, v=kv)        # keys of padded tokens are masked out
    latents = latents + FF(latents)                            # LN -> Linear(D, m*D) -> GELU -> Linear(m*D, D)
and the output is LN(latents): [B, L, D]. Latents always attend to themselves, so a sample whose tokens are all
padding still gets a finite output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prismrl.choices import check_positive_int


class PerceiverAttention(nn.Module):
    """Multi-head cross-attention of latents over (tokens ++ latents), with a key padding mask on the tokens."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        inner = num_heads * head_dim
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, num_latents, _ = latents.shape
        tokens, latents = self.norm_tokens(tokens), self.norm_latents(latents)
        kv_input = torch.cat([tokens, latents], dim=1)  # [B, N + L, D]
        q = self._heads(self.to_q(latents))  # [B, H, L, hd]
        k, v = (self._heads(t) for t in self.to_kv(kv_input).chunk(2, dim=-1))  # [B, H, N + L, hd]
        attn_mask = None
        if mask is not None:
            keep = torch.cat([mask, mask.new_ones(batch, num_latents)], dim=1)  # [B, N + L] True = attend
            attn_mask = keep[:, None, None, :]  # [B, 1, 1, N + L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(batch, num_latents, -1))  # [B, L, D]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)


class PerceiverResampler(nn.Module):
    """Maps tokens [B, N, input_dim] (+ mask [B, N], True = real) to latents [B, num_latents, dim].

    Args:
        dim: width of the latents and of the output.
        input_dim: width of the incoming tokens (projected to ``dim`` when different; default ``dim``).
        num_latents: number of learned latent queries (output length).
        depth: number of attention + feed-forward layers.
        num_heads, head_dim: attention heads and their width.
        ff_mult: feed-forward expansion factor.
        max_tokens: when set, a learned position embedding is added to the first ``max_tokens`` token positions.
    """

    def __init__(
        self,
        dim: int,
        input_dim: int | None = None,
        num_latents: int = 64,
        depth: int = 2,
        num_heads: int = 8,
        head_dim: int = 64,
        ff_mult: int = 4,
        dropout: float = 0.0,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_latents", num_latents), ("depth", depth), ("num_heads", num_heads),
                            ("head_dim", head_dim), ("ff_mult", ff_mult)):
            check_positive_int(name, value)
        self.dim, self.input_dim, self.num_latents = dim, input_dim or dim, num_latents
        self.input_proj = nn.Identity() if self.input_dim == dim else nn.Linear(self.input_dim, dim)
        self.position = nn.Parameter(torch.zeros(max_tokens, dim)) if max_tokens else None
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, num_heads, head_dim, dropout),
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff_mult * dim, bias=False), nn.GELU(),
                              nn.Linear(ff_mult * dim, dim, bias=False)),
            ])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: [B, N, input_dim]; mask: [B, N] bool (True = real token) or None -> [B, num_latents, dim]."""
        if tokens.dim() != 3 or tokens.shape[-1] != self.input_dim:
            raise ValueError(f"tokens: expected shape [B, N, {self.input_dim}], received {tuple(tokens.shape)}")
        if mask is not None and (mask.shape != tokens.shape[:2] or mask.dtype != torch.bool):
            raise ValueError(f"mask: expected a bool tensor of shape {tuple(tokens.shape[:2])}, received "
                             f"{mask.dtype} {tuple(mask.shape)}")
        x = self.input_proj(tokens)  # [B, N, D]
        if self.position is not None:
            if x.shape[1] > self.position.shape[0]:
                raise ValueError(f"tokens: expected at most max_tokens={self.position.shape[0]} tokens, received {x.shape[1]}")
            x = x + self.position[: x.shape[1]]
        latents = self.latents.expand(x.shape[0], -1, -1)  # [B, L, D]
        for attention, feed_forward in self.layers:
            latents = latents + attention(x, latents, mask)
            latents = latents + feed_forward(latents)
        return self.norm(latents)
