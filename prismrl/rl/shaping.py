"""DAPO's batch shaping (Yu et al. 2025, "DAPO"): overlong reward shaping and filtering, dynamic sampling.

    overlong penalty  R(|y|) = 0                                   |y| <= L_max - L_cache
                             = ((L_max - L_cache) - |y|) / L_cache  L_max - L_cache < |y| <= L_max
                             = -1                                   |y| > L_max
    overlong filter   a completion cut at the length budget (no EOS) is left out of the loss (its mask is zeroed)
    dynamic sampling  a group whose G rewards are all equal has zero advantage and no gradient: it is dropped,
                      and sampling continues until the batch holds enough informative groups
"""

from __future__ import annotations

import torch
from torch import Tensor

from prismrl.choices import check_positive_int


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
