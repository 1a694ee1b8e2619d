"""Per-turn advantages: return-to-go, group normalization over every valid turn of a group, per-token spread;
against hand numbers and a naive loop, with masked (absent) turns."""

from __future__ import annotations

import math

import pytest
import torch

from prismrl.rl.advantages import AdvantageScaling, group_normalized_advantages
from prismrl.rl.turn_rewards import returns_to_go, token_advantages, turn_advantages


def naive(rewards: list[list[float]], group_size: int, scale: bool = True, eps: float = 1e-4) -> list[list[float]]:
    """The module docstring's formula, one number at a time (rows hold only their valid turns)."""
    rtg = [[sum(row[k:]) for k in range(len(row))] for row in rewards]
    out = []
    for g in range(0, len(rewards), group_size):
        values = [v for row in rtg[g:g + group_size] for v in row]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        constant = max(values) == min(values)
        for row in rtg[g:g + group_size]:
            out.append([0.0 if constant else (v - mean) / ((std + eps) if scale else 1.0) for v in row])
    return out


def dense(rows: list[list[float]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, row in enumerate(rows):
        values[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), True
    return values, mask


def test_returns_to_go_by_hand_with_masked_turns():
    rewards = torch.tensor([[0.2, 1.0, 0.0], [0.5, 7.0, 9.0]])  # row 1 has one turn: the 7 and 9 are padding
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(returns_to_go(rewards, mask), torch.tensor([[1.2, 1.0, 0.0], [0.5, 0.0, 0.0]]))


@pytest.mark.parametrize("scale", [True, False])
def test_turn_advantages_match_the_naive_loop(scale):
    rows = [[0.2, 1.0], [0.2, 0.0], [0.0], [1.0],  # group 0: 2, 2, 1 and 1 turns
            [0.1, 0.1, 0.1], [0.3], [0.0, 0.3], [0.15, 0.15]]  # group 1: returns-to-go 0.3 .. -> not constant
    values, mask = dense(rows, 3)
    values[2, 2] = values[3, 1] = 100.0  # padding must not count
    out = turn_advantages(values, mask, 4, scale)
    expected = naive(rows, 4, scale)
    for b, row in enumerate(expected):
        torch.testing.assert_close(out[b, :len(row)], torch.tensor(row), atol=1e-6, rtol=1e-5)
        assert out[b, len(row):].eq(0).all()
    # by hand, group 0: returns-to-go 1.2, 1.0 | 0.2, 0.0 | 0.0 | 1.0 -> mean 3.4 / 6, std sqrt(1.55333 / 5) = 0.557375
    assert out[0, 0].item() == pytest.approx(1.136075 if scale else 0.633333, rel=1e-5)


def test_constant_groups_get_exactly_zero_and_one_turn_is_grpo():
    values, mask = dense([[0.25, 0.25], [0.5], [0.5, 0.0], [0.5]], 2)  # returns-to-go 0.5, 0.25 | 0.5 | 0.5, 0 | 0.5
    assert turn_advantages(values, mask, 4).abs().sum() > 0  # equal episode rewards, yet the turns differ
    values, mask = dense([[0.5], [0.5], [0.5], [0.5]], 1)
    assert turn_advantages(values, mask, 4).eq(0).all()
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25, 3.0, 1.0, 1.0, 2.0])
    for scale, scaling in [(True, AdvantageScaling.GROUP_STD), (False, AdvantageScaling.NONE)]:
        torch.testing.assert_close(turn_advantages(rewards.unsqueeze(1), torch.ones(8, 1), 4, scale).squeeze(1),
                                   group_normalized_advantages(rewards, 4, scaling))


def test_token_advantages_spread_each_turn_over_its_tokens():
    per_turn = torch.tensor([[1.5, -2.0], [0.25, 0.0]])
    token_turn = torch.tensor([[-1, 0, 0, -1, -1, 1], [-1, -1, 0, 0, -1, -1]])
    expected = torch.tensor([[0.0, 1.5, 1.5, 0.0, 0.0, -2.0], [0.0, 0.0, 0.25, 0.25, 0.0, 0.0]])
    assert torch.equal(token_advantages(per_turn, token_turn), expected)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="rewards, mask: expected two"):
        returns_to_go(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="group_size: expected an int >= 2 dividing the 3 rows"):
        turn_advantages(torch.zeros(3, 1), torch.ones(3, 1), 2)
    with pytest.raises(ValueError, match="token_turn: expected"):
        token_advantages(torch.zeros(2, 2), torch.zeros(3, 4, dtype=torch.long))
