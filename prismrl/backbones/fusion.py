"""Bi-directional cross-attention fusion of text tokens and vision tokens into one vector.

    t = W_t text_tokens,  v = W_v vision_tokens                              # [B, Nt, H], [B, Nv, H]
    per layer (both directions read the layer's inputs):
        t' = t + MHA(LN(t), LN(v), LN(v), keys masked by vision_mask);  t' = t' + MLP(LN(t'))
        v' = v + MHA(LN(v), LN(t), LN(t), keys masked by text_mask);    v' = v' + MLP(LN(v'))
    p_t = masked_mean(LN(t)), p_v = masked_mean(LN(v))                       # [B, H] each
    fused = LN(MLP([p_t; p_v]) + (p_t + p_v) / 2)                             # [B, H]

A missing stream (``None``; used for text-only / image-only ablations) is attended by nobody and
pools to zeros, so the other stream passes through its residual + MLP path alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prismrl.backbones.pooling import check_mask, masked_mean
from prismrl.choices import check_positive_int


def _mlp(dim: int, hidden: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out))


class CrossAttentionBlock(nn.Module):
    """One direction of one fusion layer: queries attend to a context stream, then an MLP (pre-norm).

    x [B, N, H] and context [B, M, H] (+ context_mask [B, M], True = real) -> [B, N, H];
    ``context=None`` skips the attention (the MLP still runs).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.mlp = _mlp(dim, mlp_ratio * dim, dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None, context_mask: Tensor | None) -> Tensor:
        if context is not None:
            kv = self.norm_kv(context)  # [B, M, H]
            padding = None if context_mask is None else ~context_mask  # MHA: True = ignore this key
            attended, _ = self.attn(self.norm_q(x), kv, kv, key_padding_mask=padding, need_weights=False)
            x = x + self.dropout(attended)  # [B, N, H]
        return x + self.dropout(self.mlp(self.norm_mlp(x)))  # [B, N, H]


class CrossModalFusion(nn.Module):
    """Fuse text tokens ``[B, Nt, text_dim]`` and vision tokens ``[B, Nv, vision_dim]`` into ``[B, hidden_dim]``.

    See the module docstring for the formula. Masks are ``[B, N]`` bool, True = real token; ``None``
    means every token is real. Padded tokens receive no attention and do not enter the pooled means,
    so their values never change the output.
    """

    def __init__(
        self,
        text_dim: int,
        vision_dim: int,
        hidden_dim: int = 256,
        num_heads: int = 4,
        num_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("text_dim", text_dim), ("vision_dim", vision_dim), ("hidden_dim", hidden_dim),
                            ("num_heads", num_heads)):
            check_positive_int(name, value)
        check_positive_int("num_layers", num_layers, minimum=0)
        if hidden_dim % num_heads:
            raise ValueError(f"num_heads: must divide hidden_dim={hidden_dim}, received num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), received {dropout!r}")
        self.text_dim, self.vision_dim, self.hidden_dim = text_dim, vision_dim, hidden_dim
        self.text_proj = nn.Linear(text_dim, hidden_dim)
        self.vision_proj = nn.Linear(vision_dim, hidden_dim)
        self.text_layers = nn.ModuleList(CrossAttentionBlock(hidden_dim, num_heads, dropout) for _ in range(num_layers))
        self.vision_layers = nn.ModuleList(CrossAttentionBlock(hidden_dim, num_heads, dropout) for _ in range(num_layers))
        self.text_norm, self.vision_norm = nn.LayerNorm(hidden_dim), nn.LayerNorm(hidden_dim)
        self.out_mlp = _mlp(2 * hidden_dim, 2 * hidden_dim, hidden_dim, dropout)
        self.out_norm = nn.LayerNorm(hidden_dim)

    def _stream(self, tokens: Tensor | None, mask: Tensor | None, dim: int, name: str) -> tuple[Tensor | None, Tensor | None]:
        if tokens is None:
            return None, None
        if tokens.dim() != 3 or tokens.shape[-1] != dim:
            raise ValueError(f"{name}_tokens: expected shape [B, N, {dim}], received {tuple(tokens.shape)}")
        return tokens, check_mask(tokens, mask, f"{name}_mask")

    def forward(
        self,
        text_tokens: Tensor | None,
        vision_tokens: Tensor | None,
        text_mask: Tensor | None = None,
        vision_mask: Tensor | None = None,
    ) -> Tensor:
        """-> fused ``[B, hidden_dim]``; at most one of the two streams may be None."""
        text_tokens, text_mask = self._stream(text_tokens, text_mask, self.text_dim, "text")
        vision_tokens, vision_mask = self._stream(vision_tokens, vision_mask, self.vision_dim, "vision")
        if text_tokens is None and vision_tokens is None:
            raise ValueError("text_tokens / vision_tokens: expected at least one stream, received None for both")
        if text_tokens is not None and vision_tokens is not None and text_tokens.shape[0] != vision_tokens.shape[0]:
            raise ValueError(
                f"vision_tokens: expected batch size {text_tokens.shape[0]} (= text_tokens), received {vision_tokens.shape[0]}"
            )
        t = self.text_proj(text_tokens) if text_tokens is not None else None  # [B, Nt, H]
        v = self.vision_proj(vision_tokens) if vision_tokens is not None else None  # [B, Nv, H]
        for text_layer, vision_layer in zip(self.text_layers, self.vision_layers):
            t, v = (
                text_layer(t, v, vision_mask) if t is not None else None,
                vision_layer(v, t, text_mask) if v is not None else None,
            )
        reference = t if t is not None else v
        zeros = reference.new_zeros(reference.shape[0], self.hidden_dim)  # [B, H] stands in for a missing stream
        pooled_t = masked_mean(self.text_norm(t), text_mask) if t is not None else zeros  # [B, H]
        pooled_v = masked_mean(self.vision_norm(v), vision_mask) if v is not None else zeros  # [B, H]
        fused = self.out_mlp(torch.cat([pooled_t, pooled_v], dim=-1))  # [B, H]
        return self.out_norm(fused + 0.5 * (pooled_t + pooled_v))  # [B, H]
