"""Image-text contrastive losses: CLIP (softmax InfoNCE) and SigLIP (pairwise sigmoid), pure torch.

Both take L2-normalized features [B, D] and own the cross-rank gather ("local loss"): each rank
scores its B local rows against the B * world gathered columns (gathered with gradient). Both
normalize by ``n_valid_global / world`` (= B when every pair is valid), which makes this exact:

    mean over ranks of the per-rank losses == the single-process loss on the concatenated batch,

and, because DDP averages parameter gradients over ranks, the DDP gradients equal the
single-process gradients too. This needs the same local batch size on every rank.

``pair_mask`` [B] bool marks the rows that are valid pairs (e.g. False where a sample lacks a
modality). Invalid pairs are removed from the rows and from the columns (their logits become -inf
for CLIP, their terms are dropped for SigLIP); the mask is gathered across ranks, so it works
under DDP as well. With no valid pair anywhere the loss is a graph-connected zero.

The learnable ``logit_scale`` s is stored as log(1 / temperature). Clamping: at the start of every
forward the stored value is clamped *in place* (under no_grad) to at most log(max_logit_scale), the
way open_clip clamps after each optimizer step; gradients can therefore move it back down.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prismrl.losses.gather import gather_features, rank_and_world


class ContrastiveLoss(nn.Module):
    """Shared parts of the contrastive losses: logit scale, clamping, input checks, pair masks."""

    def __init__(
        self,
        init_temperature: float,
        learnable_temperature: bool = True,
        max_logit_scale: float | None = 100.0,
    ) -> None:
        super().__init__()
        if not init_temperature > 0:
            raise ValueError(f"init_temperature: expected a positive float, received {init_temperature!r}")
        if max_logit_scale is not None and not max_logit_scale > 0:
            raise ValueError(f"max_logit_scale: expected a positive float or None, received {max_logit_scale!r}")
        self.max_logit_scale = max_logit_scale
        log_scale = torch.tensor(math.log(1.0 / init_temperature))
        if learnable_temperature:
            self.logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("logit_scale", log_scale)

    def _max_log_scale(self) -> float:
        return math.inf if self.max_logit_scale is None else math.log(self.max_logit_scale)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the stored log scale in place so that exp(logit_scale) <= max_logit_scale."""
        if self.max_logit_scale is not None:
            self.logit_scale.clamp_(max=self._max_log_scale())

    @property
    def temperature(self) -> Tensor:
        """1 / exp(logit_scale) after clamping, detached (a 0-d tensor for logging)."""
        return torch.exp(-self.logit_scale.detach().clamp(max=self._max_log_scale()))

    def _prepare(
        self, image_features: Tensor, text_features: Tensor, pair_mask: Tensor | None
    ) -> tuple[int, Tensor | None, Tensor | None, Tensor | float]:
        """Check inputs, clamp s, gather the mask. Returns rank, row mask [B], column mask [B * world]
        (both None when no mask was given) and the normalizer n_valid_global / world."""
        for name, x in (("image_features", image_features), ("text_features", text_features)):
            if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
                received = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"{name}: expected a float tensor of shape [B, D], received {received}")
        if image_features.shape != text_features.shape:
            raise ValueError(
                "image_features/text_features: expected equal shapes [B, D], received "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
            )
        batch = image_features.shape[0]
        self.clamp_logit_scale_()
        rank, world = rank_and_world()
        if pair_mask is None:
            return rank, None, None, float(batch)
        if not isinstance(pair_mask, Tensor) or pair_mask.dtype != torch.bool or tuple(pair_mask.shape) != (batch,):
            received = f"{pair_mask.dtype} {tuple(pair_mask.shape)}" if isinstance(pair_mask, Tensor) else type(pair_mask)
            raise ValueError(f"pair_mask: expected a bool tensor of shape [{batch}], received {received}")
        row_mask = pair_mask.to(image_features.device)
        col_mask = gather_features(row_mask.to(image_features.dtype), gather_with_grad=False) > 0.5  # [B * W]
        # n_valid_global is an integer, so n / world >= 1 / world whenever a pair is valid; with no valid
        # pair the loss sum is an exact (graph-connected) zero, and the clamp only avoids 0 / 0.
        norm = (col_mask.sum().float() / world).clamp(min=1.0 / world)
        return rank, row_mask, col_mask, norm


class ClipLoss(ContrastiveLoss):
    """Symmetric InfoNCE: L = ( CE(s * I T^T, y) + CE(s * T I^T, y) ) / 2, y_i = i.

    Under DDP, rank r uses logits of its rows vs all gathered columns, y = arange(B) + r * B.
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        learnable_temperature: bool = True,
        max_logit_scale: float | None = 100.0,
    ) -> None:
        super().__init__(init_temperature, learnable_temperature, max_logit_scale)

    def forward(self, image_features: Tensor, text_features: Tensor, pair_mask: Tensor | None = None) -> Tensor:
        """image_features, text_features: [B, D] L2-normalized; pair_mask: [B] bool or None -> scalar."""
        rank, row_mask, col_mask, norm = self._prepare(image_features, text_features, pair_mask)
        scale = self.logit_scale.exp()
        batch = image_features.shape[0]
        all_images = gather_features(image_features)  # [B * W, D]
        all_texts = gather_features(text_features)  # [B * W, D]
        labels = torch.arange(batch, device=image_features.device) + rank * batch  # [B]
        if row_mask is not None:
            image_features, text_features, labels = image_features[row_mask], text_features[row_mask], labels[row_mask]
        logits_image = scale * image_features @ all_texts.T  # [B_valid, B * W]
        logits_text = scale * text_features @ all_images.T  # [B_valid, B * W]
        if col_mask is not None:
            logits_image = logits_image.masked_fill(~col_mask[None, :], float("-inf"))
            logits_text = logits_text.masked_fill(~col_mask[None, :], float("-inf"))
        loss_sum = F.cross_entropy(logits_image, labels, reduction="sum") + F.cross_entropy(
            logits_text, labels, reduction="sum"
        )
        return loss_sum / 2 / norm


class SigLipLoss(ContrastiveLoss):
    """Pairwise sigmoid loss: L = -sum_{i,j} log sigmoid( z_ij * (s * x_i . y_j + b) ) / B,
    z_ij = +1 if i == j else -1.

    Under DDP, rank r scores its B images against all B * world gathered texts, with the positive of
    local row i at column i + r * B, and divides by B.
    """

    def __init__(
        self,
        init_temperature: float = 0.1,
        init_bias: float = -10.0,
        learnable_temperature: bool = True,
        learnable_bias: bool = True,
        max_logit_scale: float | None = None,
    ) -> None:
        super().__init__(init_temperature, learnable_temperature, max_logit_scale)
        bias = torch.tensor(float(init_bias))
        if learnable_bias:
            self.logit_bias = nn.Parameter(bias)
        else:
            self.register_buffer("logit_bias", bias)

    def forward(self, image_features: Tensor, text_features: Tensor, pair_mask: Tensor | None = None) -> Tensor:
        """image_features, text_features: [B, D] L2-normalized; pair_mask: [B] bool or None -> scalar."""
        rank, row_mask, col_mask, norm = self._prepare(image_features, text_features, pair_mask)
        batch = image_features.shape[0]
        all_texts = gather_features(text_features)  # [B * W, D]
        logits = self.logit_scale.exp() * image_features @ all_texts.T + self.logit_bias  # [B, B * W]
        signs = -torch.ones_like(logits)  # [B, B * W]
        rows = torch.arange(batch, device=logits.device)
        signs[rows, rows + rank * batch] = 1.0
        log_probs = F.logsigmoid(signs * logits)  # [B, B * W]
        if row_mask is not None:
            log_probs = log_probs[row_mask][:, col_mask]  # [B_valid, n_valid_global]
        return -log_probs.sum() / norm


class ContrastiveKind(str, Enum):
    """Names of the contrastive losses (config values)."""

    clip = "clip"
    siglip = "siglip"


CONTRASTIVE_LOSSES: dict[ContrastiveKind, type[ContrastiveLoss]] = {
    ContrastiveKind.clip: ClipLoss,
    ContrastiveKind.siglip: SigLipLoss,
}


def build_contrastive_loss(kind: ContrastiveKind | str, **kwargs: object) -> ContrastiveLoss:
    """Build the loss registered under ``kind`` ("clip" or "siglip") with its constructor kwargs."""
    try:
        key = ContrastiveKind(kind)
    except ValueError:
        choices = [k.value for k in ContrastiveKind]
        raise ValueError(f"kind: expected one of {choices}, received {kind!r}") from None
    return CONTRASTIVE_LOSSES[key](**kwargs)
