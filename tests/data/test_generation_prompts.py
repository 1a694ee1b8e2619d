"""Prompt templates (YAML, placeholders) and the parser on well-formed and malformed generations."""

from __future__ import annotations

import pytest

from prismrl.data.generation_prompts import (
    ParseStatus,
    PromptTemplate,
    load_prompt_template,
    parse_batch,
    parse_generation,
)

NAMES = ["negative", "positive"]


def test_render_with_examples_and_yaml_round_trip(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("instruction: 'New {label} review.'\nexample_format: '[{label}] {text}'\nrequest_format: '[{label}]'\n")
    template = load_prompt_template(path)
    assert template.render("positive", [("great", "positive"), ("dull", "negative")]) == (
        "New positive review.\n\nExamples:\n\n[positive] great\n\n[negative] dull\n\n[positive]")
    assert load_prompt_template(None) == PromptTemplate() and "{label}" in PromptTemplate().instruction


def test_templates_missing_or_unknown_placeholders_fail(tmp_path):
    with pytest.raises(ValueError, match="template.instruction: expected the placeholder\\(s\\) \\['\\{label\\}'\\]"):
        PromptTemplate(instruction="Write a review.")
    with pytest.raises(ValueError, match="template.example_format: expected the placeholder\\(s\\) \\['\\{text\\}'\\]"):
        load_prompt_template({"example_format": "Label: {label}"})
    with pytest.raises(ValueError, match="unknown placeholder\\(s\\) \\['topic'\\]"):
        PromptTemplate(instruction="{label} about {topic}")
    with pytest.raises(ValueError, match="template: unknown key\\(s\\) \\['instructions'\\]"):
        load_prompt_template({"instructions": "{label}"})
    with pytest.raises(FileNotFoundError, match="prompt_template"):
        load_prompt_template(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("generation", "label", "status", "text"),
    [
        (" A warm,  funny film.\nmore", 1, ParseStatus.OK, "A warm, funny film."),
        ("Text: dull and slow\n", 0, ParseStatus.OK, "dull and slow"),
        ("Label: Positive.\nText: a gem", 1, ParseStatus.OK, "a gem"),
        ("Label: negative\nText: a gem", 1, ParseStatus.OFF_CLASS, ""),
        ("Label: neutral\nmeh", 0, ParseStatus.OFF_CLASS, ""),
        ("   \n\n", 0, ParseStatus.EMPTY, ""),
        ("Text:   \nLabel: negative", 0, ParseStatus.EMPTY, ""),
        ("!!! 123 ...", 0, ParseStatus.UNPARSEABLE, ""),
        ("", 1, ParseStatus.EMPTY, ""),
    ],
)
def test_parser_on_malformed_generations(generation, label, status, text):
    parsed = parse_generation(generation, label, NAMES)
    assert (parsed.status, parsed.text, parsed.label) == (status, text, label)


def test_batch_report_counts_every_failure():
    report = parse_batch(["good one", "", "Label: negative\nx", "??"], [1, 1, 1, 0], NAMES)
    assert report.counts == {"ok": 1, "empty": 1, "unparseable": 1, "off_class": 1}
    assert report.failure_rate == 0.75 and report.valid == [True, False, False, False]
    with pytest.raises(ValueError, match="labels: expected one per generation"):
        parse_batch(["a"], [0, 1], NAMES)
    with pytest.raises(ValueError, match="label: expected a class id"):
        parse_generation("a", 2, NAMES)
