"""Reward functions for prompt tasks, and their validated scoring into tensors.

A task is a list of ``PromptRecord`` (prompt text with one "<image>" per image, images, reference answer)
plus a reward function: any callable ``fn(completions: list[str], records: list[PromptRecord])`` that
returns N numbers (a list, or a 1-D tensor / array), one per completion, and optionally has a ``name``.
The built-ins are small classes so LightningCLI can inject them with ``class_path`` / ``init_args``; they
give an empty or whitespace-only completion reward 0. ``score_completions`` calls a reward function and
checks what it returned (length, type, finiteness) before the numbers reach the policy loss.
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prismrl.data.records import PromptRecord

RewardFunction = Callable[[list[str], list["PromptRecord"]], Any]
_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def reward_name(fn: Any) -> str:
    """``fn.name``, else the function's ``__name__``, else its class name."""
    name = getattr(fn, "name", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return str(name)


def _compile(pattern: str | None, field_name: str) -> re.Pattern | None:
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise TypeError(f"{field_name}: expected a regular expression string, received {type(pattern).__name__}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{field_name}: {pattern!r} is not a valid regular expression ({exc})") from None


def extract_answer(completion: str, pattern: re.Pattern | None) -> str | None:
    """The stripped completion, or the regex's first group (whole match without groups); None if no match."""
    if pattern is None:
        return completion.strip()
    match = pattern.search(completion)
    if match is None:
        return None
    return (match.group(1) if pattern.groups else match.group(0)).strip()


def last_number(text: str) -> float | None:
    """The last number in ``text`` ("1,234" counts as 1234), or None when there is none."""
    numbers = _NUMBER.findall(_THOUSANDS.sub("", text))
    return float(numbers[-1]) if numbers else None


def _reference(record: PromptRecord, index: int, fn_name: str) -> str:
    if record.answer is None:
        raise ValueError(f"records[{index}].answer: {fn_name} needs a reference answer, received None")
    return record.answer


class ExactMatchReward:
    """r = 1 if extract(completion) == answer (both stripped; casefolded unless ``case_sensitive``) else 0."""

    def __init__(self, extract: str | None = None, case_sensitive: bool = False, name: str = "exact_match") -> None:
        self.pattern = _compile(extract, "extract")
        self.case_sensitive, self.name = case_sensitive, name

    def _norm(self, text: str) -> str:
        return text.strip() if self.case_sensitive else text.strip().casefold()

    def __call__(self, completions: list[str], records: list[PromptRecord]) -> list[float]:
        out = []
        for i, (completion, record) in enumerate(zip(completions, records)):
            reference = self._norm(_reference(record, i, self.name))
            found = extract_answer(completion, self.pattern) if completion.strip() else None
            out.append(1.0 if found and self._norm(found) == reference else 0.0)
        return out


class NumericMatchReward:
    """r = 1 if |last number of extract(completion) - float(answer)| <= tolerance else 0."""

    def __init__(self, tolerance: float = 1e-6, extract: str | None = None, name: str = "numeric_match") -> None:
        if not isinstance(tolerance, Real) or not tolerance >= 0:
            raise ValueError(f"tolerance: expected a number >= 0, received {tolerance!r}")
        self.tolerance, self.pattern, self.name = float(tolerance), _compile(extract, "extract"), name

    def __call__(self, completions: list[str], records: list[PromptRecord]) -> list[float]:
        out = []
        for i, (completion, record) in enumerate(zip(completions, records)):
            reference = last_number(_reference(record, i, self.name))
            if reference is None:
                raise ValueError(f"records[{i}].answer: {self.name} expected a number, received {record.answer!r}")
            found = extract_answer(completion, self.pattern)
            value = last_number(found) if found else None
            out.append(1.0 if value is not None and abs(value - reference) <= self.tolerance else 0.0)
        return out


class FormatReward:
    """r = 1 if ``pattern`` matches the completion (``re.search``; ``re.fullmatch`` of the stripped text when
    ``full_match``) else 0. No implicit flags: write ``(?s)`` to let "." cross newlines."""

    def __init__(self, pattern: str, name: str = "format", full_match: bool = False) -> None:
        self.pattern, self.full_match, self.name = _compile(pattern, "pattern"), full_match, name

    def __call__(self, completions: list[str], records: list[PromptRecord]) -> list[float]:
        match = self.pattern.fullmatch if self.full_match else self.pattern.search
        return [1.0 if c.strip() and match(c.strip() if self.full_match else c) else 0.0 for c in completions]


def import_callable(path: str, field_name: str = "function") -> Any:
    """``"package.module:attr"`` or ``"package.module.attr"`` -> the imported object."""
    if not isinstance(path, str) or not re.fullmatch(r"[\w.]+(:[\w.]+)?", path) or "." not in path.replace(":", "."):
        raise ValueError(f"{field_name}: expected 'package.module:function' or 'package.module.function', received {path!r}")
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{field_name}: cannot import module {module_name!r} for {path!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{field_name}: module {module_name!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


class CallableReward:
    """A user reward from an import path: ``function(completions, records, **kwargs)``.

    A class at that path is instantiated with ``kwargs`` and the instance is called instead.
    """

    def __init__(self, function: str, name: str | None = None, kwargs: dict[str, Any] | None = None) -> None:
        target = import_callable(function)
        kwargs = dict(kwargs or {})
        if isinstance(target, type):
            target = target(**kwargs)
        elif callable(target) and kwargs:
            target = functools.partial(target, **kwargs)
        if not callable(target):
            raise TypeError(f"function: {function!r} is a {type(target).__name__}, expected a callable")
        self.function, self.target = function, target
        self.name = name or reward_name(getattr(target, "func", target))

    def __call__(self, completions: list[str], records: list[PromptRecord]) -> Any:
        return self.target(completions, records)


def build_reward(value: Any, field: str = "reward") -> RewardFunction:
    """``value`` when callable; a ``{class_path, init_args}`` config that the CLI could not instantiate is built here, so
    its own error (an import path that does not exist, a bad argument) is the one the user reads."""
    if callable(value):
        return value
    class_path = getattr(value, "class_path", None) or (value.get("class_path") if isinstance(value, dict) else None)
    if isinstance(class_path, str):
        init_args = getattr(value, "init_args", None) if not isinstance(value, dict) else value.get("init_args")
        kwargs = dict(vars(init_args) if hasattr(init_args, "__dict__") else (init_args or {}))
        target = import_callable(class_path, f"{field}.class_path")(**kwargs)
        if callable(target):
            return target
        value = target
    raise TypeError(f"{field}: expected a callable reward function, received {type(value).__name__}")


def check_rewards(values: Any, fn_name: str, expected: int) -> Tensor:
    """A reward function's output -> float32 tensor [N]; TypeError for non-numbers, ValueError for a wrong
    length, shape or a NaN / inf (naming the function and the first bad index)."""
    where = f"reward function {fn_name!r}"
    if isinstance(values, (Tensor, np.ndarray)):
        real = not values.is_complex() if isinstance(values, Tensor) else values.dtype.kind in "biuf"
        if not real:
            raise TypeError(f"{where}: expected real numbers, received an array of dtype {values.dtype}")
        if values.ndim != 1:
            shape = tuple(values.shape)
            raise ValueError(f"{where}: expected a 1-D result of length {expected}, received shape {shape}")
        scores = values.detach().cpu() if isinstance(values, Tensor) else torch.from_numpy(values.astype(np.float64))
    elif isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        for i, value in enumerate(values):
            if isinstance(value, Tensor) and value.numel() == 1 and not value.is_complex():
                continue
            if not isinstance(value, (Real, np.bool_)):
                received = f"{type(value).__name__} {value!r:.40}"
                raise TypeError(f"{where}: expected real numbers, received {received} at index {i}")
        scores = torch.tensor([float(v) for v in values], dtype=torch.float32)
    else:
        received = type(values).__name__
        raise TypeError(f"{where}: expected a list of {expected} numbers or a 1-D tensor, received {received}")
    if len(scores) != expected:
        raise ValueError(f"{where}: expected {expected} rewards (one per completion), received {len(scores)}")
    scores = scores.to(torch.float32)  # [N]
    bad = torch.nonzero(~torch.isfinite(scores)).flatten()
    if len(bad):
        index = int(bad[0])
        raise ValueError(f"{where}: reward {float(scores[index])} at index {index} is not finite")
    return scores


def _unique_names(functions: Sequence[Any]) -> list[str]:
    names, seen = [], {}
    for fn in functions:
        base = reward_name(fn)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


class WeightedSumReward:
    """r = sum_k w_k * r_k (w_k = 1 when ``weights`` is None); ``components`` gives each r_k unweighted."""

    def __init__(
        self, functions: list[RewardFunction], weights: list[float] | None = None, name: str = "reward"
    ) -> None:
        if not isinstance(functions, Sequence) or len(functions) == 0:
            raise ValueError(f"functions: expected a non-empty list of reward functions, received {functions!r}")
        for k, fn in enumerate(functions):
            if not callable(fn):
                raise TypeError(f"functions[{k}]: expected a callable reward function, received {type(fn).__name__}")
        weights = [1.0] * len(functions) if weights is None else list(weights)
        if len(weights) != len(functions):
            raise ValueError(f"weights: expected {len(functions)} weights (one per function), received {len(weights)}")
        if not all(isinstance(w, Real) and math.isfinite(w) for w in weights):
            raise ValueError(f"weights: expected finite numbers, received {weights}")
        self.functions, self.weights, self.name = list(functions), [float(w) for w in weights], name
        self.names = _unique_names(self.functions)

    def component_scores(self, completions: list[str], records: list[PromptRecord]) -> dict[str, Tensor]:
        """Validated unweighted rewards per function: name -> [N]."""
        n = len(completions)
        return {name: check_rewards(fn(completions, records), name, n) for name, fn in zip(self.names, self.functions)}

    def combine(self, components: dict[str, Tensor]) -> Tensor:
        """sum_k w_k * components[k] -> [N]."""
        return sum(w * components[n] for n, w in zip(self.names, self.weights))

    def components(self, completions: list[str], records: list[PromptRecord]) -> dict[str, list[float]]:
        return {n: v.tolist() for n, v in self.component_scores(completions, records).items()}

    def __call__(self, completions: list[str], records: list[PromptRecord]) -> list[float]:
        return self.combine(self.component_scores(completions, records)).tolist()


@dataclass
class RewardScores:
    """total: [N] float32 reward per completion; components: name -> [N] (the total itself for a single function)."""

    total: Tensor
    components: dict[str, Tensor]


def score_completions(reward_fn: RewardFunction, completions: list[str], records: list[PromptRecord]) -> RewardScores:
    """Call ``reward_fn`` and validate its output (see ``check_rewards``)."""
    if not callable(reward_fn):
        raise TypeError(f"reward_fn: expected a callable reward function, received {type(reward_fn).__name__}")
    if isinstance(completions, str) or not isinstance(completions, Sequence):
        raise TypeError(f"completions: expected a list of str, received {type(completions).__name__}")
    for i, completion in enumerate(completions):
        if not isinstance(completion, str):
            raise TypeError(f"completions[{i}]: expected str, received {type(completion).__name__}")
    if len(records) != len(completions):
        raise ValueError(f"records: expected {len(completions)} records (one per completion), received {len(records)}")
    completions, records = list(completions), list(records)
    if isinstance(reward_fn, WeightedSumReward):
        components = reward_fn.component_scores(completions, records)
        return RewardScores(total=reward_fn.combine(components).to(torch.float32), components=components)
    name = reward_name(reward_fn)
    total = check_rewards(reward_fn(completions, records), name, len(completions))
    return RewardScores(total=total, components={name: total})
