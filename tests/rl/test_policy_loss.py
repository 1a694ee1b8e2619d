"""Clipped surrogate, loss aggregation variants and grpo_loss vs hand numbers and naive loops."""

from __future__ import annotations

import math

import pytest
import torch

from prismrl.rl.kl import KLEstimator, kl_penalty
from prismrl.rl.policy_loss import (
    LOSS_AGGREGATIONS,
    LossAggregation,
    aggregate_loss,
    clipped_surrogate,
    count_global_tokens,
    grpo_loss,
)


def test_clipping_on_both_sides_by_hand():
    # eps_low 0.2 -> lower bound 0.8, eps_high 0.28 -> upper bound 1.28
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1]], dtype=torch.float64)
    adv = torch.tensor([[2.0, 2.0, -2.0, -2.0, 2.0]], dtype=torch.float64)
    old = torch.zeros_like(ratio)
    logp = ratio.log().requires_grad_()
    loss, stats = clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28)
    # A>0, rho 1.5 > 1.28: clipped, -1.28*2      | A>0, rho 0.5: unclipped (min), -0.5*2
    # A<0, rho 0.5 < 0.8: clipped, -(0.8*-2)     | A<0, rho 1.5: unclipped (min), -(1.5*-2) | inside: -1.1*2
    torch.testing.assert_close(loss, torch.tensor([[-2.56, -1.0, 1.6, 3.0, -2.2]], dtype=torch.float64))
    loss.sum().backward()
    # d/dlogp of -rho*A = -rho*A where unclipped, 0 where the clip binds
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1.0, 0.0, 3.0, -2.2]], dtype=torch.float64))
    assert stats.clip_frac_low.item() == pytest.approx(0.2)
    assert stats.clip_frac_high.item() == pytest.approx(0.2)
    assert stats.clip_frac.item() == pytest.approx(0.4)
    assert stats.ratio_mean.item() == pytest.approx((1.5 + 0.5 + 0.5 + 1.5 + 1.1) / 5)
    assert not stats.ratio_mean.requires_grad


def test_surrogate_vs_naive_loop_and_masked_stats():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.3
    old = torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    loss, stats = clipped_surrogate(logp, old, adv, 0.1, 0.3, mask)
    low = high = count = 0
    ratio_sum = 0.0
    for b in range(3):
        for t in range(5):
            rho = math.exp(logp[b, t] - old[b, t])
            a = adv[b].item()
            expected = -min(rho * a, min(max(rho, 0.9), 1.3) * a)
            assert loss[b, t].item() == pytest.approx(expected, rel=1e-12)
            if mask[b, t]:
                count += 1
                ratio_sum += rho
                low += rho < 0.9 and a < 0
                high += rho > 1.3 and a > 0
    assert stats.clip_frac_low.item() == pytest.approx(low / count)
    assert stats.clip_frac_high.item() == pytest.approx(high / count)
    assert stats.ratio_mean.item() == pytest.approx(ratio_sum / count)
    per_token_adv = adv.unsqueeze(1).expand(3, 5)
    torch.testing.assert_close(clipped_surrogate(logp, old, per_token_adv, 0.1, 0.3)[0], loss)


def test_surrogate_extreme_log_ratio_is_finite():
    logp = torch.tensor([[100.0, -100.0]], requires_grad=True)
    loss, _ = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([[-1.0, 0.0]]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logp.grad).all()


def test_surrogate_shape_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"old_logprobs: expected shape \(2, 3\), received \(2, 4\)"):
        clipped_surrogate(x, torch.zeros(2, 4), torch.zeros(2))
    with pytest.raises(ValueError, match=r"advantages: expected shape \(2,\), received \(3,\)"):
        clipped_surrogate(x, x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"advantages: expected shape \(2, 3\)"):
        clipped_surrogate(x, x, torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 3\)"):
        clipped_surrogate(x, x, torch.zeros(2), mask=torch.ones(2))
    with pytest.raises(ValueError, match="eps_low"):
        clipped_surrogate(x, x, torch.zeros(2), eps_low=1.0)


# rows: full (4 tokens), right-padded (2 tokens, NaN in the padding), zero tokens
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, float("nan"), float("nan")], [7.0, 8.0, 9.0, 10.0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    ("mode", "kwargs", "expected"),
    [
        (LossAggregation.GRPO, {}, (2.5 + 5.5 + 0.0) / 3),  # per-row means, the empty row counts as 0
        (LossAggregation.BNPO, {}, 21.0 / 6),  # token mean over the 6 counted tokens
        (LossAggregation.DAPO, {}, 21.0 / 6),  # no global count: same as BNPO
        (LossAggregation.DAPO, {"global_token_count": 12, "world_size": 2}, 21.0 * 2 / 12),
        (LossAggregation.DR_GRPO, {"max_completion_length": 4}, 21.0 / (3 * 4)),
        (LossAggregation.DR_GRPO, {"max_completion_length": 10}, 21.0 / (3 * 10)),
    ],
)
def test_aggregation_by_hand(mode, kwargs, expected):
    per_token = PER_TOKEN.clone().requires_grad_()
    out = aggregate_loss(per_token, MASK, mode, **kwargs)
    assert out.item() == pytest.approx(expected)
    out.backward()
    assert torch.isfinite(per_token.grad).all()
    assert torch.equal(per_token.grad[~MASK], torch.zeros(int((~MASK).sum())))


def naive_aggregate(per_token, mask, mode, max_len=None):
    rows = [[per_token[b][t] for t in range(len(mask[b])) if mask[b][t]] for b in range(len(mask))]
    tokens = [x for row in rows for x in row]
    if mode is LossAggregation.GRPO:
        return sum(sum(r) / len(r) if r else 0.0 for r in rows) / len(rows)
    if mode in (LossAggregation.BNPO, LossAggregation.DAPO):
        return sum(tokens) / max(len(tokens), 1)
    return sum(tokens) / (len(rows) * max_len)


@pytest.mark.parametrize("mode", list(LossAggregation))
def test_aggregation_vs_naive_random(mode):
    g = torch.Generator().manual_seed(3)
    per_token = torch.randn(6, 9, generator=g, dtype=torch.float64)
    lengths = torch.tensor([9, 0, 3, 1, 7, 5])
    mask = torch.arange(9).unsqueeze(0) < lengths.unsqueeze(1)  # right padding incl. an empty row
    out = aggregate_loss(per_token, mask.float(), mode, max_completion_length=12)
    expected = naive_aggregate(per_token.tolist(), mask.tolist(), mode, 12)
    assert out.item() == pytest.approx(expected, rel=1e-12)


def test_dapo_two_ranks_equals_global_token_mean_bnpo_does_not():
    g = torch.Generator().manual_seed(4)
    per_token = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1] * 6, [1] * 5 + [0], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    total = int(mask.sum())
    whole = aggregate_loss(per_token, mask, LossAggregation.BNPO)
    ranks = [(per_token[:2], mask[:2]), (per_token[2:], mask[2:])]
    dapo = [aggregate_loss(p, m, LossAggregation.DAPO, global_token_count=total, world_size=2) for p, m in ranks]
    bnpo = [aggregate_loss(p, m, LossAggregation.BNPO) for p, m in ranks]
    torch.testing.assert_close(sum(dapo) / 2, whole)  # DDP averages the rank losses
    assert abs((sum(bnpo) / 2 - whole).item()) > 1e-3
    assert count_global_tokens(mask).item() == total  # no process group: the local count


def test_all_masked_batch_is_zero_with_finite_grads():
    per_token = torch.randn(2, 3, requires_grad=True)
    for mode in LossAggregation:
        out = aggregate_loss(per_token, torch.zeros(2, 3), mode, max_completion_length=3)
        assert out.item() == 0.0
        (grad,) = torch.autograd.grad(out, per_token)
        assert torch.equal(grad, torch.zeros(2, 3))


def test_aggregation_registry_and_errors():
    assert set(LOSS_AGGREGATIONS) == set(LossAggregation)
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(PER_TOKEN, MASK, LossAggregation.DR_GRPO)
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(PER_TOKEN, MASK, LossAggregation.DR_GRPO, max_completion_length=0)
    with pytest.raises(TypeError, match="mode"):
        aggregate_loss(PER_TOKEN, MASK, "grpo")
    with pytest.raises(ValueError, match=r"mask: expected shape \(3, 4\), received \(3, 5\)"):
        aggregate_loss(PER_TOKEN, torch.ones(3, 5), LossAggregation.BNPO)
    with pytest.raises(ValueError, match="world_size"):
        aggregate_loss(PER_TOKEN, MASK, LossAggregation.DAPO, world_size=0)


def test_grpo_loss_on_policy_value_and_gradient():
    # old_logprobs default to logprobs.detach(): rho = 1, loss = -mean_b A_b, d loss / d logp = -A_b / (n_b * B)
    logp = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    loss, stats = grpo_loss(logp, adv, mask)
    assert loss.item() == pytest.approx(-(1.0 - 2.0 + 0.0) / 3)
    loss.backward()
    expected = torch.tensor([[-1 / 12] * 4, [2 / 6, 2 / 6, 0, 0], [0] * 4], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)
    assert stats.kl_mean is None and stats.surrogate.clip_frac.item() == 0.0
    assert set(stats.to_dict("train/")) == {"train/policy_loss", "train/ratio_mean", "train/clip_frac_low",
                                            "train/clip_frac_high", "train/clip_frac"}


@pytest.mark.parametrize("mode", list(LossAggregation))
def test_grpo_loss_with_kl_matches_composition(mode):
    g = torch.Generator().manual_seed(5)
    logp = (torch.randn(4, 5, generator=g, dtype=torch.float64) * 0.2).requires_grad_()
    old = logp.detach() + torch.randn(4, 5, generator=g, dtype=torch.float64) * 0.3
    ref = logp.detach() + torch.randn(4, 5, generator=g, dtype=torch.float64) * 0.3
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0], [0] * 5, [1, 0, 0, 0, 0]])
    kw = dict(max_completion_length=5)
    loss, stats = grpo_loss(logp, adv, mask, old, ref, beta=0.04, eps_low=0.2, eps_high=0.28, aggregation=mode, **kw)
    surrogate, _ = clipped_surrogate(logp, old, adv, 0.2, 0.28)
    kl = kl_penalty(logp, ref, KLEstimator.K3)
    expected = aggregate_loss(surrogate + 0.04 * kl, mask, mode, **kw)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats.policy_loss, aggregate_loss(surrogate, mask, mode, **kw).detach())
    valid = mask.bool()
    torch.testing.assert_close(stats.kl_mean, kl[valid].mean().detach())
    (g1,) = torch.autograd.grad(loss, logp)
    (g2,) = torch.autograd.grad(expected, logp)
    torch.testing.assert_close(g1, g2)


def test_grpo_loss_kl_reported_without_beta_and_errors():
    logp = torch.zeros(2, 3)
    ref = torch.full((2, 3), -0.5)
    loss, stats = grpo_loss(logp, torch.ones(2), torch.ones(2, 3), ref_logprobs=ref)
    assert stats.kl_mean.item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    assert loss.item() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logp, torch.ones(2), torch.ones(2, 3), beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(logp, torch.ones(2), torch.ones(2, 3), ref_logprobs=ref, beta=-1.0)
