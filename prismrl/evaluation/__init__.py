"""Evaluation metrics: retrieval recall@k, zero-shot accuracy, class distances and silhouette of embeddings."""

from prismrl.evaluation.retrieval import (
    cosine_similarity_matrix,
    diagonal_positives,
    image_text_retrieval,
    positives_from_labels,
    recall_at_k,
    zero_shot_accuracy,
)
from prismrl.evaluation.synthetic_quality import (
    class_distances,
    pairwise_distances,
    silhouette_samples,
)

__all__ = [
    "class_distances",
    "pairwise_distances",
    "silhouette_samples",
    "cosine_similarity_matrix",
    "diagonal_positives",
    "image_text_retrieval",
    "positives_from_labels",
    "recall_at_k",
    "zero_shot_accuracy",
]
