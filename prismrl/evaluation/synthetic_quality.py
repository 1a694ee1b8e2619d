"""Distribution quality of labelled (synthetic) examples in an embedding space, pure torch.

With d the pairwise distance (cosine: 1 - cos(x_i, x_j); euclidean: ||x_i - x_j||), S(i) the other
examples of i's class and O(i) the examples of the other classes:

    intra_i = mean_{j in S(i)} d(i, j)          inter_i = mean_{j in O(i)} d(i, j)
    intra   = mean over same-class ordered pairs i != j     inter = mean over different-class pairs
    silhouette_i = (b_i - a_i) / max(a_i, b_i),  a_i = intra_i,  b_i = min over other classes c of mean_{j in c} d(i, j)

silhouette_i = 0 for an example alone in its class (scikit-learn's convention); the silhouette score is
the mean over examples and needs 2 <= number of classes <= N - 1 (else NaN). An example without partners
(alone in its class, or no other class present) gets intra_i / inter_i = NaN and is left out of the means.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from prismrl.choices import parse_choice


class DistanceMetric(str, Enum):
    COSINE = "cosine"
    EUCLIDEAN = "euclidean"


def parse_metric(value: str | DistanceMetric) -> DistanceMetric:
    return parse_choice(DistanceMetric, value, "metric")


def pairwise_distances(x: Tensor, metric: str | DistanceMetric = DistanceMetric.COSINE) -> Tensor:
    """[N, D] -> [N, N] distances (float64 for stable comparisons); zero diagonal."""
    if x.dim() != 2:
        raise ValueError(f"embeddings: expected shape [N, D], received {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if parse_metric(metric) is DistanceMetric.COSINE:
        unit = torch.nn.functional.normalize(x, dim=-1)
        dist = (1.0 - unit @ unit.T).clamp(min=0.0)
    else:
        dist = torch.cdist(x, x)
    return dist.fill_diagonal_(0.0)


@dataclass(frozen=True)
class ClassDistances:
    inter: float  # NaN when no different-class pair exists
    intra: float  # NaN when no same-class pair exists
    inter_per_sample: Tensor  # [N], NaN where undefined
    intra_per_sample: Tensor  # [N], NaN where undefined
    silhouette: float  # NaN unless 2 <= classes <= N - 1


def _masked_row_mean(dist: Tensor, mask: Tensor) -> Tensor:
    count = mask.sum(1).to(dist.dtype)  # [N]
    total = (dist * mask).sum(1)  # [N]
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def silhouette_samples(dist: Tensor, labels: Tensor) -> Tensor:
    """Per-example silhouette [N] from a distance matrix [N, N] and labels [N] (formula in the module docstring)."""
    classes = labels.unique()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=dist.device)
    a = _masked_row_mean(dist, same & ~eye)  # [N]
    per_class = torch.stack([_masked_row_mean(dist, (labels == c)[None, :].expand_as(dist)) for c in classes], 1)
    per_class = per_class.masked_fill(labels[:, None] == classes[None, :], float("inf"))  # [N, C]
    b = per_class.min(1).values  # [N]
    s = (b - a) / torch.maximum(a, b)
    alone = same.sum(1) == 1
    return torch.where(alone | torch.isnan(s), torch.zeros_like(s), s)


def class_distances(
    embeddings: Tensor, labels: Tensor, metric: str | DistanceMetric = DistanceMetric.COSINE
) -> ClassDistances:
    """Inter/intra-class distances (per sample and overall) and the silhouette score of ``embeddings`` [N, D]."""
    labels = torch.as_tensor(labels).to(embeddings.device).long().flatten()
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels: expected {embeddings.shape[0]} labels (one per embedding), received {labels.shape[0]}")
    dist = pairwise_distances(embeddings, metric)  # [N, N]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=dist.device)
    intra_mask, inter_mask = same & ~eye, ~same
    nan = float("nan")
    intra = float(dist[intra_mask].mean()) if intra_mask.any() else nan
    inter = float(dist[inter_mask].mean()) if inter_mask.any() else nan
    n_classes = len(labels.unique())
    silhouette = float(silhouette_samples(dist, labels).mean()) if 2 <= n_classes <= len(labels) - 1 else nan
    return ClassDistances(inter, intra, _masked_row_mean(dist, inter_mask), _masked_row_mean(dist, intra_mask), silhouette)
