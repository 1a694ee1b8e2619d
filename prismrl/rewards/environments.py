"""Environments for multi-turn episodes, and a calculator tool built on a safe arithmetic evaluator.

An environment plays one episode with the policy (one instance per episode; the rollout deep-copies a template):

    first_prompt = env.reset(record)                       the first user turn
    observation, reward, done = env.step(assistant_text)   after every assistant turn
        observation: the next user (tool) turn: a str, an ``Observation(text, images)`` whose text holds one
            "<image>" where each image goes (VLM policies), or None when the episode is over
        reward: this turn's reward r_t; the episode's reward is sum_t r_t (per-turn rewards are kept for
            ``turn_rewards``: each turn's tokens then get the return-to-go sum_{j >= t} r_j)

``max_turns`` bounds the assistant turns: on its last turn an environment must end the episode. The rollout
(``prismrl.policy.multi_turn``) renders observations as user turns of the chat template and masks their tokens out
of the loss, so the policy learns from its own tokens only.

``CalculatorEnvironment``: the model may write ``<calc>12*7</calc>``; the environment evaluates the expression with
``safe_arithmetic`` (an AST walk over a whitelist of number literals and + - * / // % ** and unary +/-; no names,
calls, attributes or ``eval``) and answers with ``<result>84</result>``, or ``<result>error: ...</result>`` for a
rejected expression. A turn without a tool call, or the last allowed turn, is the final answer, scored 1 when its
last number equals the record's answer (``NumericMatchReward``), else 0; the episode's first tool call that evaluates
adds ``tool_reward`` (once per episode). The default instructions carry two worked tool-use examples: without one a
small model never calls the tool, and with a 0/1 answer reward alone every group's rewards are equal.

``DigitCompareEnvironment`` (images in a later turn): turn 1 shows the record's digit and asks which digit it is
(reward ``identify_reward`` when named); turn 2 shows a second, different digit and asks whether it is larger than
the first (reward 1 for the right yes / no).
"""

from __future__ import annotations

import ast
import copy
import math
import operator
import re
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from prismrl.choices import check_positive_int
from prismrl.data.records import IMAGE_PLACEHOLDER, PromptRecord
from prismrl.rewards.functions import NumericMatchReward, import_callable


@dataclass
class Observation:
    """A user turn with images: ``text`` holds one "<image>" where each of ``images`` goes."""

    text: str
    images: list[Image.Image] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Observation.text: expected str, received {type(self.text).__name__}")
        if not isinstance(self.images, list) or not all(isinstance(i, Image.Image) for i in self.images):
            raise TypeError(f"Observation.images: expected a list of PIL images, received {self.images!r:.80}")
        if self.text.count(IMAGE_PLACEHOLDER) != len(self.images):
            raise ValueError(f"Observation.text: expected {len(self.images)} {IMAGE_PLACEHOLDER!r} placeholder(s), "
                             f"one per image, received {self.text.count(IMAGE_PLACEHOLDER)}")


@runtime_checkable
class Environment(Protocol):
    """A multi-turn episode (see the module docstring)."""

    max_turns: int

    def reset(self, record: PromptRecord) -> str:
        """Start an episode on ``record``; returns the first user turn."""

    def step(self, completion: str) -> tuple[str | Observation | None, float, bool]:
        """The assistant's turn -> (next user turn or None, this turn's reward, done)."""


def build_environment(value: Any, field: str = "environment") -> Environment | None:
    """None, an ``Environment`` instance, or a ``{class_path, init_args}`` config (a dict, or the namespace the CLI
    passes on when it could not instantiate it, so the class's own error is the one the user reads)."""
    if value is None:
        return None
    class_path = value.get("class_path") if isinstance(value, dict) else getattr(value, "class_path", None)
    if isinstance(class_path, str):
        init_args = value.get("init_args") if isinstance(value, dict) else getattr(value, "init_args", None)
        kwargs = dict(vars(init_args) if hasattr(init_args, "__dict__") else (init_args or {}))
        value = import_callable(class_path, f"{field}.class_path")(**kwargs)
    if not isinstance(value, Environment):
        raise TypeError(f"{field}: expected an object with max_turns, reset(record) and step(completion), "
                        f"received {type(value).__name__}")
    check_positive_int(f"{field}.max_turns", value.max_turns)
    return value


def new_episodes(template: Environment, count: int) -> list[Environment]:
    """``count`` independent copies of ``template`` (one per episode)."""
    return [copy.deepcopy(template) for _ in range(count)]


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate."""


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e15


def safe_arithmetic(expression: str) -> float:
    """The value of an arithmetic expression; CalculatorError naming what was refused otherwise.

    Allowed: int/float literals, + - * / // % **, unary + -, parentheses. Exponents are limited to
    ``MAX_EXPONENT`` and every intermediate value to ``MAX_MAGNITUDE`` in absolute value.
    """
    if not isinstance(expression, str):
        raise CalculatorError(f"expected an expression string, received {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expected at most {MAX_EXPRESSION_CHARS} characters, received {len(expression)}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression.strip()!r}") from None
    return _evaluate(tree.body)


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent: expected at most {MAX_EXPONENT} in absolute value, received {right}")
        if right == 0 and isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) or \
                isinstance(node.op, ast.Pow) and left == 0 and right < 0:
            raise CalculatorError("division by zero")
        try:
            value = _BINARY[type(node.op)](left, right)
        except (OverflowError, ZeroDivisionError, ValueError) as err:
            raise CalculatorError(str(err)) from None
        if isinstance(value, complex):
            raise CalculatorError("the result is not a real number")
        return _bounded(value)
    raise CalculatorError(f"only numbers and + - * / // % ** are allowed, received {type(node).__name__} "
                          f"({ast.unparse(node)!r:.40})")


def _bounded(value: float) -> float:
    if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"values must stay within {MAX_MAGNITUDE:g} in absolute value, received {value:.6g}")
    return value


def format_number(value: float) -> str:
    """Integers (and integral floats) without a decimal point, other floats to 10 significant digits."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.10g}"


CALC_PATTERN = re.compile(r"<calc>(.*?)</calc>", re.DOTALL)
CALCULATOR_EXAMPLES = ("Q: What is 12 * 7?\nA: <calc>12*7</calc>\n<result>84</result>\nA: 84\n\n"
                       "Q: What is 25 * 31?\nA: <calc>25*31</calc>\n<result>775</result>\nA: 775")
CALCULATOR_INSTRUCTIONS = ("You have a calculator: write <calc>expression</calc> and its result comes back as "
                           "<result>value</result>. Then reply with the number only.\n\n" + CALCULATOR_EXAMPLES)


class CalculatorEnvironment:
    """The calculator tool over a prompt task with numeric answers (see the module docstring).

    Args:
        max_turns: assistant turns per episode (>= 1); the last one is always scored as the final answer.
        instructions: text put before the question in the first user turn (None = the question alone); the
            default explains the tool and shows two worked calls (``CALCULATOR_EXAMPLES``).
        question_template: the question, formatted with the record's ``meta`` (e.g. "Q: What is {a} {op} {b}?\\nA:"
            for the ``arithmetic`` task, whose own prompt shows an answer written without the tool); None = the
            record's prompt.
        tool_reward: reward of the episode's first tool call that evaluates, paid once per episode (0 by default:
            the answer carries the reward); a small positive value rewards learning to call the tool.
    """

    def __init__(self, max_turns: int = 3, instructions: str | None = CALCULATOR_INSTRUCTIONS,
                 question_template: str | None = None, tool_reward: float = 0.0) -> None:
        self.max_turns = check_positive_int("max_turns", max_turns)
        self.instructions, self.tool_reward = instructions, float(tool_reward)
        self.question_template = question_template
        self.scorer = NumericMatchReward(name="correct")
        self.record: PromptRecord | None = None
        self.turn, self.tool_paid = 0, False

    def question(self, record: PromptRecord) -> str:
        """The record's prompt, or ``question_template`` formatted with its meta."""
        if self.question_template is None:
            return record.prompt
        try:
            return self.question_template.format(**(record.meta or {}))
        except (KeyError, IndexError) as err:
            raise ValueError(f"question_template: expected fields among the record's meta keys "
                             f"{sorted(record.meta or {})}, received {self.question_template!r} (missing {err})") \
                from None

    def reset(self, record: PromptRecord) -> str:
        if not isinstance(record, PromptRecord) or record.answer is None:
            raise ValueError(f"record: expected a PromptRecord with an answer, received {record!r:.80}")
        self.record, self.turn, self.tool_paid = record, 0, False
        question = self.question(record)
        return question if self.instructions is None else f"{self.instructions}\n\n{question}"

    def step(self, completion: str) -> tuple[str | None, float, bool]:
        if self.record is None:
            raise RuntimeError("CalculatorEnvironment.step: call reset(record) first")
        self.turn += 1
        call = CALC_PATTERN.search(completion)
        if call is not None and self.turn < self.max_turns:
            try:
                result = format_number(safe_arithmetic(call.group(1)))
                reward, self.tool_paid = (0.0 if self.tool_paid else self.tool_reward), True
            except CalculatorError as err:
                result, reward = f"error: {err}", 0.0
            return f"<result>{result}</result>", reward, False
        answer = CALC_PATTERN.sub("", completion)
        return None, float(self.scorer([answer], [self.record])[0]), True


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@lru_cache(maxsize=1)
def _digits_by_label() -> tuple[Any, dict[int, list[int]]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, {k: [i for i, y in enumerate(digits.target) if y == k] for k in range(10)}


def digit_image(label: int, pick: int) -> Image.Image:
    """An RGB 32x32 picture of a ``label`` digit from scikit-learn's digits (the ``pick``-th such, modulo)."""
    import io

    from prismrl.data.digits import render_digit

    images, by_label = _digits_by_label()
    rows = by_label[int(label)]
    return Image.open(io.BytesIO(render_digit(images[rows[pick % len(rows)]]))).convert("RGB")


class DigitCompareEnvironment:
    """Two turns over a digit record (``meta["label"]``, one image): name the digit, then compare a second one.

    Turn 1 (first prompt): the record's image, "Which digit is this?"; reward ``identify_reward`` when the reply
    names it (word or numeral). Turn 2 (an Observation with a second image of a different digit, chosen from the
    record so every row of a group sees the same one): "Is this digit larger than the first one? Answer yes or
    no."; reward 1 when the first yes / no in the reply is right.

    Args:
        identify_reward: reward of naming the first digit (turn 1).
        seed: picks the second digit (with the record's label and image bytes).
    """

    max_turns = 2
    FIRST = IMAGE_PLACEHOLDER + "Which digit is this?"
    SECOND = IMAGE_PLACEHOLDER + "Is this digit larger than the first one? Answer yes or no."

    def __init__(self, identify_reward: float = 0.2, seed: int = 0) -> None:
        self.identify_reward, self.seed = float(identify_reward), int(seed)
        self.label: int | None = None
        self.second: int | None = None
        self.second_image: Image.Image | None = None

    def reset(self, record: PromptRecord) -> str:
        label = (record.meta or {}).get("label") if isinstance(record, PromptRecord) else None
        if not isinstance(label, int) or not 0 <= label <= 9 or len(record.images) != 1:
            raise ValueError(f"record: expected a PromptRecord with one image and an int meta['label'] in 0..9, "
                             f"received {record!r:.120}")
        key = zlib.crc32(record.images[0].tobytes()) ^ self.seed
        self.label, self.second = label, (label + 1 + key % 9) % 10  # any digit but the first
        self.second_image = digit_image(self.second, key // 9)
        return self.FIRST

    def step(self, completion: str) -> tuple[Observation | None, float, bool]:
        if self.label is None:
            raise RuntimeError("DigitCompareEnvironment.step: call reset(record) first")
        text = completion.lower()
        if self.second_image is not None:  # turn 1 -> show the second digit
            named = re.search(rf"\b({DIGIT_WORDS[self.label]}|{self.label})\b", text) is not None
            image, self.second_image = self.second_image, None
            return Observation(self.SECOND, [image]), self.identify_reward if named else 0.0, False
        said = re.search(r"\b(yes|no)\b", text)
        right = "yes" if self.second > self.label else "no"
        return None, float(said is not None and said.group(1) == right), True
