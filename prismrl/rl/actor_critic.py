"""Actor-critic over a fused state: policy, value, action embeddings, returns and the advantage losses.

Pure torch. One decision per example (a contextual bandit when T = 1):

    pi(a | s) = softmax(policy(s)),  V(s) = value(s),  a ~ pi (training) or argmax pi (eval)
    reasoned_state = s + E[a]                                   (E: learned action embeddings)
    G_t = r_t + gamma * (1 - done_t) * G_{t+1},  G_T = bootstrap (default 0)
    A   = G - V(s).detach()  (optionally normalized)
    L   = -mean(A * log pi(a | s)) + value_coef * mean((V(s) - G)^2) - entropy_coef * mean(H(pi))

Returns and advantage normalization are ``prismrl.rl.advantages.discounted_returns`` and ``whiten``
(population variance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prismrl.choices import check_finite, check_positive_int
from prismrl.rl.advantages import discounted_returns, whiten


@dataclass
class ActorCriticOutput:
    """What ``ActorCriticHead`` returns for a state batch ``[B, D]`` and ``A`` actions."""

    logits: Tensor  # [B, A]
    values: Tensor  # [B]
    actions: Tensor  # [B] long: sampled (training) or argmax (eval)
    log_probs: Tensor  # [B] log pi(action | state)
    entropy: Tensor  # [B] H(pi(. | state))
    reasoned_state: Tensor  # [B, D] state + action_embedding(action)


@dataclass
class ActorCriticLosses:
    """Loss terms; ``total = policy + value_coef * value - entropy_coef * entropy``."""

    total: Tensor  # scalar
    policy: Tensor  # scalar
    value: Tensor  # scalar
    entropy: Tensor  # scalar (mean entropy, a bonus)
    advantages: Tensor  # [B] advantages used in the policy term (after normalization)


def _mlp(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out))


class ActorCriticHead(nn.Module):
    """Policy net (state -> logits over ``num_actions``), value net (state -> scalar), action embeddings.

    In training mode the action is sampled from ``pi``; in eval mode it is ``argmax pi`` (``greedy``
    overrides either way). ``reasoned_state = state + action_embedding(action)``; the sampling itself
    carries no gradient, the embedding table does.
    """

    def __init__(self, state_dim: int, num_actions: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        check_positive_int("state_dim", state_dim)
        check_positive_int("num_actions", num_actions, minimum=2)
        if hidden_dim is not None:
            check_positive_int("hidden_dim", hidden_dim)
        hidden = hidden_dim or state_dim
        self.state_dim, self.num_actions = state_dim, num_actions
        self.policy = _mlp(state_dim, hidden, num_actions)
        self.value = _mlp(state_dim, hidden, 1)
        self.action_embedding = nn.Embedding(num_actions, state_dim)
        nn.init.normal_(self.action_embedding.weight, std=0.02)

    def forward(self, state: Tensor, greedy: bool | None = None, actions: Tensor | None = None) -> ActorCriticOutput:
        """state ``[B, D]`` -> ActorCriticOutput; ``actions`` ``[B]`` evaluates given actions instead of choosing."""
        if state.dim() != 2 or state.shape[-1] != self.state_dim:
            raise ValueError(f"state: expected shape [B, {self.state_dim}], received {tuple(state.shape)}")
        logits = self.policy(state)  # [B, A]
        values = self.value(state).squeeze(-1)  # [B]
        log_pi = torch.log_softmax(logits.float(), dim=-1)  # [B, A]
        if actions is None:
            greedy = (not self.training) if greedy is None else greedy
            check_finite("the policy logits", logits)  # a diverged policy; sampling would fail obscurely
            with torch.no_grad():
                actions = log_pi.argmax(-1) if greedy else torch.multinomial(log_pi.exp(), 1).squeeze(-1)  # [B]
        elif actions.shape != state.shape[:1] or actions.dtype != torch.long:
            raise ValueError(f"actions: expected a long tensor of shape [{state.shape[0]}], received {actions.dtype} {tuple(actions.shape)}")
        log_probs = log_pi.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [B]
        entropy = -(log_pi.exp() * log_pi).sum(-1)  # [B]
        reasoned = state + self.action_embedding(actions)  # [B, D]
        return ActorCriticOutput(logits, values, actions, log_probs, entropy, reasoned)


def actor_critic_losses(
    log_probs: Tensor,
    values: Tensor,
    returns: Tensor,
    entropy: Tensor,
    normalize: bool = True,
    entropy_coef: float = 0.01,
    value_coef: float = 0.5,
    mask: Tensor | None = None,
    eps: float = 1e-8,
) -> ActorCriticLosses:
    """Advantage actor-critic losses over ``[B]`` tensors (means over ``mask`` entries, default all).

    A = returns - values.detach() (normalized when ``normalize``); policy = -mean(A * log_probs);
    value = mean((values - returns)^2); entropy = mean(entropy);
    total = policy + value_coef * value - entropy_coef * entropy.
    """
    shape = log_probs.shape
    if log_probs.dim() != 1:
        raise ValueError(f"log_probs: expected shape [B], received {tuple(shape)}")
    for name, tensor in (("values", values), ("returns", returns), ("entropy", entropy)):
        if tensor.shape != shape:
            raise ValueError(f"{name}: expected shape {tuple(shape)} (= log_probs), received {tuple(tensor.shape)}")
    weights = torch.ones_like(log_probs) if mask is None else mask.to(log_probs.dtype)  # [B]
    if weights.shape != shape:
        raise ValueError(f"mask: expected shape {tuple(shape)} (= log_probs), received {tuple(weights.shape)}")
    count = weights.sum().clamp_min(1.0)
    returns = returns.detach().to(values.dtype)
    advantages = returns - values.detach()  # [B]
    if normalize:
        advantages = whiten(advantages, weights > 0, unbiased=False, eps=eps)
    policy = -(advantages * log_probs * weights).sum() / count
    value = ((values - returns).pow(2) * weights).sum() / count
    mean_entropy = (entropy * weights).sum() / count
    total = policy + value_coef * value - entropy_coef * mean_entropy
    return ActorCriticLosses(total, policy, value, mean_entropy, advantages)


def match_rewards(actions: Tensor, labels: Tensor, wrong_action_reward: float = 0.0) -> Tensor:
    """Default reward ``[B]``: 1 where ``actions == labels``, else ``wrong_action_reward`` (e.g. -1 as a penalty)."""
    if actions.shape != labels.shape:
        raise ValueError(f"labels: expected shape {tuple(actions.shape)} (= actions), received {tuple(labels.shape)}")
    correct = actions == labels
    return torch.where(correct, torch.ones_like(actions, dtype=torch.float32), torch.full_like(actions, wrong_action_reward, dtype=torch.float32))


def returns_from_rewards(rewards: Tensor, batch_size: int, gamma: float, dones: Tensor | None = None) -> Tensor:
    """The return ``[B]`` credited to each example's action from external rewards ``[B]`` or ``[B, T]``.

    ``[B]``: one-step rewards, returned as they are. ``[B, T]``: the reward sequence that followed the
    action; its discounted return at t = 0 (``discounted_returns`` with optional ``dones [B, T]``).
    """
    if not isinstance(rewards, Tensor) or not rewards.is_floating_point():
        raise TypeError(f"rewards: expected a float tensor of shape [B] or [B, T], received {type(rewards).__name__} "
                        f"{getattr(rewards, 'dtype', '')}")
    if rewards.dim() == 1 and rewards.shape[0] == batch_size:
        return rewards
    if rewards.dim() == 2 and rewards.shape[0] == batch_size:
        return discounted_returns(rewards, dones, gamma)[:, 0]
    raise ValueError(f"rewards: expected shape [{batch_size}] or [{batch_size}, T], received {tuple(rewards.shape)}")
