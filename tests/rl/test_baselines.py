"""RLOO and REINFORCE++-baseline advantages against hand-computed numbers and a naive loop."""

import pytest
import torch

from prismrl.rl.advantages import AdvantageScaling, group_normalized_advantages
from prismrl.rl.baselines import (
    AdvantageEstimator,
    estimate_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)


def test_rloo_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])  # two groups of 4; the second is constant
    # group 0: r_0 - mean(0, 0, 1) = 1 - 1/3 = 2/3; r_1 - mean(1, 0, 1) = -2/3
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(rloo_advantages(rewards, 4), expected)


def test_rloo_matches_a_naive_leave_one_out_loop():
    torch.manual_seed(0)
    rewards, group = torch.randn(12), 3
    naive = torch.empty(12)
    for i in range(12):
        start = i - i % group
        others = [rewards[j] for j in range(start, start + group) if j != i]
        naive[i] = rewards[i] - sum(others) / len(others)
    torch.testing.assert_close(rloo_advantages(rewards, group), naive)


def test_reinforce_pp_by_hand():
    rewards = torch.tensor([1.0, 0.0, 3.0, 1.0])  # groups of 2: centered (0.5, -0.5, 1, -1)
    centered = torch.tensor([0.5, -0.5, 1.0, -1.0])
    std = centered.std()  # mean is 0; Bessel-corrected std = sqrt(2.5 / 3)
    torch.testing.assert_close(reinforce_pp_advantages(rewards, 2, eps=0.0), centered / std)
    pooled = reinforce_pp_advantages(rewards, 2, eps=0.0, batch_mean=0.0, batch_std=2.0)
    torch.testing.assert_close(pooled, centered / 2.0)
    constant = reinforce_pp_advantages(torch.tensor([1.0, 1.0, 3.0, 1.0]), 2)
    assert constant[:2].tolist() == [0.0, 0.0]


def test_estimate_advantages_dispatches():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(estimate_advantages(AdvantageEstimator.GRPO, rewards, 2, AdvantageScaling.NONE),
                               group_normalized_advantages(rewards, 2, AdvantageScaling.NONE))
    torch.testing.assert_close(estimate_advantages(AdvantageEstimator.RLOO, rewards, 2), rloo_advantages(rewards, 2))
    with pytest.raises(TypeError, match="estimator: expected an AdvantageEstimator"):
        estimate_advantages("rloo", rewards, 2)
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(rewards, 1)
