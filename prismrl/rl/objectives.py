"""Policy objectives beyond the token-level PPO clip: sequence-level ratios (GSPO) and clipped IS weights (CISPO).

Notation: r_t = pi(y_t) / pi_old(y_t) the token ratio, m the completion mask, |y| = sum_t m_t, A the advantage.

    PPO_CLIP    token ratio r_t inside -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)               (PPO / GRPO)
    GSPO        sequence ratio s = exp(mean_t log r_t) for every token of the sequence             (Zheng et al.
                2025, "Group Sequence Policy Optimization"; TRL importance_sampling_level="sequence")
    GSPO_TOKEN  s_t = sg[s] * pi(y_t) / sg[pi(y_t)]: the value of s, the gradient of a token ratio, so token-level
                advantages stay usable (the same paper, GSPO-token)
    CISPO       L_t = -sg[clip(r_t, 1 - eps_low, 1 + eps_high)] * A * log pi(y_t): the clipped ratio is a detached
                weight, so every token keeps a gradient (MiniMax-M1, 2025; ms-swift loss_type="cispo")

Each returns the per-token loss [B, T] to aggregate with ``prismrl.rl.policy_loss.aggregate_loss``.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from prismrl.rl.advantages import as_float_mask, check_shape, masked_sum

MAX_LOG_RATIO = 20.0  # |log r| is clamped here before exp, so a ratio never overflows to inf


class PolicyObjective(Enum):
    """The surrogate of the policy loss (formulas in the module docstring)."""

    PPO_CLIP = "ppo_clip"
    GSPO = "gspo"
    GSPO_TOKEN = "gspo_token"
    CISPO = "cispo"


def importance_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor | None,
                         objective: PolicyObjective = PolicyObjective.PPO_CLIP) -> Tensor:
    """log of the importance ratio used per token [B, T] (clamped to +-20 before any exp).

    PPO_CLIP / CISPO: log r_t. GSPO: the sequence mean (1/|y|) sum_t m_t log r_t, the same for every token (0 for a
    sequence without counted tokens). GSPO_TOKEN: sg[that mean] + log pi_t - sg[log pi_t].
    """
    check_shape("old_logprobs", old_logprobs, logprobs.shape)
    log_ratio = logprobs - old_logprobs  # [B, T]
    if objective in (PolicyObjective.PPO_CLIP, PolicyObjective.CISPO):
        return log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    m = as_float_mask(mask, logprobs)  # [B, T]
    sequence = masked_sum(log_ratio, m, dim=1) / m.sum(dim=1).clamp(min=1.0)  # [B]
    sequence = sequence.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).unsqueeze(1)  # [B, 1]
    if objective is PolicyObjective.GSPO:
        return sequence.expand_as(log_ratio)
    return sequence.detach() + logprobs - logprobs.detach()  # [B, T]: value of s, gradient of log pi_t


def cispo_per_token(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, eps_low: float,
                    eps_high: float) -> tuple[Tensor, Tensor, Tensor]:
    """CISPO per-token loss [B, T] = -sg[clip(r, 1 - eps_low, 1 + eps_high)] * A * log pi, with the ratio r [B, T]
    and a [B, T] indicator of the clipped weights (for statistics). ``advantages``: [B], [B, 1] or [B, T]."""
    if advantages.dim() == 1:
        check_shape("advantages", advantages, logprobs.shape[:1])
        advantages = advantages.unsqueeze(1)  # [B, 1]
    elif advantages.shape != (logprobs.shape[0], 1):  # [B, 1] broadcasts over tokens
        check_shape("advantages", advantages, logprobs.shape)
    ratio = torch.exp(importance_log_ratio(logprobs, old_logprobs, None, PolicyObjective.CISPO)).detach()  # [B, T]
    weight = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # [B, T], no gradient
    clipped = (ratio < 1.0 - eps_low) | (ratio > 1.0 + eps_high)  # [B, T]
    return -weight * advantages * logprobs, ratio, clipped
