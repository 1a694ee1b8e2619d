"""Reward functions and score_completions: hand-computed rewards, edge cases and error messages."""

import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from prismrl.rewards.functions import (
    CallableReward,
    ExactMatchReward,
    FormatReward,
    NumericMatchReward,
    PromptRecord,
    WeightedSumReward,
    last_number,
    score_completions,
)


def length_reward(completions, records, scale=1.0):
    """A module-level user reward: scale * number of characters."""
    return [scale * len(c) for c in completions]


class ContainsAnswer:
    """A user reward class: 1 if the answer occurs anywhere in the completion."""

    name = "contains"

    def __init__(self, bonus: float = 0.0) -> None:
        self.bonus = bonus

    def __call__(self, completions, records):
        return [float(r.answer in c) + self.bonus for c, r in zip(completions, records)]


def recs(*answers):
    return [PromptRecord(prompt=f"q{i}", answer=a) for i, a in enumerate(answers)]


def test_prompt_record_checks_images_against_placeholders():
    image = Image.new("RGB", (4, 4))
    record = PromptRecord(prompt="<image>What?", images=[image], answer="3")
    assert record.meta == {} and record.images == [image]
    assert PromptRecord("a").images is not PromptRecord("b").images  # no shared default list
    with pytest.raises(ValueError, match="found 0 '<image>' placeholder.*1 image"):
        PromptRecord(prompt="What?", images=[image])
    with pytest.raises(TypeError, match="PromptRecord.answer: expected str or None, received int"):
        PromptRecord(prompt="What?", answer=3)


def test_exact_match_strips_and_casefolds():
    fn = ExactMatchReward()
    completions = ["  Seven\n", "seven", "seven.", "", "   ", "sevens"]
    assert fn(completions, recs(*["seven"] * 6)) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert ExactMatchReward(case_sensitive=True)(["Seven", "seven"], recs("seven", "seven")) == [0.0, 1.0]


def test_exact_match_with_a_regex_group():
    fn = ExactMatchReward(extract=r"<answer>(.*?)</answer>")
    completions = ["I think <answer> 7 </answer>.", "<answer>8</answer>", "7", "<answer></answer>"]
    assert fn(completions, recs("7", "7", "7", "")) == [1.0, 0.0, 0.0, 0.0]  # empty extraction never matches
    whole = ExactMatchReward(extract=r"\d")  # no group: the whole match
    assert whole(["it is 7 or 8", "none"], recs("7", "7")) == [1.0, 0.0]


def test_exact_match_needs_answers_and_a_valid_regex():
    with pytest.raises(ValueError, match=r"records\[1\].answer: exact_match needs a reference answer"):
        ExactMatchReward()(["a", "b"], [PromptRecord("q", answer="a"), PromptRecord("q")])
    with pytest.raises(ValueError, match="extract: '\\(unclosed' is not a valid regular expression"):
        ExactMatchReward(extract="(unclosed")


def test_last_number():
    assert last_number("3 + 4 = 7.") == 7.0
    assert last_number("from -2 to -3.5e1") == -35.0
    assert last_number("1,234 apples") == 1234.0
    assert last_number("no digits") is None


def test_numeric_match_tolerance_and_extraction():
    fn = NumericMatchReward(tolerance=0.01)
    completions = ["the sum is 12", "12.005", "12.02", "", "twelve", "12 or 13"]
    assert fn(completions, recs(*["12"] * 6)) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert NumericMatchReward()(["x = 0.1 + 0.2 = 0.30000000000000004"], recs("0.3")) == [1.0]
    tagged = NumericMatchReward(extract=r"Answer:\s*(\S+)")
    assert tagged(["5 then Answer: 7", "Answer: 5, not 7", "7"], recs("7", "7", "7")) == [1.0, 0.0, 0.0]
    group = NumericMatchReward(extract=r"Answer:(.*)")  # the last number inside the group
    assert group(["Answer: 5, no, 7", "Answer: 7, no, 5"], recs("7", "7")) == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"records\[0\].answer: numeric_match expected a number, received 'seven'"):
        fn(["7"], recs("seven"))
    with pytest.raises(ValueError, match="tolerance: expected a number >= 0"):
        NumericMatchReward(tolerance=-1)


def test_format_reward_search_and_full_match():
    search = FormatReward(r"<answer>\d+</answer>")
    full = FormatReward(r"<answer>\d+</answer>", full_match=True)
    completions = ["<answer>4</answer>", " <answer>4</answer>\n", "so <answer>4</answer>", "", "<answer>x</answer>"]
    assert search(completions, recs(*["4"] * 5)) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert full(completions, recs(*["4"] * 5)) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert FormatReward(r".*")([" ", "x"], recs(None, None)) == [0.0, 1.0]  # empty never earns a format reward


def test_weighted_sum_total_and_components_with_unique_names():
    functions = [FormatReward(r"\d"), FormatReward(r"^\d+$"), NumericMatchReward()]
    fn = WeightedSumReward(functions, weights=[0.5, 0.25, 2.0])
    completions, records = ["12", "x 12", "13", ""], recs("12", "12", "12", "12")
    assert fn.components(completions, records) == {
        "format": [1.0, 1.0, 1.0, 0.0],
        "format_2": [1.0, 0.0, 1.0, 0.0],
        "numeric_match": [1.0, 1.0, 0.0, 0.0],
    }
    assert fn(completions, records) == pytest.approx([2.75, 2.5, 0.75, 0.0])
    assert WeightedSumReward([FormatReward(r"\d")])(["1", "a"], recs("1", "1")) == [1.0, 0.0]


def test_weighted_sum_checks_its_arguments():
    with pytest.raises(ValueError, match="weights: expected 2 weights"):
        WeightedSumReward([FormatReward("a"), FormatReward("b")], weights=[1.0])
    with pytest.raises(ValueError, match="functions: expected a non-empty list"):
        WeightedSumReward([])
    with pytest.raises(TypeError, match=r"functions\[0\]: expected a callable"):
        WeightedSumReward(["not callable"])
    with pytest.raises(ValueError, match="weights: expected finite numbers"):
        WeightedSumReward([FormatReward("a")], weights=[math.nan])


def test_score_completions_for_a_weighted_sum_and_a_plain_function():
    fn = WeightedSumReward([FormatReward(r"\d"), NumericMatchReward()], weights=[0.5, 1.0])
    scores = score_completions(fn, ["3", "4", "no"], recs("3", "3", "3"))
    assert scores.total.dtype == torch.float32 and scores.total.shape == (3,)
    assert scores.total.tolist() == [1.5, 0.5, 0.0]
    components = {k: v.tolist() for k, v in scores.components.items()}
    assert components == {"format": [1.0, 1.0, 0.0], "numeric_match": [1.0, 0.0, 0.0]}
    plain = score_completions(length_reward, ["ab", ""], recs("x", "y"))
    assert plain.total.tolist() == [2.0, 0.0] and list(plain.components) == ["length_reward"]


@pytest.mark.parametrize("output", [np.array([1, 0, 1]), torch.tensor([True, False, True]), [1, 0.0, np.float32(1)],
                                    [torch.tensor(1.0), 0, True]])
def test_arrays_tensors_and_numbers_are_accepted(output):
    scores = score_completions(lambda c, r: output, ["a", "b", "c"], recs("a", "b", "c"))
    assert scores.total.tolist() == [1.0, 0.0, 1.0] and scores.total.dtype == torch.float32


def test_wrong_length_names_the_function_and_both_lengths():
    def short_reward(completions, records):
        return [1.0] * (len(completions) - 1)

    with pytest.raises(ValueError, match="reward function 'short_reward': expected 4 rewards .*, received 3"):
        score_completions(short_reward, ["a"] * 4, recs(*"abcd"))
    inner = WeightedSumReward([FormatReward("a"), short_reward])
    with pytest.raises(ValueError, match="'short_reward': expected 2 rewards"):
        score_completions(inner, ["a", "b"], recs("a", "b"))
    with pytest.raises(ValueError, match="expected a 1-D result of length 2, received shape \\(2, 1\\)"):
        score_completions(lambda c, r: torch.ones(2, 1), ["a", "b"], recs("a", "b"))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rewards_name_the_first_bad_index(bad):
    class Broken:
        name = "broken"

        def __call__(self, completions, records):
            return [0.0, 1.0, bad, bad]

    with pytest.raises(ValueError, match="reward function 'broken': reward .* at index 2 is not finite"):
        score_completions(Broken(), list("abcd"), recs(*"abcd"))


def test_non_numeric_rewards_are_type_errors():
    with pytest.raises(TypeError, match="expected real numbers, received str '1' at index 1"):
        score_completions(lambda c, r: [1.0, "1"], ["a", "b"], recs("a", "b"))
    with pytest.raises(TypeError, match="expected real numbers, received None"):
        score_completions(lambda c, r: [None, 1.0], ["a", "b"], recs("a", "b"))
    with pytest.raises(TypeError, match="received NoneType"):
        score_completions(lambda c, r: None, ["a", "b"], recs("a", "b"))
    with pytest.raises(TypeError, match="dtype <U1"):
        score_completions(lambda c, r: np.array(["a", "b"]), ["a", "b"], recs("a", "b"))


def test_records_and_completions_must_line_up():
    with pytest.raises(ValueError, match="records: expected 2 records .*, received 1"):
        score_completions(ExactMatchReward(), ["a", "b"], recs("a"))
    with pytest.raises(TypeError, match=r"completions\[1\]: expected str, received int"):
        score_completions(ExactMatchReward(), ["a", 3], recs("a", "b"))


def test_callable_reward_from_an_import_path_with_kwargs():
    fn = CallableReward(f"{__name__}:length_reward", kwargs={"scale": 0.5})
    assert fn.name == "length_reward"
    assert score_completions(fn, ["abcd", ""], recs("x", "y")).total.tolist() == [2.0, 0.0]
    named = CallableReward(f"{__name__}.length_reward", name="chars")
    assert score_completions(named, ["abc"], recs("x")).components["chars"].tolist() == [3.0]


def test_callable_reward_instantiates_a_class(tmp_path, monkeypatch):
    module = tmp_path / "my_rewards.py"
    module.write_text("def shouting(completions, records):\n    return [float(c.isupper()) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    assert CallableReward("my_rewards:shouting")(["HI", "hi"], recs("a", "b")) == [1.0, 0.0]
    fn = CallableReward(f"{__name__}:ContainsAnswer", kwargs={"bonus": 0.5})
    assert fn.name == "contains" and fn(["a 7", "8"], recs("7", "7")) == [1.5, 0.5]


def test_callable_reward_errors():
    with pytest.raises(ValueError, match="function: cannot import module 'no_such_module_xyz'"):
        CallableReward("no_such_module_xyz:fn")
    with pytest.raises(ValueError, match="function: module 'math' has no attribute 'nope'"):
        CallableReward("math:nope")
    with pytest.raises(TypeError, match="function: 'math:pi' is a float, expected a callable"):
        CallableReward("math:pi")
    with pytest.raises(ValueError, match="function: expected 'package.module:function'"):
        CallableReward("just_a_name")


def test_rewards_are_injectable_from_yaml_like_lightning_cli():
    from jsonargparse import ArgumentParser

    from prismrl.rewards.functions import RewardFunction

    class Stage:
        def __init__(self, reward_fn: RewardFunction) -> None:
            self.reward_fn = reward_fn

    parser = ArgumentParser()
    parser.add_class_arguments(Stage, "model")
    config = parser.parse_string(f"""
model:
  reward_fn:
    class_path: prismrl.rewards.functions.WeightedSumReward
    init_args:
      functions:
        - class_path: prismrl.rewards.functions.FormatReward
          init_args: {{pattern: '^\\d+$', full_match: true}}
        - class_path: prismrl.rewards.functions.CallableReward
          init_args: {{function: '{__name__}:length_reward', kwargs: {{scale: 0.1}}}}
        - {__name__}.length_reward
      weights: [1.0, 1.0, 0.5]
""")
    fn = parser.instantiate(config).model.reward_fn
    assert isinstance(fn, WeightedSumReward) and fn.names == ["format", "length_reward", "length_reward_2"]
    assert score_completions(fn, ["12", "x y"], recs("12", "12")).total.tolist() == pytest.approx([2.2, 1.8])
