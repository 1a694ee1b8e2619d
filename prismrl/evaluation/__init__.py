"""Pure-torch evaluation metrics: retrieval recall@k and zero-shot classification accuracy."""

from prismrl.evaluation.retrieval import (
    cosine_similarity_matrix,
    diagonal_positives,
    image_text_retrieval,
    positives_from_labels,
    recall_at_k,
    zero_shot_accuracy,
)

__all__ = [
    "cosine_similarity_matrix",
    "diagonal_positives",
    "image_text_retrieval",
    "positives_from_labels",
    "recall_at_k",
    "zero_shot_accuracy",
]
