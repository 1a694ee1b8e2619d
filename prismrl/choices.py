"""Config-value checks with errors that name the field, what was expected and what was received."""

from __future__ import annotations

from enum import Enum
import math
from numbers import Real
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


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
