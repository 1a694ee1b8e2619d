"""Parse a config value into an Enum member, with an error that names the field and the accepted values."""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


def parse_choice(enum: type[E], value: Any, field: str) -> E:
    """``enum(value)`` for a member or its value; ValueError "<field>: expected one of [...], received ..." otherwise."""
    try:
        return enum(value.value if isinstance(value, enum) else value)
    except ValueError:
        raise ValueError(f"{field}: expected one of {[m.value for m in enum]}, received {value!r}") from None
