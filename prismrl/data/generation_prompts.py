"""Prompts that ask a generator for a new labelled example, and the parser of its answers.

A ``PromptTemplate`` (from YAML or a dict) renders one user message:

    {instruction with {label}}            e.g. "Write one new {label} movie review sentence."
    {examples_header}
    {example_format} per in-context example, e.g. "Label: {label}\\nText: {text}"
    {request_format with {label}}         e.g. "Label: {label}\\nText:"

The chat turn of the assistant is prefilled with ``response_prefix`` (e.g. "Text:"), so the generation is the
example's text. ``parse_generation`` turns a generation into (text, label) with a status that is always
reported, never dropped silently:

- ``ok``: the first non-empty line that is not a "Label:" line, stripped of a leading "Text:", with at least
  one letter; the label is the requested one.
- ``empty``: nothing but whitespace (or only "Label:" lines).
- ``unparseable``: the candidate text has no letter (punctuation, digits or symbols only).
- ``off_class``: a "Label: X" line names a class other than the requested one (known or unknown).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

_LABEL_LINE = re.compile(r"^\s*label\s*:\s*(.*?)\s*$", re.IGNORECASE)
_TEXT_PREFIX = re.compile(r"^\s*text\s*:\s*", re.IGNORECASE)
_LETTER = re.compile(r"[^\W\d_]")


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@dataclass(frozen=True)
class PromptTemplate:
    """Prompt pieces with their placeholders: instruction / request_format need {label}, example_format
    needs {label} and {text}; no other placeholder is allowed (checked at construction)."""

    instruction: str = "Write one new, realistic {label} movie review sentence, different from the examples."
    examples_header: str = "Examples:"
    example_format: str = "Label: {label}\nText: {text}"
    request_format: str = "Label: {label}\nText:"
    response_prefix: str = "Text:"
    system: str | None = None

    def __post_init__(self) -> None:
        required = {"instruction": {"label"}, "example_format": {"label", "text"}, "request_format": {"label"}}
        for name in ("instruction", "examples_header", "example_format", "request_format", "response_prefix"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"template.{name}: expected a str, received {type(value).__name__}")
            try:
                found = _placeholders(value)
            except ValueError as err:
                raise ValueError(f"template.{name}: malformed placeholder in {value!r}: {err}") from None
            missing, allowed = required.get(name, set()) - found, required.get(name, set())
            if missing:
                raise ValueError(f"template.{name}: expected the placeholder(s) {sorted('{' + m + '}' for m in missing)}, "
                                 f"received {value!r}")
            if found - allowed:
                raise ValueError(f"template.{name}: unknown placeholder(s) {sorted(found - allowed)} in {value!r}; "
                                 f"allowed: {sorted(allowed)}")

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "PromptTemplate":
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"template: unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**config)

    def render(self, label: str, examples: Sequence[tuple[str, str]] = ()) -> str:
        """The user message asking for a new example of class ``label``; ``examples`` are (text, label name)."""
        parts = [self.instruction.format(label=label)]
        if examples:
            parts.append(self.examples_header)
            parts += [self.example_format.format(text=text, label=name) for text, name in examples]
        parts.append(self.request_format.format(label=label))
        return "\n\n".join(p for p in parts if p)


def load_prompt_template(source: str | Path | dict[str, Any] | PromptTemplate | None = None) -> PromptTemplate:
    """A template from a YAML file path, a dict, an existing template, or the default (None)."""
    if source is None:
        return PromptTemplate()
    if isinstance(source, PromptTemplate):
        return source
    if isinstance(source, dict):
        return PromptTemplate.from_dict(source)
    if isinstance(source, (str, Path)):
        import yaml

        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"prompt_template: expected a YAML file, received {str(source)!r}")
        loaded = yaml.safe_load(path.read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"prompt_template: {path} must hold a mapping, received {type(loaded).__name__}")
        return PromptTemplate.from_dict(loaded)
    raise TypeError(f"prompt_template: expected a path, dict or PromptTemplate, received {type(source).__name__}")


class ParseStatus(str, Enum):
    OK = "ok"
    EMPTY = "empty"
    UNPARSEABLE = "unparseable"
    OFF_CLASS = "off_class"


@dataclass(frozen=True)
class ParsedGeneration:
    text: str  # "" unless status is OK
    label: int  # the requested class id (kept for failures too, so failures stay attributable)
    status: ParseStatus

    @property
    def ok(self) -> bool:
        return self.status is ParseStatus.OK


def parse_generation(generation: str, label: int, label_names: Sequence[str]) -> ParsedGeneration:
    """Parse one generation for requested class ``label`` (rules in the module docstring)."""
    if not isinstance(generation, str):
        raise TypeError(f"generation: expected a str, received {type(generation).__name__}")
    if not 0 <= label < len(label_names):
        raise ValueError(f"label: expected a class id in [0, {len(label_names)}), received {label!r}")
    names = [n.strip().lower() for n in label_names]
    candidate = None
    for line in generation.splitlines():
        match = _LABEL_LINE.match(line)
        if match:
            if match.group(1).strip().lower().rstrip(".") != names[label]:
                return ParsedGeneration("", label, ParseStatus.OFF_CLASS)
            continue
        stripped = _TEXT_PREFIX.sub("", line).strip()
        if candidate is None and stripped:
            candidate = stripped
    if candidate is None:
        return ParsedGeneration("", label, ParseStatus.EMPTY)
    if not _LETTER.search(candidate):
        return ParsedGeneration("", label, ParseStatus.UNPARSEABLE)
    return ParsedGeneration(" ".join(candidate.split()), label, ParseStatus.OK)


@dataclass(frozen=True)
class ParseReport:
    """Parsed generations of a batch with a count per status."""

    items: list[ParsedGeneration]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        return 1.0 - self.counts.get(ParseStatus.OK.value, 0) / max(len(self.items), 1)

    @property
    def valid(self) -> list[bool]:
        return [item.ok for item in self.items]


def parse_batch(generations: Sequence[str], labels: Sequence[int], label_names: Sequence[str]) -> ParseReport:
    """Parse every generation (one requested label each); ``counts`` holds every status, zeros included."""
    if len(generations) != len(labels):
        raise ValueError(f"labels: expected one per generation ({len(generations)}), received {len(labels)}")
    items = [parse_generation(g, int(y), label_names) for g, y in zip(generations, labels)]
    tally = Counter(item.status.value for item in items)
    return ParseReport(items, {status.value: tally.get(status.value, 0) for status in ParseStatus})
