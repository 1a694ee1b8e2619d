"""A text classifier: any text encoder with ``encode(list[str])`` + a linear head on its pooled features.

    features = encoder.encode(texts).pooled            # [B, H]
    logits   = Linear(Dropout(features))                # [B, C]

Used as the classifier-in-the-loop of the generator stage (e.g. the shipped MiniLM, or a tiny RoBERTa /
BERT config via ``HFTextEncoder``). A frozen encoder (no trainable parameter) stays in eval mode even when
the classifier is put in train mode, so its features are deterministic and can be cached.
"""

from __future__ import annotations

from torch import Tensor, nn

from prismrl.choices import check_positive_int


class TextClassifier(nn.Module):
    """``encoder`` (``encode(list[str])`` -> output with ``pooled`` [B, H], int ``hidden_size``) + a linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if not callable(getattr(encoder, "encode", None)) or not isinstance(getattr(encoder, "hidden_size", None), int):
            raise TypeError(f"encoder: expected a module with encode(list[str]) and an int hidden_size, "
                            f"received {type(encoder).__name__}")
        check_positive_int("num_classes", num_classes, minimum=2)
        self.encoder = encoder
        self.num_classes = num_classes
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.hidden_size, num_classes))

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def train(self, mode: bool = True) -> "TextClassifier":
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def embed(self, texts: list[str]) -> Tensor:
        """Pooled encoder features [B, H]."""
        return self.encoder.encode(list(texts)).pooled

    def forward(self, texts: list[str]) -> Tensor:
        """Class logits [B, C]."""
        return self.head(self.embed(texts))
