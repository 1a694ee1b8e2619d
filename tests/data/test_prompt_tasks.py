"""Built-in prompt tasks: digit VQA records, arithmetic records and their rewards, the task registry."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from prismrl.data.prompt_tasks import (
    DIGIT_VQA_PROMPT,
    arithmetic_records,
    digit_vqa_records,
)
from prismrl.data.records import IMAGE_PLACEHOLDER
from prismrl.rewards.functions import ExactMatchReward, score_completions
from prismrl.rewards.tasks import TASKS, arithmetic_reward, get_task


@pytest.fixture(scope="module")
def digit_splits():
    return digit_vqa_records("train"), digit_vqa_records("val")


def test_digit_vqa_records_are_rgb_images_with_the_label_as_answer(digit_splits):
    train, val = digit_splits
    digits = load_digits()
    assert len(train) + len(val) == len(digits.target) and abs(len(val) - 0.2 * len(digits.target)) < 10
    assert not {r.meta["index"] for r in train} & {r.meta["index"] for r in val}
    record = train[0]
    assert record.prompt == DIGIT_VQA_PROMPT == "<image>Which digit is shown? Answer with a single digit."
    assert record.prompt.count(IMAGE_PLACEHOLDER) == 1 and len(record.images) == 1
    image = record.images[0]
    assert image.mode == "RGB" and image.size == (28, 28)
    assert record.answer == str(digits.target[record.meta["index"]]) == str(record.meta["label"])
    pixels = np.asarray(image)  # [28, 28, 3]: dark ink on a light background, grey (R = G = B)
    assert (pixels[..., 0] == pixels[..., 2]).all() and pixels.max() > 200 and pixels.min() < 60
    assert {r.answer for r in val} == {str(d) for d in range(10)}


def test_digit_vqa_split_is_deterministic_and_sized(digit_splits):
    again = digit_vqa_records("val", image_size=16)
    assert [r.meta["index"] for r in again] == [r.meta["index"] for r in digit_splits[1]]
    assert again[0].images[0].size == (16, 16)
    other = digit_vqa_records("val", seed=1)
    assert [r.meta["index"] for r in other] != [r.meta["index"] for r in again]


def test_digit_vqa_reward_is_exact_match(digit_splits):
    records = digit_splits[1][:3]
    reward = get_task("digit_vqa").reward()
    assert isinstance(reward, ExactMatchReward)
    completions = [records[0].answer, f" {records[1].answer}\n", ""]
    assert score_completions(reward, completions, records).total.tolist() == [1.0, 1.0, 0.0]


def test_arithmetic_records():
    train = arithmetic_records("train", num_examples=50, max_operand=4, operations=("+", "-", "*"), seed=3)
    assert len(train) == 50
    for record in train:
        a, b, op = record.meta["a"], record.meta["b"], record.meta["op"]
        assert 0 <= a <= 4 and 0 <= b <= 4
        assert record.answer == str({"+": a + b, "-": a - b, "*": a * b}[op])
        example = {"+": 5, "-": -1, "*": 6}[op]
        assert record.prompt == f"Q: What is 2 {op} 3?\nA: 2 {op} 3 = {example}\nQ: What is {a} {op} {b}?\nA:"
    assert {r.meta["op"] for r in train} == {"+", "-", "*"}
    again = arithmetic_records("train", num_examples=50, max_operand=4, operations=("+", "-", "*"), seed=3)
    assert [r.prompt for r in again] == [r.prompt for r in train]
    val = arithmetic_records("val", num_examples=50, max_operand=4, operations=("+", "-", "*"), seed=3)
    assert [r.prompt for r in val] != [r.prompt for r in train]


def test_arithmetic_reward_by_hand():
    records = arithmetic_records("train", num_examples=1)
    a, b = records[0].meta["a"], records[0].meta["b"]
    right, wrong = f"{a} + {b} = {a + b}", f"{a} + {b} = {a + b + 1}"
    completions = [right, f" {right}.\n", f"Sure! {right}", wrong, f"It is {a + b}", "", "2 + 3 = 5 and more"]
    scores = score_completions(arithmetic_reward(), completions, records * len(completions))
    assert scores.components["format"].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert scores.components["correct"].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, float(a + b == 5)]
    assert scores.total.tolist() == pytest.approx([1.5, 1.5, 1.0, 0.5, 1.0, 0.0, float(a + b == 5)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(split="test"), "split: expected one of \\('train', 'val'\\), received 'test'"),
        (dict(split="train", operations=("/",)), "operations: expected a non-empty list"),
        (dict(split="train", num_examples=0), "num_examples: expected an int >= 1"),
        (dict(split="train", max_operand=0), "max_operand: expected an int >= 1"),
    ],
)
def test_arithmetic_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        arithmetic_records(**kwargs)


def test_registry():
    assert set(TASKS) == {"digit_vqa", "arithmetic", "digit_qa"}
    assert len(get_task("arithmetic").records("val", num_examples=7)) == 7
    with pytest.raises(ValueError, match="task: expected one of \\['arithmetic', 'digit_qa', 'digit_vqa'\\], received 'chess'"):
        get_task("chess")
    with pytest.raises(ValueError, match="task_kwargs: arithmetic_records accepts .*num_examples.*, received unknown"):
        get_task("arithmetic").records("train", image_size=8)
    with pytest.raises(ValueError, match="image_size: expected an int >= 8"):
        digit_vqa_records("train", image_size=4)


def test_digit_vqa_records_drive_a_tiny_qwen2_vl_rollout(digit_splits):
    import torch
    import transformers as tf

    from prismrl.policy.adapters import adapter_for, split_completions, tiny_policy_config

    config, tokenizer = tiny_policy_config({"model_type": "qwen2_vl"})
    torch.manual_seed(0)
    model = tf.AutoModelForImageTextToText.from_config(config).eval()
    adapter = adapter_for(model, tokenizer, min_pixels=28 * 28, max_pixels=56 * 56)
    records = digit_splits[1][:3]
    batch = adapter.build_prompts([r.prompt for r in records], [r.images for r in records])
    assert batch.pixel_values is not None and batch.images_per_sample.tolist() == [1, 1, 1]
    with torch.no_grad():
        out = model.generate(**batch.model_inputs(), max_new_tokens=3, do_sample=False, **adapter.generate_kwargs())
    ids = split_completions(out, batch.input_ids.shape[1], tokenizer.eos_token_id)
    completions = tokenizer.batch_decode(ids, skip_special_tokens=True)
    scores = score_completions(get_task("digit_vqa").reward(), completions, records)
    expected = [float(c.strip().casefold() == r.answer) for c, r in zip(completions, records)]
    assert scores.total.tolist() == expected


def test_digit_qa_records_are_the_vl_sft_split_and_reward_exact_answer_plus_format():
    import pyarrow.parquet as pq

    from prismrl.data.digit_qa import ensure_digit_qa

    task = get_task("digit_qa")
    val = task.records("val")
    table = pq.read_table(ensure_digit_qa().val_parquet).to_pylist()
    assert len(val) == len(table)
    assert [r.prompt for r in val[:5]] == [IMAGE_PLACEHOLDER + row["question"] for row in table[:5]]
    assert [r.answer for r in val[:5]] == [row["answer"] for row in table[:5]]
    assert {r.meta["question_type"] for r in val} == {"digit", "parity", "size"} and len(val[0].images) == 1
    records = val[:4]
    wrong = next(w for w in ("seven", "odd", "yes", "no") if w != records[1].answer)
    scores = score_completions(task.reward(), [records[0].answer, wrong, records[2].answer + ".", "I think so"],
                               records)
    assert scores.components["exact_match"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert scores.components["format"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert scores.total.tolist() == pytest.approx([1.2, 0.2, 0.0, 0.0])
