"""Built-in prompt tasks for GRPO: datasets of ``PromptRecord`` plus each task's recommended reward.

- ``digit_vqa``: scikit-learn's 1,797 digits (rendered by ``prismrl.data.digits``: dark ink on light, RGB,
  ``image_size`` px) asked as "<image>Which digit is shown? Answer with a single digit."; answer "0".."9";
  reward ``ExactMatchReward``. The split is ``stratified_split`` of the digits dataset (same seed -> same rows).
- ``arithmetic``: "a op b" problems with operands in ``[0, max_operand]``, written as a one-shot Q/A prompt
  whose example answers in the form "x op y = z"; reward 0.5 * [the reply is just such an equation] +
  1.0 * [its last number is correct].
  Train and val draw from independent seeded streams, so with few distinct problems they can overlap.

``TASKS`` maps a name (what YAML writes as ``task: digit_vqa``) to its record builder and reward.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from prismrl.data.adapters.base import IMAGE_PLACEHOLDER
from prismrl.data.digits import render_digit, stratified_split
from prismrl.data.images import decode_image, to_rgb
from prismrl.rl.rewards import (
    ExactMatchReward,
    FormatReward,
    NumericMatchReward,
    PromptRecord,
    RewardFunction,
    WeightedSumReward,
)

SPLITS = ("train", "val")
DIGIT_VQA_PROMPT = f"{IMAGE_PLACEHOLDER}Which digit is shown? Answer with a single digit."
OPERATIONS: dict[str, Callable[[int, int], int]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}
ARITHMETIC_PROMPT = "Q: What is 2 {op} 3?\nA: 2 {op} 3 = {example}\nQ: What is {a} {op} {b}?\nA:"
EQUATION_PATTERN = r"-?\d+\s*[-+*]\s*-?\d+\s*=\s*-?\d+\.?"  # the whole (stripped) completion is "a op b = c"


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def digit_image(pixels: np.ndarray, image_size: int) -> Image.Image:
    """8x8 ink values 0..16 -> RGB PIL image of ``image_size`` px (the digits dataset's rendering)."""
    return to_rgb(decode_image(render_digit(pixels, image_size), "digit image"))


def digit_vqa_records(split: str, image_size: int = 28, seed: int = 0, val_fraction: float = 0.2) -> list[PromptRecord]:
    """One record per digit image of ``split``; answer = the digit as a string, meta = {label, index}."""
    from sklearn.datasets import load_digits

    _check_split(split)
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size: expected an int >= 8, got {image_size!r}")
    digits = load_digits()
    labels = digits.target.astype(np.int64)  # [N]
    rows = stratified_split(labels, val_fraction, seed)[_check_split(split)]
    return [
        PromptRecord(
            prompt=DIGIT_VQA_PROMPT,
            images=[digit_image(digits.images[row], image_size)],
            answer=str(int(labels[row])),
            meta={"label": int(labels[row]), "index": int(row)},
        )
        for row in rows
    ]


def arithmetic_records(
    split: str,
    num_examples: int = 512,
    max_operand: int = 9,
    operations: Sequence[str] = ("+",),
    seed: int = 0,
) -> list[PromptRecord]:
    """``num_examples`` problems ``a op b`` (a, b uniform in [0, max_operand], op uniform in ``operations``),
    drawn from ``default_rng([seed, split index])``; answer = str(a op b), meta = {a, b, op}."""
    stream = _check_split(split)
    if not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples: expected an int >= 1, got {num_examples!r}")
    if not isinstance(max_operand, int) or max_operand < 1:
        raise ValueError(f"max_operand: expected an int >= 1, got {max_operand!r}")
    ops = [operations] if isinstance(operations, str) else list(operations)
    unknown = [op for op in ops if op not in OPERATIONS]
    if not ops or unknown:
        raise ValueError(f"operations: expected a non-empty list from {sorted(OPERATIONS)}, got {operations!r}")
    rng = np.random.default_rng([seed, stream])
    operands = rng.integers(0, max_operand + 1, size=(num_examples, 2))  # [N, 2]
    choices = rng.integers(0, len(ops), size=num_examples)  # [N]
    records = []
    for (a, b), k in zip(operands.tolist(), choices.tolist()):
        op = ops[k]
        prompt = ARITHMETIC_PROMPT.format(a=a, b=b, op=op, example=OPERATIONS[op](2, 3))
        records.append(PromptRecord(prompt=prompt, answer=str(OPERATIONS[op](a, b)), meta={"a": a, "b": b, "op": op}))
    return records


def digit_vqa_reward() -> RewardFunction:
    """1 if the stripped completion is exactly the digit."""
    return ExactMatchReward()


def arithmetic_reward() -> WeightedSumReward:
    """0.5 * [the completion is just "a op b = c"] + 1.0 * [its last number equals the answer]; max 1.5."""
    fmt = FormatReward(EQUATION_PATTERN, name="format", full_match=True)
    return WeightedSumReward([fmt, NumericMatchReward(name="correct")], weights=[0.5, 1.0])


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
            raise ValueError(f"task_kwargs: {self.build.__name__} accepts {accepted}, got unknown {unknown}")
        return self.build(split, **kwargs)


TASKS: dict[str, PromptTask] = {
    "digit_vqa": PromptTask(digit_vqa_records, digit_vqa_reward),
    "arithmetic": PromptTask(arithmetic_records, arithmetic_reward),
}


def get_task(name: str) -> PromptTask:
    """The task registered as ``name``; ValueError listing the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]
