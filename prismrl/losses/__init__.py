"""Pure-torch losses: contrastive (CLIP, SigLIP) with cross-rank gather, and Matryoshka."""

from prismrl.losses.contrastive import (
    CONTRASTIVE_LOSSES,
    ClipLoss,
    ContrastiveKind,
    ContrastiveLoss,
    SigLipLoss,
    build_contrastive_loss,
)
from prismrl.losses.gather import gather_features, rank_and_world
from prismrl.losses.matryoshka import (
    MatryoshkaContrastiveLoss,
    MatryoshkaLossOutput,
    validate_matryoshka_dims,
)
from prismrl.losses.multimodal import (
    MultimodalLossOutput,
    multimodal_contrastive_loss,
    pair_name,
)

__all__ = [
    "MultimodalLossOutput",
    "multimodal_contrastive_loss",
    "pair_name",
    "CONTRASTIVE_LOSSES",
    "ClipLoss",
    "ContrastiveKind",
    "ContrastiveLoss",
    "MatryoshkaContrastiveLoss",
    "MatryoshkaLossOutput",
    "SigLipLoss",
    "build_contrastive_loss",
    "gather_features",
    "rank_and_world",
    "validate_matryoshka_dims",
]
