"""Retrieval metrics on hand-computed examples."""

from __future__ import annotations

import pytest
import torch

from prismrl.evaluation import (
    diagonal_positives,
    image_text_retrieval,
    positives_from_labels,
    recall_at_k,
    zero_shot_accuracy,
)


def test_recall_at_k_hand_computed_with_shared_classes() -> None:
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.3],  # q0 ranks g0, g2, g3, g1 -> first positive (g3) at rank 3
            [0.75, 0.8, 0.2, 0.1],  # q1 ranks g1, g0, ... -> positive g0 at rank 2
            [0.4, 0.4, 0.9, 0.6],  # q2 ranks g2 first -> rank 1
        ]
    )
    positives = positives_from_labels(torch.tensor([0, 1, 2]), torch.tensor([1, 0, 2, 0]))
    expected_positives = torch.tensor(
        [[False, True, False, True], [True, False, False, False], [False, False, True, False]]
    )
    assert torch.equal(positives, expected_positives)
    recall = recall_at_k(similarity, positives, ks=(1, 2, 3, 10))
    assert recall == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0, 10: 1.0})


def test_k_larger_than_gallery_is_clamped_and_ties_go_to_lower_index() -> None:
    similarity = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.3, 0.3]])
    positives = torch.tensor([[False, True, False], [False, False, True]])
    # q0: tie between g0 and g1 -> g0 first, positive g1 at rank 2; q1: g1 before g2 -> rank 2
    assert recall_at_k(similarity, positives, ks=(1, 2, 50)) == {1: 0.0, 2: 1.0, 50: 1.0}


def test_label_minus_one_is_positive_only_on_the_diagonal() -> None:
    positives = positives_from_labels(torch.tensor([0, -1, 0, 2]), torch.tensor([0, 1, -1, -1]))
    expected = torch.tensor(
        [
            [True, False, False, False],  # class 0 matches g0 only
            [False, True, False, False],  # unlabeled query: own index only (g1's class 1 does not count)
            [True, False, True, False],  # class 0 -> g0, and g2 is unlabeled with the same index
            [False, False, False, True],  # class 2 matches nothing; unlabeled g3 pairs with q3
        ]
    )
    assert torch.equal(positives, expected)
    # -1 never matches another -1 off the diagonal
    unlabeled = torch.tensor([-1, -1])
    assert torch.equal(positives_from_labels(unlabeled, unlabeled), torch.eye(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="label -1 pairs item i with item i.*received 2 and 3"):
        positives_from_labels(torch.tensor([0, -1]), torch.tensor([0, 1, 1]))
    assert positives_from_labels(torch.tensor([0, 1]), torch.tensor([1, 1, 0])).shape == (2, 3)


def test_diagonal_positives_and_image_text_retrieval() -> None:
    assert torch.equal(diagonal_positives(3), torch.eye(3, dtype=torch.bool))
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    texts = torch.tensor([[2.0, 0.1], [0.0, 5.0], [-1.0, 0.0]])
    metrics = image_text_retrieval(images, texts, diagonal_positives(3), ks=(1, 3))
    # image 2 ([1,1]) ranks text0 (cos .77) > text1 (.71) > text2 (-.71): miss at R@1
    # text 2 ([-1,0]) ranks image1 (0) > image2 (-.71) > image0 (-1): miss at R@1
    assert metrics == pytest.approx(
        {"image_to_text/R@1": 2 / 3, "image_to_text/R@3": 1.0, "text_to_image/R@1": 2 / 3, "text_to_image/R@3": 1.0}
    )


def test_recall_rejects_queries_without_positives_and_bad_inputs() -> None:
    similarity = torch.rand(3, 4)
    positives = torch.zeros(3, 4, dtype=torch.bool)
    positives[0, 1] = True
    with pytest.raises(ValueError, match="2 of 3 have none \\(first query indices: \\[1, 2\\]\\)"):
        recall_at_k(similarity, positives)
    with pytest.raises(ValueError, match="positives: expected a bool tensor of shape \\(3, 4\\)"):
        recall_at_k(similarity, positives.float())
    with pytest.raises(ValueError, match="ks: expected a non-empty sequence of positive ints"):
        recall_at_k(similarity, torch.ones(3, 4, dtype=torch.bool), ks=(0,))
    with pytest.raises(ValueError, match="query_labels: expected a 1-D integer tensor"):
        positives_from_labels(torch.tensor([0.5]), torch.tensor([0]))


def test_zero_shot_accuracy_uses_cosine_argmax() -> None:
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.1, 10.0]])
    classes = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # unnormalized: cosine, not dot product, decides
    # predictions: 0, 1, 0 (tie -> lower id), 1, 1
    labels = torch.tensor([0, 1, 1, 1, 1])
    assert zero_shot_accuracy(images, classes, labels) == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="labels: expected class ids in \\[0, 2\\), received range \\[0, 2\\]"):
        zero_shot_accuracy(images, classes, torch.tensor([0, 1, 2, 1, 1]))
    with pytest.raises(ValueError, match="same D"):
        zero_shot_accuracy(images, torch.randn(2, 3), labels)
