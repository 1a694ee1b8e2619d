"""Actor-critic math against hand-computed numbers and a naive reference; the head's sampling and embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from prismrl.rl.actor_critic import (
    ActorCriticHead,
    actor_critic_losses,
    match_rewards,
    returns_from_rewards,
)
from prismrl.rl.advantages import whiten


def normalize_advantages(advantages, mask=None):
    """The actor-critic normalization: whitening with the population variance."""
    return whiten(advantages, mask, unbiased=False)


# ----- advantage normalization -----
def test_normalize_by_hand_and_masked():
    std = math.sqrt(2.0 / 3.0)  # population std of 1, 2, 3
    expected = torch.tensor([-1 / std, 0.0, 1 / std])
    torch.testing.assert_close(normalize_advantages(torch.tensor([1.0, 2.0, 3.0])), expected)
    masked = normalize_advantages(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([True, True, True, False]))
    torch.testing.assert_close(masked, torch.cat([expected, torch.zeros(1)]))


def test_normalize_edge_cases():
    torch.testing.assert_close(normalize_advantages(torch.tensor([5.0])), torch.tensor([5.0]))  # B = 1: unchanged
    torch.testing.assert_close(normalize_advantages(torch.tensor([3.0, 7.0]), torch.tensor([True, False])), torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(normalize_advantages(torch.tensor([2.0, 2.0])), torch.tensor([0.0, 0.0]))  # zero spread
    assert normalize_advantages(torch.tensor([0.0, 0.0]), torch.tensor([False, False])).abs().sum() == 0


# ----- losses -----
def test_losses_by_hand():
    log_probs = torch.tensor([-1.0, -2.0], requires_grad=True)
    values = torch.tensor([0.5, 0.0], requires_grad=True)
    returns, entropy = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.5])
    out = actor_critic_losses(log_probs, values, returns, entropy, normalize=False, entropy_coef=0.01, value_coef=0.5)
    # A = [0.5, 0]; policy = -(0.5 * -1 + 0) / 2 = 0.25; value = (0.25 + 0) / 2 = 0.125; entropy = 0.75
    torch.testing.assert_close(out.policy, torch.tensor(0.25))
    torch.testing.assert_close(out.value, torch.tensor(0.125))
    torch.testing.assert_close(out.entropy, torch.tensor(0.75))
    torch.testing.assert_close(out.total, torch.tensor(0.25 + 0.5 * 0.125 - 0.01 * 0.75))
    out.total.backward()
    # the advantage is computed from detached values: only the value term reaches them
    torch.testing.assert_close(values.grad, 0.5 * 2 * (values.detach() - returns) / 2)
    torch.testing.assert_close(log_probs.grad, -torch.tensor([0.5, 0.0]) / 2)


def test_losses_with_normalized_advantages_and_mask():
    log_probs, values = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([0.5, 0.0, 9.0])
    returns, entropy = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 0.5, 7.0])
    out = actor_critic_losses(log_probs, values, returns, entropy, normalize=True, mask=torch.tensor([True, True, False]))
    # valid A = [0.5, 0] -> mean 0.25, std 0.25 -> [1, -1]; policy = -(1 * -1 + -1 * -2) / 2 = -0.5
    torch.testing.assert_close(out.advantages, torch.tensor([1.0, -1.0, 0.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.policy, torch.tensor(-0.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.value, torch.tensor(0.125))
    torch.testing.assert_close(out.entropy, torch.tensor(0.75))


def test_losses_single_example_keeps_the_raw_advantage():
    out = actor_critic_losses(torch.tensor([-0.5]), torch.tensor([0.25]), torch.tensor([1.0]), torch.tensor([0.1]))
    torch.testing.assert_close(out.policy, torch.tensor(0.75 * 0.5))


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="values: expected shape"):
        actor_critic_losses(torch.zeros(3), torch.zeros(2), torch.zeros(3), torch.zeros(3))


# ----- rewards -----
def test_match_rewards_and_penalty():
    actions, labels = torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])
    torch.testing.assert_close(match_rewards(actions, labels), torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(match_rewards(actions, labels, -1.0), torch.tensor([1.0, -1.0, 1.0]))


def test_returns_from_batch_rewards():
    torch.testing.assert_close(returns_from_rewards(torch.tensor([0.5, 1.0]), 2, 0.9), torch.tensor([0.5, 1.0]))
    sequence = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    dones = torch.tensor([[True, False], [False, False]])
    torch.testing.assert_close(returns_from_rewards(sequence, 2, 0.5, dones), torch.tensor([1.0, 1.5]))
    with pytest.raises(ValueError, match="rewards: expected shape \\[2\\] or \\[2, T\\], received \\(3,\\)"):
        returns_from_rewards(torch.ones(3), 2, 0.9)
    with pytest.raises(ValueError, match="rewards: expected shape"):
        returns_from_rewards(torch.ones(2, 1, 1), 2, 0.9)
    with pytest.raises(TypeError, match="rewards: expected a float tensor"):
        returns_from_rewards(torch.ones(2, dtype=torch.long), 2, 0.9)


# ----- the head -----
def test_head_outputs_match_a_categorical_reference():
    torch.manual_seed(0)
    head = ActorCriticHead(state_dim=8, num_actions=5)
    state = torch.randn(6, 8)
    out = head.eval()(state)
    reference = torch.distributions.Categorical(logits=head.policy(state))
    torch.testing.assert_close(out.actions, reference.probs.argmax(-1))
    torch.testing.assert_close(out.log_probs, reference.log_prob(out.actions))
    torch.testing.assert_close(out.entropy, reference.entropy())
    torch.testing.assert_close(out.reasoned_state, state + head.action_embedding.weight[out.actions])
    assert out.logits.shape == (6, 5) and out.values.shape == (6,)


def test_head_samples_in_training_mode_with_the_policy_distribution():
    torch.manual_seed(0)
    head = ActorCriticHead(state_dim=4, num_actions=3).train()
    with torch.no_grad():
        head.policy[-1].weight.zero_()
        head.policy[-1].bias.copy_(torch.log(torch.tensor([0.7, 0.2, 0.1])))
    actions = head(torch.randn(4000, 4)).actions
    frequencies = torch.bincount(actions, minlength=3).float() / 4000
    torch.testing.assert_close(frequencies, torch.tensor([0.7, 0.2, 0.1]), rtol=0, atol=0.03)
    assert head(torch.randn(10, 4), greedy=True).actions.eq(0).all()


def test_head_given_actions_and_gradients():
    torch.manual_seed(0)
    head = ActorCriticHead(state_dim=4, num_actions=3)
    out = head(torch.randn(2, 4), actions=torch.tensor([2, 1]))
    assert out.actions.tolist() == [2, 1]
    (out.log_probs.sum() + out.reasoned_state.sum()).backward()
    assert head.policy[0].weight.grad.abs().sum() > 0
    assert head.action_embedding.weight.grad[[1, 2]].abs().sum() > 0 and head.action_embedding.weight.grad[0].abs().sum() == 0
    with pytest.raises(ValueError, match="actions: expected a long tensor"):
        head(torch.randn(2, 4), actions=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="state: expected shape \\[B, 4\\]"):
        head(torch.randn(2, 5))
