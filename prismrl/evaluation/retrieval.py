"""Retrieval and zero-shot metrics over embeddings (pure torch).

Ranking convention: gallery items are sorted by similarity, descending; ties are broken by gallery
index (lower index first), so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from prismrl.choices import check_positive_int


def _describe(x: object) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _check_labels(name: str, labels: Tensor) -> None:
    is_int = isinstance(labels, Tensor) and not labels.dtype.is_floating_point and labels.dtype != torch.bool
    if not is_int or labels.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D integer tensor, received {_describe(labels)}")
    if labels.numel() and int(labels.min()) < -1:
        raise ValueError(f"{name}: expected class ids >= 0 or -1 (no class), received min {int(labels.min())}")


def diagonal_positives(n: int) -> Tensor:
    """[n, n] bool identity: query i's only positive is gallery item i (paired data)."""
    check_positive_int("n", n)
    return torch.eye(n, dtype=torch.bool)


def positives_from_labels(query_labels: Tensor, gallery_labels: Tensor) -> Tensor:
    """[N], [M] class ids -> [N, M] bool positives.

    pos[i, j] = (q_i == g_j and q_i >= 0)  or  (i == j and (q_i == -1 or g_j == -1)):
    items sharing a class are mutual positives; an item labelled -1 (no class) is positive only to
    the item with the same index, which requires N == M (paired queries and gallery).
    """
    _check_labels("query_labels", query_labels)
    _check_labels("gallery_labels", gallery_labels)
    q, g = query_labels, gallery_labels.to(query_labels.device)
    positives = (q[:, None] == g[None, :]) & (q[:, None] >= 0)  # [N, M]
    unlabeled_q, unlabeled_g = q == -1, g == -1
    if bool(unlabeled_q.any()) or bool(unlabeled_g.any()):
        if q.shape[0] != g.shape[0]:
            raise ValueError(
                "query_labels/gallery_labels: label -1 pairs item i with item i, which needs as many "
                f"queries as gallery items, received {q.shape[0]} and {g.shape[0]}"
            )
        idx = torch.arange(q.shape[0], device=q.device)
        diag = unlabeled_q | unlabeled_g  # [N]
        positives[idx[diag], idx[diag]] = True
    return positives


def recall_at_k(similarity: Tensor, positives: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """R@k = fraction of queries whose k most similar gallery items contain at least one positive.

    similarity: [N, M] float (higher = more similar); positives: [N, M] bool. k > M is clamped to M.
    Every query needs at least one positive, else ValueError.
    """
    if not isinstance(similarity, Tensor) or similarity.dim() != 2 or not similarity.is_floating_point():
        raise ValueError(f"similarity: expected a float tensor [N, M], received {_describe(similarity)}")
    if not isinstance(positives, Tensor) or positives.dtype != torch.bool or positives.shape != similarity.shape:
        raise ValueError(
            f"positives: expected a bool tensor of shape {tuple(similarity.shape)}, received {_describe(positives)}"
        )
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or k <= 0 for k in ks):
        raise ValueError(f"ks: expected a non-empty sequence of positive ints, received {ks!r}")
    num_queries, num_gallery = similarity.shape
    if num_queries == 0 or num_gallery == 0:
        raise ValueError(
            f"similarity: expected at least one query and one gallery item, received {tuple(similarity.shape)}"
        )
    has_positive = positives.any(dim=1)  # [N]
    if not bool(has_positive.all()):
        missing = (~has_positive).nonzero().flatten()
        raise ValueError(
            f"positives: every query needs at least one positive, {missing.numel()} of {num_queries} have none "
            f"(first query indices: {missing[:5].tolist()})"
        )
    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices  # [N, M]
    ranked = positives.to(similarity.device).gather(1, order)  # [N, M] positives in ranked order
    first_hit = ranked.float().argmax(dim=1)  # [N] 0-based rank of the best-ranked positive
    return {k: (first_hit < min(k, num_gallery)).float().mean().item() for k in ks}


def cosine_similarity_matrix(queries: Tensor, gallery: Tensor) -> Tensor:
    """[N, D], [M, D] -> [N, M] cosine similarities."""
    return F.normalize(queries.float(), dim=-1) @ F.normalize(gallery.float(), dim=-1).T


def image_text_retrieval(
    image_features: Tensor, text_features: Tensor, positives: Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Both directions: {"image_to_text/R@k": ..., "text_to_image/R@k": ...}.

    image_features: [N, D], text_features: [M, D], positives: [N, M] bool (image i vs text j).
    """
    similarity = cosine_similarity_matrix(image_features, text_features)  # [N, M]
    i2t = recall_at_k(similarity, positives, ks)
    t2i = recall_at_k(similarity.T, positives.T, ks)
    metrics = {f"image_to_text/R@{k}": v for k, v in i2t.items()}
    metrics.update({f"text_to_image/R@{k}": v for k, v in t2i.items()})
    return metrics


def zero_shot_accuracy(image_features: Tensor, class_features: Tensor, labels: Tensor) -> float:
    """Fraction of images whose most cosine-similar class embedding is their label.

    image_features: [N, D]; class_features: [C, D]; labels: [N] ints in [0, C). Ties go to the lower class id.
    """
    if image_features.dim() != 2 or class_features.dim() != 2 or image_features.shape[1] != class_features.shape[1]:
        raise ValueError(
            "image_features/class_features: expected [N, D] and [C, D] with the same D, received "
            f"{tuple(image_features.shape)} and {tuple(class_features.shape)}"
        )
    _check_labels("labels", labels)
    num_classes = class_features.shape[0]
    if labels.shape[0] != image_features.shape[0] or image_features.shape[0] == 0:
        raise ValueError(f"labels: expected shape [{image_features.shape[0]}] (N > 0), received {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(
            f"labels: expected class ids in [0, {num_classes}), "
            f"received range [{int(labels.min())}, {int(labels.max())}]"
        )
    predictions = cosine_similarity_matrix(image_features, class_features).argmax(dim=1)  # [N]
    return (predictions == labels.to(predictions.device)).float().mean().item()
