"""Advantage estimators and masked statistics, pure torch.

- group-normalized advantages (GRPO): A_i = (r_i - mean_group(r)) / (scale + eps)
- generalized advantage estimation (PPO): A_t = sum_l (gamma * lam)^l * delta_{t+l}
- discounted returns with done flags (actor-critic): G_t = r_t + gamma * (1 - done_t) * G_{t+1}
- whitening and masked mean / variance over the tokens a [B, T] mask marks

Masks are bool or float [B, T] with 1 (True) on the completion tokens that count.
"""

from __future__ import annotations

from enum import Enum

import torch
import torch.distributed as dist
from torch import Tensor

from prismrl.choices import check_positive_int


def check_shape(name: str, tensor: Tensor, expected: tuple[int, ...] | torch.Size) -> None:
    """Raise ValueError naming ``name`` unless ``tensor.shape == expected``."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, received {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, received {tuple(tensor.shape)}")


def as_float_mask(mask: Tensor | None, like: Tensor, name: str = "mask") -> Tensor:
    """``mask`` checked against ``like.shape`` and cast to ``like``'s float dtype (all ones when None)."""
    dtype = like.dtype if like.is_floating_point() else torch.float32
    if mask is None:
        return torch.ones(like.shape, dtype=dtype, device=like.device)
    check_shape(name, mask, like.shape)
    return mask.to(dtype)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(x * m) over ``dim`` (all dims when None); masked-out entries are dropped, even if NaN or inf."""
    masked = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return masked.sum() if dim is None else masked.sum(dim)


def check_discount(name: str, value: float) -> None:
    """Raise ValueError naming ``name`` unless 0 <= value <= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1], received {value!r}")


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """sum(x * m) / max(sum(m), 1): a mask with no tokens gives 0 instead of NaN."""
    check_shape("mask", mask, x.shape)
    count = mask.to(x.dtype if x.is_floating_point() else torch.float32)
    count = count.sum() if dim is None else count.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of the masked entries: sum(m * (x - mean)^2) / (n - 1) (or / n when not unbiased)."""
    mean = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    denom = n - 1.0 if unbiased else n
    return masked_sum((x - mean) ** 2, mask) / denom.clamp(min=1.0)


class AdvantageScaling(Enum):
    """Denominator of group-normalized advantages."""

    GROUP_STD = "group_std"  # std of the rewards in the same group (GRPO)
    BATCH_STD = "batch_std"  # std of all rewards in the batch
    NONE = "none"  # centered only (Dr. GRPO)


def group_normalized_advantages(
    rewards: Tensor,
    group_size: int,
    scaling: AdvantageScaling = AdvantageScaling.GROUP_STD,
    eps: float = 1e-4,
    batch_std: Tensor | float | None = None,
) -> Tensor:
    """GRPO advantages: A_i = (r_i - mean_group(r)) / (s + eps), returned flat [B * G].

    ``rewards`` is [B * G] (the G completions of a prompt are consecutive) or [B, G]. The scale s is
    the group's standard deviation (GROUP_STD), the standard deviation of every reward in the batch
    (BATCH_STD), or s + eps = 1 (NONE). Standard deviations use Bessel's correction (divide by n - 1),
    like ``torch.std`` and the GRPO reference trainers. A group whose rewards are all equal gets
    exactly zero advantage in every mode (no NaN, no rounding residue). ``batch_std`` replaces the local
    batch's std in BATCH_STD mode: pass ``global_std(rewards)`` to scale by the std over every rank's rewards.
    """
    if not isinstance(scaling, AdvantageScaling):
        raise TypeError(f"scaling: expected an AdvantageScaling, received {scaling!r}")
    check_positive_int("group_size", group_size, minimum=2)  # a group needs two completions
    if not isinstance(rewards, Tensor):
        raise TypeError(f"rewards: expected a torch.Tensor, received {type(rewards).__name__}")
    if rewards.dim() == 2:
        if rewards.shape[1] != group_size:
            raise ValueError(f"rewards: expected shape (B, {group_size}), received {tuple(rewards.shape)}")
    elif rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards: expected shape (B * {group_size},) or (B, {group_size}), received {tuple(rewards.shape)}"
        )
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    grouped = rewards.to(dtype).reshape(-1, group_size)  # [B, G]
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if scaling is AdvantageScaling.GROUP_STD:
        centered = centered / (grouped.std(dim=1, keepdim=True) + eps)
    elif scaling is AdvantageScaling.BATCH_STD:
        scale = grouped.std() if batch_std is None else torch.as_tensor(batch_std, dtype=dtype, device=grouped.device)
        centered = centered / (scale + eps)
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # [B, 1]
    return torch.where(constant, torch.zeros_like(centered), centered).reshape(-1)  # [B * G]


@torch.no_grad()
def global_std(values: Tensor) -> Tensor:
    """Standard deviation (Bessel-corrected) of ``values`` pooled over every rank, the same scalar on each rank.

    Two all-reduces when torch.distributed is up (ranks may hold different counts): n and sum(x) give the pooled
    mean m; then std = sqrt(sum_ranks sum (x - m)^2 / (n - 1)). Equals ``torch.cat(all values).std()``; on one
    process it is ``values.std()``.
    """
    x = values.detach().reshape(-1).to(values.dtype if values.is_floating_point() else torch.float32)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x.std()
    moments = torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device), x.double().sum()])
    dist.all_reduce(moments, op=dist.ReduceOp.SUM)
    mean = moments[1] / moments[0].clamp(min=1.0)
    squares = ((x.double() - mean) ** 2).sum()
    dist.all_reduce(squares, op=dist.ReduceOp.SUM)
    return (squares / (moments[0] - 1.0).clamp(min=1.0)).sqrt().to(x.dtype)


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over the masked tokens; returns (advantages, returns), both [B, T].

        delta_t = r_t + gamma * V_next(t) - V_t
        A_t     = delta_t + gamma * lam * A_next(t)
        R_t     = A_t + V_t

    where next(t) is the next position with mask 1. After the last counted token the value is 0
    (terminal), so right padding never leaks into the estimate; masked positions in between (e.g.
    inserted observation tokens) are skipped, carrying value and advantage across them. Masked
    positions get advantage 0 and return 0. Computed without gradient (values are targets).
    Vectorized over the batch, one reverse loop over time.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards: expected shape (B, T), received {tuple(rewards.shape)}")
    check_shape("values", values, rewards.shape)
    check_shape("mask", mask, rewards.shape)
    check_discount("gamma", gamma)
    check_discount("lam", lam)
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    rewards, values, valid = rewards.to(dtype), values.to(dtype), mask.bool()
    advantages = torch.zeros_like(rewards)  # [B, T]
    next_value = torch.zeros_like(rewards[:, 0])  # [B]
    next_advantage = torch.zeros_like(rewards[:, 0])  # [B]
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # [B]
        advantage = delta + gamma * lam * next_advantage  # [B]
        advantages[:, t] = torch.where(valid[:, t], advantage, 0.0)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_advantage = torch.where(valid[:, t], advantage, next_advantage)
    returns = torch.where(valid, advantages + values, 0.0)  # [B, T]
    return advantages, returns


def discounted_returns(rewards: Tensor, dones: Tensor | None, gamma: float, bootstrap: Tensor | None = None) -> Tensor:
    """Monte-Carlo returns [B, T] -> [B, T]: G_t = r_t + gamma * (1 - done_t) * G_{t+1}, G_T = bootstrap.

    ``done_t`` (bool or 0/1; None = no episode ends) marks the last step of an episode, so the sum restarts
    there; ``bootstrap`` [B] is the value estimate after the last step (default 0). With T = 1 (one-step
    contextual bandit) and no bootstrap the returns are the rewards.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards: expected shape (B, T), received {tuple(rewards.shape)}")
    check_discount("gamma", gamma)
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    rewards = rewards.to(dtype)
    keep = 1.0 - as_float_mask(dones, rewards, "dones") if dones is not None else torch.ones_like(rewards)  # [B, T]
    running = torch.zeros_like(rewards[:, 0])  # [B]
    if bootstrap is not None:
        check_shape("bootstrap", bootstrap, rewards.shape[:1])
        running = bootstrap.to(dtype)
    returns = torch.zeros_like(rewards)  # [B, T]
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * keep[:, t] * running
        returns[:, t] = running
    return returns


def whiten(
    x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, unbiased: bool = True, eps: float = 1e-8
) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the masked entries; masked-out entries become 0.

    var divides by n - 1 (``unbiased``, PPO's whitening) or by n (the population variance, actor-critic).
    With ``shift_mean=False`` the mean is added back: x' = (x - mean) / sqrt(var + eps) + mean. Fewer than
    2 masked entries have no spread and are returned unchanged (centring one sample would zero it).
    """
    m = as_float_mask(mask, x)
    mean, var = masked_mean(x, m), masked_var(x, m, unbiased)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    out = torch.where(m.sum() >= 2, out, x)
    return torch.where(m.bool(), out, torch.zeros((), dtype=out.dtype, device=out.device))
