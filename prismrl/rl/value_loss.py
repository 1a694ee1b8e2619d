"""Critic losses: PPO clipped value loss and masked mean squared error, pure torch."""

from __future__ import annotations

import torch
from torch import Tensor

from prismrl.rl.advantages import as_float_mask, check_shape, masked_mean


def value_mse(values: Tensor, returns: Tensor, mask: Tensor | None = None) -> Tensor:
    """Masked mean squared error: sum(m * (V - R)^2) / max(sum(m), 1); any shape, mask None = all entries."""
    check_shape("returns", returns, values.shape)
    m = as_float_mask(mask, values)
    return masked_mean((values - returns) ** 2, m)


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor | None = None,
    clip_range: float = 0.2,
) -> Tensor:
    """PPO value loss with clipping around the rollout values, a scalar.

        V_clip = V_old + clip(V - V_old, -clip_range, clip_range)
        L      = 0.5 * masked_mean(max((V - R)^2, (V_clip - R)^2))

    ``values`` [B, T] carry the gradient; ``old_values`` and ``returns`` [B, T] are rollout targets.
    """
    if not clip_range > 0:
        raise ValueError(f"clip_range: expected a positive float, received {clip_range!r}")
    check_shape("old_values", old_values, values.shape)
    check_shape("returns", returns, values.shape)
    m = as_float_mask(mask, values)
    clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
    worst = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(worst, m)


def value_clip_fraction(
    values: Tensor, old_values: Tensor, mask: Tensor | None = None, clip_range: float = 0.2
) -> Tensor:
    """Detached fraction of counted entries where |V - V_old| > clip_range (the clipped branch can bind)."""
    check_shape("old_values", old_values, values.shape)
    m = as_float_mask(mask, values)
    with torch.no_grad():
        return masked_mean(((values - old_values).abs() > clip_range).to(m.dtype), m)
