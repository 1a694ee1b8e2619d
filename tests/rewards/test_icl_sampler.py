"""ICL sampler: balanced really is balanced, diverse spreads wider than random, seeded draws, bad pools."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from prismrl.rewards.icl_sampler import ICLSampler, farthest_point_indices


def _spread(embeddings: torch.Tensor, indices: list[int]) -> float:
    unit = torch.nn.functional.normalize(embeddings[indices], dim=-1)
    return float(np.mean([1 - float(unit[i] @ unit[j]) for i, j in itertools.combinations(range(len(indices)), 2)]))


def test_balanced_takes_k_over_c_per_class_every_draw():
    labels = [0] * 30 + [1] * 5 + [2] * 12
    sampler = ICLSampler(labels, k=6, strategy="balanced", seed=3)
    for step in range(50):
        picked = sampler.sample(step)
        assert len(set(picked)) == 6
        assert sorted(np.bincount([labels[i] for i in picked], minlength=3).tolist()) == [2, 2, 2]


def test_draws_are_a_function_of_seed_and_step():
    sampler = ICLSampler([0, 1] * 20, k=4, strategy="random", seed=0)
    assert sampler.sample(5) == sampler.sample(5) == ICLSampler([0, 1] * 20, k=4, strategy="random", seed=0).sample(5)
    assert sampler.sample(5) != sampler.sample(6)
    assert ICLSampler([0, 1] * 20, k=4, strategy="random", seed=1).sample(5) != sampler.sample(5)


def test_diverse_beats_random_on_spread():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen) * 3
    embeddings = torch.cat([c + 0.3 * torch.randn(25, 16, generator=gen) for c in centres])  # 4 tight clusters
    labels = [i % 2 for i in range(100)]
    diverse = ICLSampler(labels, k=4, strategy="diverse", embeddings=embeddings, seed=0)
    random = ICLSampler(labels, k=4, strategy="random", seed=0)
    d = np.mean([_spread(embeddings, diverse.sample(s)) for s in range(20)])
    r = np.mean([_spread(embeddings, random.sample(s)) for s in range(20)])
    assert d > r + 0.1
    assert all(len({i // 25 for i in diverse.sample(s)}) == 4 for s in range(20))  # one example per cluster


def test_farthest_point_against_hand_example():
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    assert farthest_point_indices(points, 3, first=0) == [0, 3, 2]


def test_bad_pools_fail_with_named_errors():
    with pytest.raises(ValueError, match="at least 2 classes"):
        ICLSampler([0, 0, 0], k=2, strategy="random")
    with pytest.raises(ValueError, match="class 1 has no examples"):
        ICLSampler([0, 2, 2, 0], k=2, strategy="random")
    with pytest.raises(ValueError, match="needs 2 examples per class; class 1 has 1"):
        ICLSampler([0, 0, 0, 1], k=4, strategy="balanced")
    with pytest.raises(ValueError, match="multiple of the 2 classes"):
        ICLSampler([0, 1] * 5, k=3, strategy="balanced")
    with pytest.raises(ValueError, match="at most the 4 pool examples"):
        ICLSampler([0, 1, 0, 1], k=5, strategy="random")
    with pytest.raises(ValueError, match="embeddings: strategy 'diverse' needs a \\[4, D\\]"):
        ICLSampler([0, 1, 0, 1], k=2, strategy="diverse")
    with pytest.raises(ValueError, match="strategy: expected one of"):
        ICLSampler([0, 1], k=2, strategy="kmeans")
