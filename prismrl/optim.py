"""Optimizer settings and learning-rate schedule helpers shared by the stages.

Every stage takes one ``OptimizerSettings`` (YAML: ``model.init_args.optimizer.lr``) and builds AdamW with
decayed / undecayed parameter groups, stepped per optimizer step by a linear-warmup + cosine schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prismrl.choices import check_positive_float, checkpoint_safe


@checkpoint_safe
@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW and its warmup + cosine schedule, shared by every stage.

    Args:
        lr: the trained heads' (or the whole policy's) learning rate.
        encoder_lr: pretrained encoders' learning rate where a stage has separate encoders (None = lr).
        weight_decay: AdamW weight decay, on matrices only (biases, norms and scalars get 0).
        betas: AdamW's (beta1, beta2).
        warmup_ratio: share of the optimizer steps in linear warmup.
        min_lr_ratio: the cosine's floor as a fraction of each lr.
        max_grad_norm: clip the global gradient norm to this value (None = no clipping).
        fused: the fused AdamW kernel (one pass over all tensors; about 5x faster than the per-tensor loop on CPU
            for a 135M model); None = fused wherever every parameter is a plain floating CPU / CUDA tensor
            (sharded DTensors use foreach).
    """

    lr: float = 1e-3
    encoder_lr: float | None = None
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = None
    fused: bool | None = None

    def __post_init__(self) -> None:
        check_positive_float("optimizer.lr", self.lr)
        if self.encoder_lr is not None:
            check_positive_float("optimizer.encoder_lr", self.encoder_lr, allow_zero=True)
        check_positive_float("optimizer.weight_decay", self.weight_decay, allow_zero=True)
        betas = tuple(self.betas)
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"optimizer.betas: expected two floats in [0, 1), received {self.betas!r}")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        if not (isinstance(self.warmup_ratio, (int, float)) and 0.0 <= self.warmup_ratio < 1.0):
            raise ValueError(f"optimizer.warmup_ratio: expected a float in [0, 1), received {self.warmup_ratio!r}")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0.0 <= self.min_lr_ratio <= 1.0):
            raise ValueError(f"optimizer.min_lr_ratio: expected a float in [0, 1], received {self.min_lr_ratio!r}")
        if self.max_grad_norm is not None:
            check_positive_float("optimizer.max_grad_norm", self.max_grad_norm)

    @property
    def encoder_learning_rate(self) -> float:
        """``encoder_lr``, or ``lr`` when it is None."""
        return self.lr if self.encoder_lr is None else self.encoder_lr


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


def adamw_kernel(settings: OptimizerSettings, groups: list[dict]) -> dict[str, bool]:
    """``{"fused": True}`` or ``{"foreach": True}`` for ``torch.optim.AdamW`` (see ``OptimizerSettings.fused``)."""
    params = [p for group in groups for p in group["params"]]
    supported = all(type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in ("cpu", "cuda")
                    for p in params)
    fused = supported if settings.fused is None else settings.fused
    return {"fused": True} if fused else {"foreach": True}


def adamw_with_schedule(
    settings: OptimizerSettings,
    lr_groups: Sequence[tuple[Iterable[tuple[str, nn.Parameter]], float]],
    total_steps: int,
    *,
    no_decay_names: tuple[str, ...] = (),
    owner: str = "module",
) -> dict:
    """AdamW over ``lr_groups`` [(named parameters, lr), ...], each split into decayed and undecayed groups,
    stepped per optimizer step by the warmup + cosine schedule: Lightning's optimizer config dict."""
    groups = [g for named, lr in lr_groups for g in decay_groups(named, settings.weight_decay, lr, no_decay_names)]
    if not groups:
        raise ValueError(f"{owner}: no trainable parameters")
    optimizer = torch.optim.AdamW(groups, betas=settings.betas, **adamw_kernel(settings, groups))
    scheduler = warmup_cosine_scheduler(optimizer, total_steps, settings.warmup_ratio, settings.min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def encoder_head_adamw(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    encoder_parameter_ids: set[int],
    settings: OptimizerSettings,
    total_steps: int,
    *,
    no_decay_names: tuple[str, ...] = (),
    owner: str = "module",
) -> dict:
    """``adamw_with_schedule`` with head parameters at ``settings.lr`` and encoder parameters (by id) at
    ``settings.encoder_learning_rate``."""
    named = list(named_parameters)
    head = [(n, p) for n, p in named if id(p) not in encoder_parameter_ids]
    encoder = [(n, p) for n, p in named if id(p) in encoder_parameter_ids]
    return adamw_with_schedule(settings, [(head, settings.lr), (encoder, settings.encoder_learning_rate)], total_steps,
                               no_decay_names=no_decay_names, owner=owner)
