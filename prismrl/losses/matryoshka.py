"""Matryoshka (nested-prefix) contrastive loss, pure torch.

For every prefix dim d in ``dims`` the first d coordinates of the unnormalized features are
L2-normalized and scored by one shared base contrastive loss (one temperature / bias for all dims):

    total = full_dim_weight * L(D) + mrl_weight * MRL,   MRL = sum_d w_d L(d) / sum_d w_d

The MRL term is a weighted *mean*, so its scale does not grow with the number of dims. With
``sample_single_dim`` a training step scores one dim d drawn uniformly from ``dims`` with torch's
global RNG and uses MRL = (n * w_d / sum_w) * L(d), an unbiased estimate of the weighted mean
(= L(d) for equal weights). Under DDP the index drawn on rank 0 is broadcast so that every rank
scores the same dim (the gathers inside the base loss need equal shapes). In eval mode every dim is
scored, so validation reports all of them and consumes no RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from prismrl.losses.contrastive import ContrastiveLoss
from prismrl.losses.gather import rank_and_world


@dataclass
class MatryoshkaLossOutput:
    """total: weighted sum to optimize; full: L(D); per_dim: L(d) for the dims scored this step;
    mrl: the (weighted-mean) MRL term, zero when no dims are configured."""

    total: Tensor
    full: Tensor
    per_dim: dict[int, Tensor]
    mrl: Tensor


def validate_matryoshka_dims(dims: Sequence[int], full_dim: int | None, field: str = "dims") -> list[int]:
    """Return ``dims`` as a list after checking: strictly increasing positive ints, each <= full_dim (errors name ``field``)."""
    problem = ""
    if not isinstance(dims, Sequence) or isinstance(dims, str):
        problem = f"a {type(dims).__name__}, not a list"
    elif bad := [d for d in dims if not isinstance(d, int) or isinstance(d, bool) or d <= 0]:
        problem = f"{bad[0]!r} is not a positive int"
    elif bad := [(a, b) for a, b in zip(dims, dims[1:]) if a >= b]:
        problem = f"not strictly increasing at {bad[0][0]} -> {bad[0][1]}"
    elif full_dim is not None and dims and dims[-1] > full_dim:
        problem = f"{dims[-1]} exceeds the full feature dim {full_dim}"
    if problem:
        bound = f" and <= full_dim={full_dim}" if full_dim is not None else ""
        raise ValueError(f"{field}: expected strictly increasing positive ints{bound}, received {dims!r} ({problem})")
    return list(dims)


class MatryoshkaContrastiveLoss(nn.Module):
    """Base contrastive loss at the full dim plus a weighted mean over nested prefix dims."""

    def __init__(
        self,
        base_loss: ContrastiveLoss,
        dims: Sequence[int] = (),
        dim_weights: Sequence[float] | None = None,
        sample_single_dim: bool = False,
        full_dim_weight: float = 1.0,
        mrl_weight: float = 1.0,
        full_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base_loss, nn.Module):
            raise TypeError(f"base_loss: expected a contrastive loss nn.Module, received {type(base_loss).__name__}")
        self.dims = validate_matryoshka_dims(dims, full_dim)
        weights = [1.0] * len(self.dims) if dim_weights is None else [float(w) for w in dim_weights]
        if len(weights) != len(self.dims) or any(w < 0 for w in weights) or (weights and sum(weights) <= 0):
            raise ValueError(
                f"dim_weights: expected {len(self.dims)} non-negative floats with a positive sum "
                f"(one per dim in {self.dims}), received {dim_weights!r}"
            )
        for name, value in (("full_dim_weight", full_dim_weight), ("mrl_weight", mrl_weight)):
            if not value >= 0:
                raise ValueError(f"{name}: expected a non-negative float, received {value!r}")
        self.base_loss = base_loss
        self.dim_weights = weights
        self.sample_single_dim = sample_single_dim
        self.full_dim_weight = float(full_dim_weight)
        self.mrl_weight = float(mrl_weight)
        self.full_dim = full_dim

    def _score(self, image: Tensor, text: Tensor, dim: int, pair_mask: Tensor | None) -> Tensor:
        """Base loss on the first ``dim`` coordinates, L2-normalized."""
        image_d = F.normalize(image[:, :dim], dim=-1)  # [B, dim]
        text_d = F.normalize(text[:, :dim], dim=-1)  # [B, dim]
        return self.base_loss(image_d, text_d, pair_mask)

    def _sample_index(self, device: torch.device) -> int:
        """Uniform index into ``dims`` from the global RNG; rank 0's draw is broadcast under DDP."""
        index = torch.randint(len(self.dims), (1,))
        _, world = rank_and_world()
        if world > 1:
            index = index.to(device)
            dist.broadcast(index, src=0)
        return int(index.item())

    def forward(
        self, image_features: Tensor, text_features: Tensor, pair_mask: Tensor | None = None
    ) -> MatryoshkaLossOutput:
        """image_features, text_features: UNNORMALIZED [B, D]; pair_mask: [B] bool or None."""
        if image_features.dim() != 2 or image_features.shape != text_features.shape:
            raise ValueError(
                "image_features/text_features: expected equal shapes [B, D], received "
                f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
            )
        full_dim = image_features.shape[1]
        if self.full_dim is not None and full_dim != self.full_dim:
            raise ValueError(f"image_features: expected feature dim full_dim={self.full_dim}, received {full_dim}")
        validate_matryoshka_dims(self.dims, full_dim)
        full = self._score(image_features, text_features, full_dim, pair_mask)
        total_weight = sum(self.dim_weights)
        per_dim: dict[int, Tensor] = {}
        if not self.dims:
            mrl = torch.zeros((), dtype=full.dtype, device=full.device)
        elif self.sample_single_dim and self.training:
            i = self._sample_index(image_features.device)
            d = self.dims[i]
            per_dim[d] = full if d == full_dim else self._score(image_features, text_features, d, pair_mask)
            mrl = per_dim[d] * (len(self.dims) * self.dim_weights[i] / total_weight)
        else:
            for d in self.dims:
                per_dim[d] = full if d == full_dim else self._score(image_features, text_features, d, pair_mask)
            mrl = sum(w * per_dim[d] for d, w in zip(self.dims, self.dim_weights)) / total_weight
        total = self.full_dim_weight * full + self.mrl_weight * mrl
        return MatryoshkaLossOutput(total=total, full=full, per_dim=per_dim, mrl=mrl)
