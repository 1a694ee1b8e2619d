"""Built-in prompt datasets for GRPO: lists of ``PromptRecord`` (their rewards: ``prismrl.rewards.tasks``).

- ``digit_vqa``: scikit-learn's 1,797 digits (rendered by ``prismrl.data.digits``: dark ink on light, RGB,
  ``image_size`` px) asked as "<image>Which digit is shown? Answer with a single digit."; answer "0".."9";
  reward ``ExactMatchReward``. The split is ``stratified_split`` of the digits dataset (same seed -> same rows).
- ``arithmetic``: "a op b" problems with operands in ``[0, max_operand]``, written as a one-shot Q/A prompt
  whose example answers in the form "x op y = z"; reward 0.5 * [the reply is just such an equation] +
  1.0 * [its last number is correct].
  Train and val draw from independent seeded streams, so with few distinct problems they can overlap.
- ``digit_qa``: the VL instruction set of ``prismrl.data.digit_qa`` (same cache, same split as VL SFT) as prompts
  "<image>" + question (digit / parity / size), answer a word ("seven", "odd", "yes"); meta = {question_type,
  label}; reward 1.0 * exact answer + 0.2 * [the reply is one answer word].

"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from prismrl.choices import check_positive_int
from prismrl.data.digits import DIGIT_NAMES, render_digit, stratified_split
from prismrl.data.images import decode_image, to_rgb
from prismrl.data.records import IMAGE_PLACEHOLDER, PromptRecord

SPLITS = ("train", "val")
DIGIT_VQA_PROMPT = f"{IMAGE_PLACEHOLDER}Which digit is shown? Answer with a single digit."
OPERATIONS: dict[str, Callable[[int, int], int]] = {"+": operator.add, "-": operator.sub, "*": operator.mul}
ARITHMETIC_PROMPT = "Q: What is 2 {op} 3?\nA: 2 {op} 3 = {example}\nQ: What is {a} {op} {b}?\nA:"
EQUATION_PATTERN = r"-?\d+\s*[-+*]\s*-?\d+\s*=\s*-?\d+\.?"  # the whole (stripped) completion is "a op b = c"
DIGIT_QA_ANSWER_PATTERN = "(?i)(" + "|".join([*DIGIT_NAMES, "even", "odd", "yes", "no"]) + ")"  # one answer word


def _check_split(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, received {split!r}")
    return SPLITS.index(split)


def digit_image(pixels: np.ndarray, image_size: int) -> Image.Image:
    """8x8 ink values 0..16 -> RGB PIL image of ``image_size`` px (the digits dataset's rendering)."""
    return to_rgb(decode_image(render_digit(pixels, image_size), "digit image"))


def digit_vqa_records(split: str, image_size: int = 28, seed: int = 0, val_fraction: float = 0.2) -> list[PromptRecord]:
    """One record per digit image of ``split``; answer = the digit as a string, meta = {label, index}."""
    from sklearn.datasets import load_digits

    _check_split(split)
    check_positive_int("image_size", image_size, minimum=8)
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
    check_positive_int("num_examples", num_examples)
    check_positive_int("max_operand", max_operand)
    ops = [operations] if isinstance(operations, str) else list(operations)
    unknown = [op for op in ops if op not in OPERATIONS]
    if not ops or unknown:
        raise ValueError(f"operations: expected a non-empty list from {sorted(OPERATIONS)}, received {operations!r}")
    rng = np.random.default_rng([seed, stream])
    operands = rng.integers(0, max_operand + 1, size=(num_examples, 2))  # [N, 2]
    choices = rng.integers(0, len(ops), size=num_examples)  # [N]
    records = []
    for (a, b), k in zip(operands.tolist(), choices.tolist()):
        op = ops[k]
        prompt = ARITHMETIC_PROMPT.format(a=a, b=b, op=op, example=OPERATIONS[op](2, 3))
        records.append(PromptRecord(prompt=prompt, answer=str(OPERATIONS[op](a, b)), meta={"a": a, "b": b, "op": op}))
    return records


def digit_qa_records(split: str, question_types: Sequence[str] | None = None, val_fraction: float = 0.2,
                     data_seed: int = 0, root: str | None = None) -> list[PromptRecord]:
    """The digit QA rows of ``split`` (``prismrl.data.digit_qa``, built on first use) as prompt records."""
    import pyarrow.parquet as pq

    from prismrl.data.digit_qa import QUESTION_TYPES, ensure_digit_qa

    stream = _check_split(split)
    files = ensure_digit_qa(root, tuple(question_types or QUESTION_TYPES), val_fraction, data_seed)
    table = pq.read_table(files.train_parquet if stream == 0 else files.val_parquet).to_pylist()
    return [
        PromptRecord(prompt=IMAGE_PLACEHOLDER + row["question"],
                     images=[to_rgb(decode_image(row["image"], f"digit_qa {split} row {i}"))], answer=row["answer"],
                     meta={"question_type": row["question_type"], "label": int(row["label"])})
        for i, row in enumerate(table)
    ]
