"""Numerical guard: no step trains on a non-finite loss or gradient, no checkpoint holds a non-finite weight.

Every prismrl stage adds a ``NumericalGuard`` unless the Trainer already has one (``StageModule.configure_callbacks``).

- ``on_before_backward``: the loss must be finite;
- ``on_before_optimizer_step``: the global gradient norm ``sqrt(sum_p ||grad_p||^2)`` over the optimizer's
  parameters must be finite; the stage's norm clipping, which Lightning runs next, reuses it
  (``StageModule.remember_grad_norm``) instead of computing it again;
- ``on_save_checkpoint``: every floating-point tensor of the module's state dict must be finite.

``on_nonfinite="stop"`` (default) raises ``NonFiniteError`` naming the step and the component;
``"skip_step"`` drops the step's gradients (the optimizer then leaves every parameter as it is), counts the skip
(``train/skipped_steps``) and stops once ``max_consecutive_skips`` steps in a row were skipped. Stages check
their own components too (rewards, advantages) with ``check_finite``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from prismrl.choices import (
    NonFiniteError,
    check_finite,
    check_positive_int,
    parse_choice,
)

__all__ = ["NonFiniteError", "NumericalGuard", "OnNonFinite", "check_finite", "gradient_norm"]


class OnNonFinite(str, Enum):
    STOP = "stop"
    SKIP_STEP = "skip_step"


def gradient_norm(module: torch.nn.Module) -> Tensor:
    """The global L2 norm of every gradient of ``module`` (0 when none exists), as a float32 scalar; FSDP2-sharded
    gradients count with their full tensors (``prismrl.backbones.sharding.total_norm``: the same on every rank)."""
    return _norm_of(module.parameters())


def _norm_of(params) -> Tensor:
    from prismrl.backbones.sharding import total_norm

    return total_norm([p.grad for p in params if p.grad is not None])


class NumericalGuard(Callback):
    """Stop (or skip the step) on a non-finite loss or gradient; refuse to checkpoint non-finite weights."""

    def __init__(self, on_nonfinite: str = "stop", max_consecutive_skips: int = 10) -> None:
        super().__init__()
        self.on_nonfinite = parse_choice(OnNonFinite, on_nonfinite, "on_nonfinite")
        self.max_consecutive_skips = check_positive_int("max_consecutive_skips", max_consecutive_skips)
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self._skip_pending = False

    def _handle(self, trainer: pl.Trainer, component: str, value: Tensor) -> None:
        try:
            check_finite(component, value, trainer.global_step)
        except NonFiniteError:
            if self.on_nonfinite is OnNonFinite.STOP:
                raise
            self._skip_pending = True

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self._handle(trainer, "the loss", loss)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self._skip_pending:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            norm = _norm_of(params)
            self._handle(trainer, "the gradient norm", norm)
            if not self._skip_pending and hasattr(pl_module, "remember_grad_norm"):
                pl_module.remember_grad_norm(optimizer, norm)
        if not self._skip_pending:
            self.consecutive_skips = 0
            return
        self._skip_pending = False
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None  # the optimizer skips parameters without a gradient
        self.skipped_steps += 1
        self.consecutive_skips += 1
        pl_module.log("train/skipped_steps", float(self.skipped_steps))
        if self.consecutive_skips >= self.max_consecutive_skips:
            raise NonFiniteError(f"step {trainer.global_step}: {self.consecutive_skips} steps in a row had a non-finite "
                                 f"loss or gradient (max_consecutive_skips={self.max_consecutive_skips}); stopping")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A NonFiniteError raised inside a stage (its policy logits, rewards, ...) gets the step it happened at."""
        if isinstance(exception, NonFiniteError) and exception.args and not str(exception.args[0]).startswith("step "):
            exception.args = (f"step {trainer.global_step}: {exception.args[0]}", *exception.args[1:])

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if isinstance(tensor, Tensor) and tensor.is_floating_point():
                check_finite(f"weight {name!r} (checkpoint not written)", tensor, trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive_skips = int(state_dict.get("consecutive_skips", 0))
