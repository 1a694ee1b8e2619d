"""Images -> a fixed-length visual prefix for a decoder: vision encoder -> Perceiver resampler -> projector.

    tokens, mask = vision_encoder(pixels)                       # [B, N, H] patch / feature-map tokens
    tokens      += [W_e z]   if use_aligned_embedding           # z = the tower's aligned embedding [B, E]
    latents      = PerceiverResampler(tokens, mask)             # [B, L, resampler_dim]
    prefix       = ProjectionHead(latents)                      # [B, L, out_dim]

``vision_encoder`` is an ``EmbeddingTower`` (its encoder's tokens are used, and its embedding z can be added as
one more token) or a bare encoder with ``hidden_size`` returning ``EncoderOutput``. Its weights can come from an
``AlignmentModule`` checkpoint (``load_aligned_vision``, in ``prismrl.backbones.aligned_towers``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prismrl.backbones.aligned_towers import (
    TOWER_PREFIXES,
    is_tower,
    load_aligned_vision,
)
from prismrl.backbones.freezing import freeze as freeze_module
from prismrl.backbones.projection import ProjectionHead
from prismrl.backbones.resampler import PerceiverResampler

ALIGNMENT_PREFIX = TOWER_PREFIXES["image"]


class VisualPrefix(nn.Module):
    """Pixels ``[B, 3, H, W]`` -> prefix ``[B, num_latents, out_dim]`` (see the module docstring).

    Args:
        vision_encoder: an ``EmbeddingTower`` or an encoder with an int ``hidden_size``.
        out_dim: the decoder's embedding width.
        num_latents, resampler_dim (default: the encoder's width), depth, num_heads, head_dim: the resampler.
        projector_hidden_dim: None = one Linear, else Linear -> GELU -> Linear.
        use_aligned_embedding: add the tower's embedding z as one more resampler token (towers only).
        freeze: freeze the vision encoder (kept in eval mode: fixed dropout / normalization statistics).
    """

    def __init__(self, vision_encoder: nn.Module, out_dim: int, num_latents: int = 8, resampler_dim: int | None = None,
                 depth: int = 2, num_heads: int = 4, head_dim: int = 32, projector_hidden_dim: int | None = None,
                 use_aligned_embedding: bool = False, freeze: bool = True) -> None:
        super().__init__()
        self.is_tower = is_tower(vision_encoder)
        encoder = vision_encoder.encoder if self.is_tower else vision_encoder
        width = getattr(encoder, "hidden_size", None)
        if not isinstance(width, int):
            raise TypeError(f"vision_encoder: expected an EmbeddingTower or an encoder with an int hidden_size, "
                            f"received {type(vision_encoder).__name__}")
        if use_aligned_embedding and not self.is_tower:
            raise ValueError(f"use_aligned_embedding: needs an EmbeddingTower vision_encoder, received "
                             f"{type(vision_encoder).__name__}")
        self.vision_encoder, self.frozen = vision_encoder, freeze
        self.embedding_token = nn.Linear(vision_encoder.embed_dim, width) if use_aligned_embedding else None
        self.resampler = PerceiverResampler(resampler_dim or width, input_dim=width, num_latents=num_latents,
                                            depth=depth, num_heads=num_heads, head_dim=head_dim)
        self.projector = ProjectionHead(resampler_dim or width, out_dim, projector_hidden_dim)
        if freeze:
            freeze_module(vision_encoder)
            vision_encoder.eval()

    def train(self, mode: bool = True) -> VisualPrefix:
        super().train(mode)
        if self.frozen:
            self.vision_encoder.eval()
        return self

    def vision_tokens(self, pixel_values: Tensor) -> tuple[Tensor, Tensor | None]:
        """(tokens ``[B, N(+1), H]``, mask ``[B, N(+1)]`` or None) fed to the resampler."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.is_tower:
                embedding, encoded = self.vision_encoder.forward_with_tokens(pixel_values)  # [B, E], EncoderOutput
            else:
                embedding, encoded = None, self.vision_encoder(pixel_values)
        tokens, mask = encoded.tokens, encoded.mask
        if self.embedding_token is not None:
            tokens = torch.cat([tokens, self.embedding_token(embedding)[:, None]], dim=1)  # [B, N + 1, H]
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        return tokens, mask

    def forward(self, pixel_values: Tensor) -> Tensor:
        tokens, mask = self.vision_tokens(pixel_values)
        return self.projector(self.resampler(tokens, mask))  # [B, L, out_dim]


__all__ = ["ALIGNMENT_PREFIX", "VisualPrefix", "load_aligned_vision"]
