"""Advantage estimators for group rollouts (G completions per prompt, consecutive in a flat [B * G] reward vector).

    GRPO          A_i = (r_i - mean_g r) / (std_g r + eps)                   (group_normalized_advantages; Shao et al.
                                                                              2024; scaling group_std / batch_std / none)
    RLOO          A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_g r)   (leave-one-out baseline;
                                                                              Ahmadian et al. 2024, "Back to Basics")
    REINFORCE_PP  a_i = r_i - mean_g r, then A = (a - mean_batch a) / (std_batch a + eps)
                                                                             (REINFORCE++-baseline; Hu et al. 2025:
                                                                              group mean baseline, global batch scale)

``batch_std`` / ``batch_mean`` replace the local batch's statistics (pass values pooled over every rank). A group
whose rewards are all equal gets exactly zero advantage from every estimator.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from prismrl.rl.advantages import AdvantageScaling, group_normalized_advantages


class AdvantageEstimator(Enum):
    """How group rewards become advantages (formulas in the module docstring)."""

    GRPO = "grpo"
    RLOO = "rloo"
    REINFORCE_PP = "reinforce_pp"


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    centered = group_normalized_advantages(rewards, group_size, AdvantageScaling.NONE)  # validates; [B * G]
    return centered.reshape(-1, group_size)  # [B, G]: r - mean_g r, exactly 0 for constant groups


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """Leave-one-out advantages [B * G]: r_i minus the mean of the group's other G - 1 rewards."""
    return (_grouped(rewards, group_size) * (group_size / (group_size - 1))).reshape(-1)


def reinforce_pp_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4,
                            batch_mean: Tensor | float | None = None, batch_std: Tensor | float | None = None) -> Tensor:
    """REINFORCE++-baseline advantages [B * G]: group-mean baseline, then normalized by the batch mean and std."""
    centered = _grouped(rewards, group_size).reshape(-1)  # [B * G]
    mean = centered.mean() if batch_mean is None else torch.as_tensor(batch_mean, dtype=centered.dtype)
    std = centered.std() if batch_std is None else torch.as_tensor(batch_std, dtype=centered.dtype)
    normalized = (centered - mean) / (std + eps)
    return torch.where(centered == 0, torch.zeros_like(normalized), normalized)


def estimate_advantages(estimator: AdvantageEstimator, rewards: Tensor, group_size: int,
                        scaling: AdvantageScaling = AdvantageScaling.GROUP_STD,
                        batch_std: Tensor | float | None = None) -> Tensor:
    """Advantages [B * G] of ``estimator``; ``scaling`` and ``batch_std`` apply to GRPO (REINFORCE_PP uses
    ``batch_std`` as the std of the centered rewards)."""
    if estimator is AdvantageEstimator.GRPO:
        return group_normalized_advantages(rewards, group_size, scaling, batch_std=batch_std)
    if estimator is AdvantageEstimator.RLOO:
        return rloo_advantages(rewards, group_size)
    if estimator is AdvantageEstimator.REINFORCE_PP:
        return reinforce_pp_advantages(rewards, group_size, batch_std=batch_std)
    raise TypeError(f"estimator: expected an AdvantageEstimator, received {estimator!r}")
