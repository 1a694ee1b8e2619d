"""Pairwise contrastive + Matryoshka loss over several modalities with missing-modality masks, pure torch.

For modalities m (e.g. image, text, audio) with UNNORMALIZED features z_m [B, D] and presence masks
p_m [B] (True = the sample has that modality), every configured pair (a, b) is scored by its own
``MatryoshkaContrastiveLoss`` (own temperature) on the rows where both are present:

    total = sum_{(a, b)} w_ab * L_ab(z_a, z_b, pair_mask = p_a & p_b)

A row missing a modality drops out of that pair's rows and columns only (see ``ClipLoss``: the masked
loss equals the loss on the sub-batch of rows where both are present), and a pair with no present row
contributes a graph-connected zero. So with a modality missing everywhere, the total is the weighted
loss of the remaining pairs; e.g. image-text-audio with no audio at all gives w_it * L_it, the bi-modal
loss. Masks are gathered across ranks inside the base losses, so this holds under DDP too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from prismrl.losses.matryoshka import MatryoshkaContrastiveLoss, MatryoshkaLossOutput

Pair = tuple[str, str]


@dataclass
class MultimodalLossOutput:
    """total: sum_p w_p L_p; pairs: each pair's Matryoshka output; present: rows of this batch (this rank)
    where both modalities of the pair are present."""

    total: Tensor
    pairs: dict[Pair, MatryoshkaLossOutput]
    present: dict[Pair, int]


def pair_name(pair: Pair) -> str:
    """("audio", "text") -> "audio_text" (used for module keys and metric names)."""
    return f"{pair[0]}_{pair[1]}"


def _presence(name: str, masks: Mapping[str, Tensor | None], batch: int, device: torch.device) -> Tensor | None:
    mask = masks.get(name)
    if mask is None:
        return None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (batch,):
        received = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"presence[{name!r}]: expected a bool tensor of shape [{batch}], received {received}")
    return mask.to(device)


def multimodal_contrastive_loss(
    features: Mapping[str, Tensor],
    pair_losses: Mapping[Pair, MatryoshkaContrastiveLoss],
    presence: Mapping[str, Tensor | None] | None = None,
    pair_weights: Mapping[Pair, float] | None = None,
) -> MultimodalLossOutput:
    """Weighted sum of the pairwise Matryoshka contrastive losses.

    features: modality -> [B, D] unnormalized (the same B for all); pair_losses: (a, b) -> loss scoring
    z_a against z_b; presence: modality -> [B] bool or None (None / absent = present in every row);
    pair_weights: (a, b) -> w_ab >= 0 (default 1 for every pair).
    """
    if not pair_losses:
        raise ValueError("pair_losses: expected at least one (modality, modality) pair, received none")
    presence, pair_weights = presence or {}, pair_weights or {}
    sizes = {name: int(x.shape[0]) for name, x in features.items() if isinstance(x, Tensor) and x.dim() == 2}
    if len(sizes) != len(features) or len(set(sizes.values())) > 1:
        shapes = {name: tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__ for name, x in features.items()}
        raise ValueError(f"features: expected [B, D] tensors with one common B, received {shapes}")
    if unknown := [p for p in [*pair_losses, *pair_weights] if not set(p) <= set(features)]:
        raise ValueError(f"pairs: {unknown[0]} names a modality without features; modalities: {sorted(features)}")
    if bad := {p: w for p, w in pair_weights.items() if not w >= 0}:
        raise ValueError(f"pair_weights: expected non-negative weights, received {bad}")
    batch = next(iter(sizes.values()))
    total: Tensor | None = None
    outputs: dict[Pair, MatryoshkaLossOutput] = {}
    present: dict[Pair, int] = {}
    for pair, loss in pair_losses.items():
        a, b = pair
        device = features[a].device
        mask_a, mask_b = (_presence(m, presence, batch, device) for m in pair)
        mask = mask_a if mask_b is None else (mask_b if mask_a is None else mask_a & mask_b)  # [B] or None
        outputs[pair] = loss(features[a], features[b], mask)
        present[pair] = batch if mask is None else int(mask.sum())
        term = float(pair_weights.get(pair, 1.0)) * outputs[pair].total
        total = term if total is None else total + term
    return MultimodalLossOutput(total=total, pairs=outputs, present=present)


__all__ = ["MultimodalLossOutput", "Pair", "multimodal_contrastive_loss", "pair_name"]
