"""Optimizer and learning-rate schedule helpers shared by the stages."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``.

    factor(s) = (s + 1) / warmup                                   for s < warmup
              = min + (1 - min) * 0.5 * (1 + cos(pi * p)),  p = (s - warmup) / (total - warmup)  otherwise
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR with ``warmup_steps = round(warmup_ratio * total_steps)``."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio: expected a float in [0, 1), received {warmup_ratio!r}")
    if total_steps <= 0:
        raise ValueError(f"total_steps: expected a positive number of optimizer steps, received {total_steps!r}")
    warmup_steps = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, total_steps, warmup_steps, min_lr_ratio)
    )


def decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float, lr: float, no_decay_names: tuple[str, ...] = ()
) -> list[dict]:
    """Split trainable parameters into a decayed group (matrices) and an undecayed one (biases, norms, scalars)."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        if param.ndim < 2 or any(key in name for key in no_decay_names):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr})
    return [group for group in groups if group["params"]]


def encoder_head_adamw(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    encoder_parameter_ids: set[int],
    *,
    lr: float,
    encoder_lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    total_steps: int,
    warmup_ratio: float,
    min_lr_ratio: float = 0.0,
    no_decay_names: tuple[str, ...] = (),
    owner: str = "module",
) -> dict:
    """AdamW with head parameters at ``lr`` and encoder parameters at ``encoder_lr`` (each split into decayed and
    undecayed groups), stepped per batch by the warmup + cosine schedule: Lightning's optimizer config dict."""
    named = list(named_parameters)
    head = [(n, p) for n, p in named if id(p) not in encoder_parameter_ids]
    encoder = [(n, p) for n, p in named if id(p) in encoder_parameter_ids]
    groups = decay_groups(head, weight_decay, lr, no_decay_names) + decay_groups(encoder, weight_decay, encoder_lr)
    if not groups:
        raise ValueError(f"{owner}: no trainable parameters")
    optimizer = torch.optim.AdamW(groups, betas=tuple(betas))
    scheduler = warmup_cosine_scheduler(optimizer, total_steps, warmup_ratio, min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
