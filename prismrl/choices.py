"""Checks with errors that name the field (or component), what was expected and what was received: config values,
finite tensors, and the settings classes allowed in checkpoints."""

from __future__ import annotations

import math
from enum import Enum
from numbers import Real
from typing import Any, TypeVar

import torch
from torch import Tensor

E = TypeVar("E", bound=Enum)
T = TypeVar("T", bound=type)


def parse_choice(enum: type[E], value: Any, field: str) -> E:
    """``enum(value)`` for a member or its value; ValueError "<field>: expected one of [...], received ..." otherwise."""
    try:
        return enum(value.value if isinstance(value, enum) else value)
    except ValueError:
        raise ValueError(f"{field}: expected one of {[m.value for m in enum]}, received {value!r}") from None


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` when it is an int >= ``minimum`` (bools are not ints here); ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, received {value!r}")
    return value


def check_positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    """``float(value)`` when it is a finite real > 0 (>= 0 with ``allow_zero``); ValueError naming ``name`` otherwise."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite float {bound}, received {value!r}")
    return float(value)


def checkpoint_safe(cls: T) -> T:
    """Class decorator: allow ``cls`` (a settings dataclass stored in a module's hyperparameters) in checkpoints
    read with ``torch.load(..., weights_only=True)``; nothing else executes on load."""
    torch.serialization.add_safe_globals([cls])
    return cls


class NonFiniteError(RuntimeError):
    """A loss, reward, advantage, gradient or weight is NaN or infinite."""


def check_finite(component: str, value: Tensor, step: int | None = None) -> None:
    """NonFiniteError "step S: <component> is not finite (k of n values are nan/inf)" unless every value is finite."""
    bad = ~torch.isfinite(value.detach())
    if bad.any():
        where = f"step {step}: " if step is not None else ""
        raise NonFiniteError(f"{where}{component} is not finite ({int(bad.sum())} of {bad.numel()} values are "
                             f"nan/inf); lower optimizer.lr, check the data, or set NumericalGuard on_nonfinite: skip_step")
