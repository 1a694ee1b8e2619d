"""Embedding tower: encoder -> pooling -> projection into the shared embedding space."""

from __future__ import annotations

from enum import Enum
from typing import Any

from torch import Tensor, nn

from prismrl.backbones.pooling import AttentionPool, EncoderOutput
from prismrl.backbones.projection import ProjectionHead
from prismrl.choices import check_positive_int


class TowerPooling(str, Enum):
    """Where the tower's single vector per example comes from."""

    ATTENTION = "attention"  # learned-query AttentionPool over the encoder's tokens (mask respected)
    ENCODER = "encoder"  # the encoder's own pooled output


class EmbeddingTower(nn.Module):
    """`z = Proj(Pool(encoder(inputs)))`: `[B, embed_dim]`, unnormalized.

    encoder: any module with `hidden_size` whose forward returns EncoderOutput (injected with
    class_path / init_args). Pool is AttentionPool(hidden_size, 1 query, attention_heads) over
    tokens, or the encoder's pooled vector. Proj is ProjectionHead(hidden_size, embed_dim,
    projection_hidden_dim, projection_dropout).
    """

    def __init__(
        self,
        encoder: nn.Module,
        embed_dim: int,
        pooling: str = "attention",
        attention_heads: int = 8,
        projection_hidden_dim: int | None = None,
        projection_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module) or not isinstance(getattr(encoder, "hidden_size", None), int):
            raise TypeError(
                f"encoder: expected an nn.Module with an int hidden_size, received {type(encoder).__name__}"
            )
        try:
            self.pooling = TowerPooling(pooling)
        except ValueError:
            raise ValueError(f"pooling: expected one of {[p.value for p in TowerPooling]}, received {pooling!r}") from None
        check_positive_int("embed_dim", embed_dim)
        hidden = encoder.hidden_size
        self.encoder = encoder
        self.embed_dim = embed_dim
        self.pool: AttentionPool | None = None
        if self.pooling is TowerPooling.ATTENTION:
            if not isinstance(attention_heads, int) or attention_heads <= 0 or hidden % attention_heads:
                raise ValueError(
                    f"attention_heads: must be a positive divisor of the encoder's hidden_size={hidden}, "
                    f"received {attention_heads!r}"
                )
            self.pool = AttentionPool(hidden, num_queries=1, num_heads=attention_heads)
        self.projection = ProjectionHead(hidden, embed_dim, projection_hidden_dim, projection_dropout)

    def forward_with_tokens(self, *args: Any, **kwargs: Any) -> tuple[Tensor, EncoderOutput]:
        """Run the encoder on the given inputs; return (embedding `[B, embed_dim]`, encoder output)."""
        enc: EncoderOutput = self.encoder(*args, **kwargs)
        if self.pool is not None:
            pooled = self.pool(enc.tokens, enc.mask)[:, 0]  # [B, H]
        else:
            pooled = enc.pooled  # [B, H]
        return self.projection(pooled), enc

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """Encoder inputs -> `[B, embed_dim]`."""
        return self.forward_with_tokens(*args, **kwargs)[0]

    def encode_texts(self, texts: list[str]) -> Tensor:
        """Tokenize `texts` with the encoder's tokenizer, move to this module's device, embed."""
        tokenize = getattr(self.encoder, "tokenize", None)
        if tokenize is None:
            raise TypeError(f"encode_texts: encoder {type(self.encoder).__name__} has no tokenize(texts)")
        device = next(self.parameters()).device
        batch = {k: v.to(device) for k, v in tokenize(texts).items()}
        return self(**batch)  # [B, embed_dim]
