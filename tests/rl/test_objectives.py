"""GSPO / GSPO-token importance ratios and the CISPO loss against hand-computed numbers."""

import math

import pytest
import torch

from prismrl.rl.objectives import PolicyObjective, cispo_per_token, importance_log_ratio

LOGP = [[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]]
OLD = [[-1.5, -1.0, 5.0], [-0.5, -0.5, -0.5]]
MASK = [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]  # the second sequence has no counted token


def tensors(requires_grad=False):
    logp = torch.tensor(LOGP, requires_grad=requires_grad)
    return logp, torch.tensor(OLD), torch.tensor(MASK)


def test_token_level_is_the_clamped_token_log_ratio():
    logp, old, mask = tensors()
    expected = torch.tensor([[0.5, -1.0, -5.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(importance_log_ratio(logp, old, mask, PolicyObjective.PPO_CLIP), expected)
    huge = importance_log_ratio(torch.tensor([[0.0]]), torch.tensor([[-100.0]]), None)
    assert huge.item() == 20.0  # clamped before any exp


def test_gspo_uses_the_length_normalized_sequence_ratio_for_every_token():
    logp, old, mask = tensors(requires_grad=True)
    log_s = importance_log_ratio(logp, old, mask, PolicyObjective.GSPO)
    # sequence 0: (0.5 + -1.0) / 2 = -0.25 on every token (the masked one too); sequence 1: no token -> 0
    torch.testing.assert_close(log_s.detach(), torch.tensor([[-0.25] * 3, [0.0] * 3]))
    log_s[:, 0].sum().backward()  # d(mean_t m_t log r_t) / d logp_t = m_t / |y|
    torch.testing.assert_close(logp.grad, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))


def test_gspo_token_has_the_sequence_value_and_a_per_token_gradient():
    logp, old, mask = tensors(requires_grad=True)
    log_s = importance_log_ratio(logp, old, mask, PolicyObjective.GSPO_TOKEN)
    torch.testing.assert_close(log_s.detach(), torch.tensor([[-0.25] * 3, [0.0] * 3]))
    (log_s * torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])).sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))  # d log pi_t / d logp_t = 1


def test_cispo_weights_are_clipped_and_detached():
    logp = torch.tensor([[-1.0, -2.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0, -1.0]])  # r = e^0.5 (clipped high), e^-1 (clipped low), 1 (inside)
    advantages = torch.tensor([2.0])
    loss, ratio, clipped = cispo_per_token(logp, old, advantages, eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(ratio, torch.tensor([[math.exp(0.5), math.exp(-1.0), 1.0]]))
    assert clipped.tolist() == [[True, True, False]]
    # L_t = -w_t * A * logp_t with w = (1.28, 0.8, 1.0)
    torch.testing.assert_close(loss.detach(), torch.tensor([[2.56, 3.2, 2.0]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.56, -1.6, -2.0]]))  # every token keeps a gradient


def test_cispo_matches_a_naive_reference_with_token_advantages():
    torch.manual_seed(0)
    logp, old, adv = torch.randn(3, 5) - 1, torch.randn(3, 5) - 1, torch.randn(3, 5)
    loss, _, _ = cispo_per_token(logp, old, adv, 0.2, 0.28)
    naive = torch.empty(3, 5)
    for b in range(3):
        for t in range(5):
            w = min(max(math.exp(float(logp[b, t] - old[b, t])), 0.8), 1.28)
            naive[b, t] = -w * adv[b, t] * logp[b, t]
    torch.testing.assert_close(loss, naive)
    with pytest.raises(ValueError, match="advantages"):
        cispo_per_token(logp, old, torch.randn(4), 0.2, 0.28)


def test_clipped_surrogate_with_gspo_clips_the_sequence_ratio():
    from prismrl.rl.policy_loss import clipped_surrogate

    logp, old, mask = tensors(requires_grad=True)
    advantages = torch.tensor([1.0, -1.0])
    loss, stats = clipped_surrogate(logp, old, advantages, 0.2, 0.2, mask, PolicyObjective.GSPO)
    s = math.exp(-0.25)  # sequence 0: below 1 - 0.2 = 0.8, A > 0: min(s A, 0.8 A) = s A, unclipped
    torch.testing.assert_close(loss[0].detach(), torch.full((3,), -s))
    torch.testing.assert_close(loss[1].detach(), torch.full((3,), 1.0))  # no token: s = 1, A = -1
    assert stats.clip_frac.item() == 0.0


def test_clipped_surrogate_with_cispo_is_the_cispo_loss():
    from prismrl.rl.policy_loss import clipped_surrogate, grpo_loss

    torch.manual_seed(1)
    logp, old, adv, mask = torch.randn(2, 4) - 1, torch.randn(2, 4) - 1, torch.randn(2), torch.ones(2, 4)
    loss, stats = clipped_surrogate(logp, old, adv, 0.2, 0.28, mask, PolicyObjective.CISPO)
    torch.testing.assert_close(loss, cispo_per_token(logp, old, adv, 0.2, 0.28)[0])
    assert 0.0 <= stats.clip_frac.item() <= 1.0
    total, _ = grpo_loss(logp, adv, mask, old, objective=PolicyObjective.CISPO, eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(total, loss.mean(dim=1).mean())  # GRPO aggregation: sequence means, then batch mean
