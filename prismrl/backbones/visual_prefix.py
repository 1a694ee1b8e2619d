"""Images (or any encoder's inputs) -> a fixed-length prefix for a decoder: encoder -> Perceiver resampler -> projector.

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


class EncoderPrefix(nn.Module):
    """Encoder inputs -> prefix ``[B, num_latents, out_dim]`` (see the module docstring); the encoder is kept under
    the attribute named by ``encoder_field`` (its checkpoint keys and error messages use that name).

    Args:
        encoder: an ``EmbeddingTower`` or an encoder with an int ``hidden_size`` returning ``EncoderOutput``.
        out_dim: the decoder's embedding width.
        num_latents, resampler_dim (default: the encoder's width), depth, num_heads, head_dim: the resampler.
        projector_hidden_dim: None = one Linear, else Linear -> GELU -> Linear.
        use_aligned_embedding: add the tower's embedding z as one more resampler token (towers only).
        freeze: freeze the encoder (kept in eval mode: fixed dropout / normalization statistics).
    """

    encoder_field = "encoder"

    def __init__(self, encoder: nn.Module, out_dim: int, num_latents: int = 8, resampler_dim: int | None = None,
                 depth: int = 2, num_heads: int = 4, head_dim: int = 32, projector_hidden_dim: int | None = None,
                 use_aligned_embedding: bool = False, freeze: bool = True) -> None:
        super().__init__()
        self.is_tower = is_tower(encoder)
        inner = encoder.encoder if self.is_tower else encoder
        width = getattr(inner, "hidden_size", None)
        if not isinstance(width, int):
            raise TypeError(f"{self.encoder_field}: expected an EmbeddingTower or an encoder with an int hidden_size, "
                            f"received {type(encoder).__name__}")
        if use_aligned_embedding and not self.is_tower:
            raise ValueError(f"use_aligned_embedding: needs an EmbeddingTower {self.encoder_field}, received "
                             f"{type(encoder).__name__}")
        setattr(self, self.encoder_field, encoder)
        self.frozen = freeze
        self.embedding_token = nn.Linear(encoder.embed_dim, width) if use_aligned_embedding else None
        self.resampler = PerceiverResampler(resampler_dim or width, input_dim=width, num_latents=num_latents,
                                            depth=depth, num_heads=num_heads, head_dim=head_dim)
        self.projector = ProjectionHead(resampler_dim or width, out_dim, projector_hidden_dim)
        if freeze:
            freeze_module(encoder)
            encoder.eval()

    @property
    def source(self) -> nn.Module:
        """The encoder (or tower) the prefix is read from."""
        return getattr(self, self.encoder_field)

    def train(self, mode: bool = True) -> EncoderPrefix:
        super().train(mode)
        if self.frozen:
            self.source.eval()
        return self

    def encoder_tokens(self, *inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        """(tokens ``[B, N(+1), H]``, mask ``[B, N(+1)]`` or None) fed to the resampler."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.is_tower:
                embedding, encoded = self.source.forward_with_tokens(*inputs)  # [B, E], EncoderOutput
            else:
                embedding, encoded = None, self.source(*inputs)
        tokens, mask = encoded.tokens, encoded.mask
        if self.embedding_token is not None:
            tokens = torch.cat([tokens, self.embedding_token(embedding)[:, None]], dim=1)  # [B, N + 1, H]
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        return tokens, mask

    def forward(self, *inputs: Tensor) -> Tensor:
        tokens, mask = self.encoder_tokens(*inputs)
        return self.projector(self.resampler(tokens, mask))  # [B, L, out_dim]


class VisualPrefix(EncoderPrefix):
    """Pixels ``[B, 3, H, W]`` -> prefix ``[B, num_latents, out_dim]``; ``vision_encoder`` as ``EncoderPrefix.encoder``."""

    encoder_field = "vision_encoder"

    def vision_tokens(self, pixel_values: Tensor) -> tuple[Tensor, Tensor | None]:
        """(tokens ``[B, N(+1), H]``, mask ``[B, N(+1)]`` or None) fed to the resampler."""
        return self.encoder_tokens(pixel_values)


__all__ = ["ALIGNMENT_PREFIX", "EncoderPrefix", "VisualPrefix", "load_aligned_vision"]
