"""Built-in prompt tasks: a record builder (``prismrl.data.prompt_tasks``) and its recommended reward.

``TASKS`` maps a name (what YAML writes as ``task: digit_vqa``) to its record builder and reward.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prismrl.data.prompt_tasks import (
    DIGIT_QA_ANSWER_PATTERN,
    EQUATION_PATTERN,
    arithmetic_records,
    digit_qa_records,
    digit_vqa_records,
)
from prismrl.data.records import PromptRecord
from prismrl.rewards.functions import (
    ExactMatchReward,
    FormatReward,
    NumericMatchReward,
    RewardFunction,
    WeightedSumReward,
)


def digit_vqa_reward() -> RewardFunction:
    """1 if the stripped completion is exactly the digit."""
    return ExactMatchReward()


def arithmetic_reward() -> WeightedSumReward:
    """0.5 * [the completion is just "a op b = c"] + 1.0 * [its last number equals the answer]; max 1.5."""
    fmt = FormatReward(EQUATION_PATTERN, name="format", full_match=True)
    return WeightedSumReward([fmt, NumericMatchReward(name="correct")], weights=[0.5, 1.0])


def digit_qa_reward() -> WeightedSumReward:
    """1.0 * [the reply is exactly the answer word] + 0.2 * [the reply is one answer word]; max 1.2."""
    fmt = FormatReward(DIGIT_QA_ANSWER_PATTERN, name="format", full_match=True)
    return WeightedSumReward([ExactMatchReward(name="exact_match"), fmt], weights=[1.0, 0.2])


@dataclass(frozen=True)
class PromptTask:
    """A named task: ``build(split, **kwargs) -> list[PromptRecord]`` and its recommended ``reward()``."""

    build: Callable[..., list[PromptRecord]]
    reward: Callable[[], RewardFunction]

    def records(self, split: str, **kwargs: Any) -> list[PromptRecord]:
        """``build(split, **kwargs)``; ValueError naming the accepted keywords for an unknown one."""
        accepted = [p for p in inspect.signature(self.build).parameters if p != "split"]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(f"task_kwargs: {self.build.__name__} accepts {accepted}, received unknown {unknown}")
        return self.build(split, **kwargs)


TASKS: dict[str, PromptTask] = {
    "digit_vqa": PromptTask(digit_vqa_records, digit_vqa_reward),
    "arithmetic": PromptTask(arithmetic_records, arithmetic_reward),
    "digit_qa": PromptTask(digit_qa_records, digit_qa_reward),
}


def get_task(name: str) -> PromptTask:
    """The task registered as ``name``; ValueError listing the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, received {name!r}")
    return TASKS[name]
