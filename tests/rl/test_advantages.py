"""Group-normalized advantages, GAE, discounted returns and whitening vs hand numbers and naive loops."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from prismrl.rl.advantages import (
    AdvantageScaling,
    discounted_returns,
    gae,
    group_normalized_advantages,
    masked_mean,
    masked_var,
    whiten,
)

# Two prompts, G = 4 completions each, consecutive in the flat reward vector.
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0])


def test_group_std_two_groups_by_hand():
    # group 1: mean 0.5, unbiased std sqrt(1/3) = 0.57735 -> +-0.5 / (0.57735 + 1e-4) = +-0.86588
    # group 2: mean 5,   unbiased std sqrt(20/3) = 2.58199 -> [-3, -1, 1, 3] / 2.58209
    expected = torch.tensor([0.865875, -0.865875, -0.865875, 0.865875, -1.161850, -0.387283, 0.387283, 1.161850])
    out = group_normalized_advantages(REWARDS, group_size=4)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    out_2d = group_normalized_advantages(REWARDS.view(2, 4), group_size=4)
    torch.testing.assert_close(out_2d, expected, atol=1e-5, rtol=0)


def test_batch_std_and_none_by_hand():
    # std of all eight rewards (unbiased) = 2.96407
    expected = torch.tensor([0.168681, -0.168681, -0.168681, 0.168681, -1.012088, -0.337363, 0.337363, 1.012088])
    out = group_normalized_advantages(REWARDS, 4, AdvantageScaling.BATCH_STD)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    centered = torch.tensor([0.5, -0.5, -0.5, 0.5, -3.0, -1.0, 1.0, 3.0])
    torch.testing.assert_close(group_normalized_advantages(REWARDS, 4, AdvantageScaling.NONE), centered)


@pytest.mark.parametrize("scaling", list(AdvantageScaling))
def test_group_normalized_vs_naive_loop(scaling):
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(5 * 3, generator=g, dtype=torch.float64)
    out = group_normalized_advantages(rewards, 3, scaling, eps=1e-4)
    values = rewards.tolist()
    batch_std = statistics.stdev(values)
    expected = []
    for start in range(0, len(values), 3):
        group = values[start:start + 3]
        mean = sum(group) / 3
        scale = {AdvantageScaling.GROUP_STD: statistics.stdev(group) + 1e-4,
                 AdvantageScaling.BATCH_STD: batch_std + 1e-4, AdvantageScaling.NONE: 1.0}[scaling]
        expected += [(r - mean) / scale for r in group]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("scaling", list(AdvantageScaling))
def test_identical_rewards_give_exact_zero(scaling):
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.1, 1.0, 0.0, 0.3, 0.3])
    out = group_normalized_advantages(rewards, 4, scaling)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:4], torch.zeros(4))
    assert out[4:].abs().sum() > 0
    # integer rewards, all groups constant, group size 2
    assert torch.equal(group_normalized_advantages(torch.tensor([1, 1, 0, 0]), 2, scaling), torch.zeros(4))


def test_group_normalized_errors():
    with pytest.raises(ValueError, match="group_size"):
        group_normalized_advantages(REWARDS, 1)
    with pytest.raises(ValueError, match=r"rewards: expected shape \(B \* 3,\)"):
        group_normalized_advantages(REWARDS, 3)
    with pytest.raises(ValueError, match=r"rewards: expected shape \(B, 4\), received \(4, 2\)"):
        group_normalized_advantages(REWARDS.view(4, 2), 4)
    with pytest.raises(TypeError, match="scaling"):
        group_normalized_advantages(REWARDS, 4, "group_std")


def test_gae_hand_unrolled_with_right_padding():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 100.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.2, 0.4, 50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    # row 0: d2 = 2 - 1.5 = 0.5; d1 = 0 + .9*1.5 - 1 = 0.35; d0 = 1 + .9*1 - .5 = 1.4
    #        A2 = 0.5, A1 = 0.35 + 0.72*0.5 = 0.71, A0 = 1.4 + 0.72*0.71 = 1.9112
    # row 1 (last position is padding, value after t=1 is 0): d1 = 1 - 0.4 = 0.6; d0 = .9*.4 - .2 = 0.16
    #        A1 = 0.6, A0 = 0.16 + 0.72*0.6 = 0.592
    adv, ret = gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor([[1.9112, 0.71, 0.5], [0.592, 0.6, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[2.4112, 1.71, 2.0], [0.792, 1.0, 0.0]]))


def naive_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """Textbook GAE on one unpadded episode: A_t = sum_l (gamma lam)^l delta_{t+l}."""
    n = len(rewards)
    deltas = [rewards[t] + gamma * (values[t + 1] if t + 1 < n else 0.0) - values[t] for t in range(n)]
    return [sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, n)) for t in range(n)]


def test_gae_vs_naive_with_holes_and_padding():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(4, 7, generator=g, dtype=torch.float64)
    values = torch.randn(4, 7, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 1, 0], [0] * 7])
    adv, ret = gae(rewards, values, mask, 0.95, 0.7)
    for b in range(4):
        idx = [t for t in range(7) if mask[b, t]]  # masked positions are skipped
        expected = naive_gae(rewards[b, idx].tolist(), values[b, idx].tolist(), 0.95, 0.7)
        torch.testing.assert_close(adv[b, idx], torch.tensor(expected, dtype=torch.float64))
        torch.testing.assert_close(ret[b, idx], adv[b, idx] + values[b, idx])
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=torch.float64))
    assert torch.equal(ret[mask == 0], adv[mask == 0])


def test_gae_is_detached_and_checks_shapes():
    values = torch.randn(2, 3, requires_grad=True)
    adv, ret = gae(torch.ones(2, 3), values, torch.ones(2, 3), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match=r"values: expected shape \(2, 3\), received \(2, 4\)"):
        gae(torch.ones(2, 3), torch.ones(2, 4), torch.ones(2, 3), 1.0, 1.0)
    with pytest.raises(ValueError, match="mask"):
        gae(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"lam: expected a float in \[0, 1\], received 1.5"):
        gae(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), 1.0, 1.5)


def test_discounted_returns_with_done_flags():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    dones = torch.tensor([[False, True, False, False]])
    # G3 = 4; G2 = 3 + .5*4 = 5; G1 = 2 (episode ends); G0 = 1 + .5*2 = 2
    torch.testing.assert_close(discounted_returns(rewards, dones, 0.5), torch.tensor([[2.0, 2.0, 5.0, 4.0]]))
    bandit = torch.tensor([[0.3], [-1.0]])
    torch.testing.assert_close(discounted_returns(bandit, torch.ones(2, 1), 0.99), bandit)
    torch.testing.assert_close(discounted_returns(bandit, torch.zeros(2, 1), 0.99), bandit)
    with pytest.raises(ValueError, match="dones"):
        discounted_returns(rewards, torch.zeros(1, 3), 0.5)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(rewards, dones, -0.1)


def test_discounted_returns_without_dones_and_with_a_bootstrap():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    # G2 = 3, G1 = 2 + 0.5 * 3 = 3.5, G0 = 1 + 0.5 * 3.5 = 2.75
    torch.testing.assert_close(discounted_returns(rewards, None, 0.5), torch.tensor([[2.75, 3.5, 3.0]]))
    dones = torch.tensor([[False, False], [False, True]])
    out = discounted_returns(torch.ones(2, 2), dones, 0.9, bootstrap=torch.tensor([10.0, 10.0]))
    # row 0: G1 = 1 + 0.9 * 10 = 10, G0 = 10; row 1: the final done cuts the bootstrap, G1 = 1, G0 = 1.9
    torch.testing.assert_close(out, torch.tensor([[10.0, 10.0], [1.9, 1.0]]))
    with pytest.raises(ValueError, match=r"rewards: expected shape \(B, T\), received \(3,\)"):
        discounted_returns(torch.ones(3), None, 0.9)
    with pytest.raises(ValueError, match="bootstrap: expected shape"):
        discounted_returns(torch.ones(2, 3), None, 0.9, bootstrap=torch.zeros(3))


def test_discounted_returns_vs_naive():
    g = torch.Generator().manual_seed(2)
    rewards = torch.randn(3, 9, generator=g, dtype=torch.float64)
    dones = torch.rand(3, 9, generator=g) < 0.3
    out = discounted_returns(rewards, dones, 0.9)
    for b in range(3):
        for t in range(9):
            total, discount = 0.0, 1.0
            for k in range(t, 9):
                total += discount * rewards[b, k].item()
                if dones[b, k]:
                    break
                discount *= 0.9
            assert math.isclose(out[b, t].item(), total, rel_tol=1e-12, abs_tol=1e-12)


def test_whiten_masked():
    x = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [4.0, 5.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    picked = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, std = statistics.mean(picked), statistics.stdev(picked)
    out = whiten(x, mask)
    z = [(v - mean) / std for v in picked]
    expected = torch.tensor([z[:3] + [0.0], z[3:] + [0.0, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    unshifted = torch.where(mask.bool(), expected + mean, 0.0)
    torch.testing.assert_close(whiten(x, mask, shift_mean=False), unshifted, atol=1e-5, rtol=0)
    full = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(whiten(full), torch.tensor([-1.0, 1.0]) / math.sqrt(2.0), atol=1e-6, rtol=0)


def test_whiten_population_variance_and_single_entry():
    x = torch.tensor([1.0, 2.0, 3.0])
    std = math.sqrt(2.0 / 3.0)  # population std of 1, 2, 3
    torch.testing.assert_close(whiten(x, unbiased=False), torch.tensor([-1 / std, 0.0, 1 / std]))
    torch.testing.assert_close(whiten(torch.tensor([5.0])), torch.tensor([5.0]))  # one entry: no spread, unchanged
    torch.testing.assert_close(whiten(x, torch.tensor([False, True, False])), torch.tensor([0.0, 2.0, 0.0]))


def test_masked_mean_var_empty_mask_no_nan():
    x = torch.tensor([[1.0, float("inf")]])
    assert masked_mean(x, torch.zeros(1, 2)).item() == 0.0
    assert masked_var(x, torch.tensor([[1, 0]])).item() == 0.0
    assert masked_mean(x, torch.tensor([[1, 0]]), dim=1).tolist() == [1.0]
