"""DAPO's batch shaping (Yu et al. 2025, "DAPO"): overlong reward shaping and filtering, dynamic sampling.

    overlong penalty  R(|y|) = 0                                   |y| <= L_max - L_cache
                             = ((L_max - L_cache) - |y|) / L_cache  L_max - L_cache < |y| <= L_max
                             = -1                                   |y| > L_max
    overlong filter   a completion cut at the length budget (no EOS) is left out of the loss (its mask is zeroed)
    dynamic sampling  a group whose G rewards are all equal has zero advantage and no gradient: it is dropped,
                      and sampling continues until the batch holds enough informative groups
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from prismrl.choices import check_positive_float, check_positive_int, checkpoint_safe


@checkpoint_safe
@dataclass(frozen=True)
class OverlongSettings:
    """DAPO's overlong handling (YAML ``overlong: {buffer: 4, penalty: 1.0, filter: true}``).

    buffer: L_cache tokens before the length budget (``sampling.max_new_tokens``) over which the reward falls by
    up to ``penalty`` (``overlong_penalty``; None = no shaping); filter: truncated completions (no EOS) leave the loss.
    """

    buffer: int | None = None
    penalty: float = 1.0
    filter: bool = False

    def __post_init__(self) -> None:
        if self.buffer is not None:
            check_positive_int("overlong.buffer", self.buffer)
        check_positive_float("overlong.penalty", self.penalty, allow_zero=True)
        if not isinstance(self.filter, bool):
            raise TypeError(f"overlong.filter: expected a bool, received {self.filter!r}")


@checkpoint_safe
@dataclass(frozen=True)
class DynamicSamplingSettings:
    """DAPO's dynamic sampling (YAML ``dynamic_sampling: {max_rounds: 3}``): groups whose G rewards are all equal are
    sampled again, up to ``max_rounds`` rollout rounds per step (the first included), until ``min_groups`` groups per
    rank are informative (None = every group of the batch); groups still uninformative then leave the loss."""

    max_rounds: int = 3
    min_groups: int | None = None

    def __post_init__(self) -> None:
        check_positive_int("dynamic_sampling.max_rounds", self.max_rounds)
        if self.min_groups is not None:
            check_positive_int("dynamic_sampling.min_groups", self.min_groups)


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int) -> Tensor:
    """The soft length penalty [N] (formula in the module docstring) for completion lengths [N] in tokens."""
    check_positive_int("max_length", max_length)
    check_positive_int("buffer", buffer)
    if buffer > max_length:
        raise ValueError(f"buffer: expected an int <= max_length ({max_length}), received {buffer}")
    lengths = lengths.to(torch.float32)
    start = float(max_length - buffer)
    penalty = ((start - lengths) / buffer).clamp(max=0.0)  # 0 up to the buffer, then linear down to -1 at L_max
    return torch.where(lengths > max_length, torch.full_like(penalty, -1.0), penalty)


def overlong_filter_mask(mask: Tensor, finished: Tensor) -> Tensor:
    """``mask`` [B, T] with the rows of unfinished (truncated, no EOS) completions zeroed; ``finished`` [B] bool."""
    if finished.shape != mask.shape[:1]:
        raise ValueError(f"finished: expected shape ({mask.shape[0]},), received {tuple(finished.shape)}")
    return mask * finished.to(mask.dtype).unsqueeze(1)


def informative_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[B] bool: the groups of a flat [B * G] reward vector whose rewards are not all equal (non-zero advantage)."""
    check_positive_int("group_size", group_size, minimum=2)
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards: expected shape (B * {group_size},), received {tuple(rewards.shape)}")
    grouped = rewards.reshape(-1, group_size)  # [B, G]
    return grouped.amax(dim=1) != grouped.amin(dim=1)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """``flag`` or-ed over every rank (one all-reduce when torch.distributed is up), the same answer on each rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def groups_to_resample(informative: Tensor, min_groups: int | None) -> Tensor:
    """[K] long: the uninformative groups of ``informative`` [B] bool to sample again, none once ``min_groups``
    (None = all B) groups are informative."""
    wanted = informative.numel() if min_groups is None else min(min_groups, informative.numel())
    if int(informative.sum()) >= wanted:
        return torch.zeros(0, dtype=torch.long)
    return (~informative).nonzero().flatten()
