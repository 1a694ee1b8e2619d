"""Classifier-in-the-loop reward: reset + train + golden eval, per-sample combination, failures, bad weights."""

from __future__ import annotations

import logging

import pytest
import torch

from prismrl.backbones.text import HFTextEncoder
from prismrl.backbones.text_classifier import TextClassifier
from prismrl.data.golden_text import load_golden_texts, split_golden
from prismrl.evaluation.synthetic_quality import class_distances
from prismrl.rewards.classifier import ClassifierReward, RewardWeights
from prismrl.rewards.normalizer import RewardNormalizer

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "vocab_size": 30522, "max_position_embeddings": 64}
TEXTS = ["a wonderful warm film", "dull and tedious mess", "great acting and a fine story", "boring , silly plot",
         "bright and funny", "an awful waste of time"]
LABELS = [1, 0, 1, 0, 1, 0]


@pytest.fixture()
def tiny_classifier():
    torch.manual_seed(0)
    return TextClassifier(HFTextEncoder(tiny_config=TINY_BERT, max_length=16), num_classes=2, dropout=0.0)


def _reward(classifier, weights=RewardWeights(), **kwargs):
    return ClassifierReward(classifier, TEXTS[:4], LABELS[:4], weights, train_steps=3, lr=1e-2, **kwargs)


def test_classifier_is_reset_before_training_and_rewards_combine_per_sample(tiny_classifier):
    reward = _reward(tiny_classifier, RewardWeights(inter=1.0, intra=0.0, golden_loss=0.0), metric="euclidean")
    start = {k: v.clone() for k, v in tiny_classifier.state_dict().items()}
    norm = RewardNormalizer()
    valid = [True, True, True, True, True, False]
    out = reward(TEXTS, LABELS, valid, norm)
    assert out.num_valid == 5 and out.rewards[5] == -0.0 - 0.0  # failure reward -(w2 + w3)
    assert any(not torch.equal(v, start[k]) for k, v in tiny_classifier.state_dict().items())  # trained
    dist = class_distances(reward.embed_texts(TEXTS[:5]), torch.tensor(LABELS[:5]), "euclidean")
    inter = dist.inter_per_sample
    expected = (inter - inter.min()) / (inter.max() - inter.min())  # first update: history = this batch
    torch.testing.assert_close(out.rewards[:5].double(), expected, atol=1e-5, rtol=0)
    assert out.raw["inter"] == pytest.approx(dist.inter, rel=1e-5)
    reward.reset()
    for k, v in tiny_classifier.state_dict().items():
        torch.testing.assert_close(v, start[k])
    # a second identical call trains from the same start: same golden loss (global RNG re-seeded)
    torch.manual_seed(1)
    first = reward(TEXTS, LABELS, valid, norm).golden_loss
    torch.manual_seed(1)
    assert reward(TEXTS, LABELS, valid, norm).golden_loss == pytest.approx(first, rel=1e-6)


def test_full_formula_with_all_components(tiny_classifier):
    w = RewardWeights(inter=0.5, intra=2.0, golden_loss=1.5)
    reward = _reward(tiny_classifier, w, failure_reward=-9.0)
    norm = RewardNormalizer()
    norm.update("golden_loss", [0.0, 10.0])  # fixed history so the golden term is loss / 10
    out = reward(TEXTS, LABELS, [True] * 6, norm)
    dist = class_distances(reward.embed_texts(TEXTS), torch.tensor(LABELS), "cosine")
    scale = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    expected = 0.5 * scale(dist.inter_per_sample) - 2.0 * scale(dist.intra_per_sample) - 1.5 * out.golden_loss / 10.0
    torch.testing.assert_close(out.rewards.double(), expected, atol=1e-5, rtol=0)
    assert 0.0 <= out.golden_accuracy <= 1.0 and -1.0 <= out.silhouette <= 1.0


def test_all_unparseable_batch_gives_defined_rewards_and_a_warning(tiny_classifier, caplog):
    reward = _reward(tiny_classifier, failure_reward=-1.0)
    norm = RewardNormalizer()
    with caplog.at_level(logging.WARNING, logger="prismrl.rewards.classifier"):
        out = reward(["", "", ""], [0, 1, 0], [False, False, False], norm)
    assert "no parseable generation" in caplog.text
    assert out.rewards.tolist() == [-1.0, -1.0, -1.0] and out.num_valid == 0
    assert out.golden_loss > 0 and 0.0 <= out.golden_accuracy <= 1.0
    assert all(norm.bounds(c) is None for c in norm.components)


def test_bad_weights_and_inputs(tiny_classifier):
    with pytest.raises(ValueError, match="reward_weights: expected at least one non-zero weight"):
        RewardWeights(0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="reward_weights.intra: expected a finite float >= 0"):
        RewardWeights(intra=-1.0)
    reward = _reward(tiny_classifier)
    with pytest.raises(ValueError, match="texts / labels / valid"):
        reward(TEXTS, LABELS[:2], [True] * 6, RewardNormalizer())
    with pytest.raises(ValueError, match="normalizer: expected the components"):
        reward(TEXTS, LABELS, [True] * 6, RewardNormalizer(["inter"]))


def test_real_golden_set_and_shipped_minilm_reward_good_data():
    """Frozen MiniLM + linear head: training on real examples beats training on label-swapped ones."""
    train, val, _ = split_golden(load_golden_texts(), 0.25, 0.25, seed=0)
    torch.manual_seed(0)
    classifier = TextClassifier(HFTextEncoder("shipped:all-minilm-l6-v2", freeze=True, max_length=48), 2, dropout=0.0)
    reward = ClassifierReward(classifier, val.texts, val.labels, train_steps=30, lr=1e-2)
    n = len(train)
    good = reward(train.texts, train.labels, [True] * n, RewardNormalizer())
    swapped = reward(train.texts, [1 - y for y in train.labels], [True] * n, RewardNormalizer())
    assert good.golden_accuracy >= 0.6 and swapped.golden_accuracy <= 0.4
    assert good.golden_loss < swapped.golden_loss
