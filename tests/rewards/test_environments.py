"""The calculator's safe evaluator and environment, and building environments from YAML values."""

import pytest

from prismrl.data.records import PromptRecord
from prismrl.rewards.environments import (
    CalculatorEnvironment,
    CalculatorError,
    Environment,
    build_environment,
    format_number,
    safe_arithmetic,
)


@pytest.mark.parametrize("expression,value", [
    ("12*7", 84), (" 2 + 3 * 4 ", 14), ("(2 + 3) * 4", 20), ("-5 + +2", -3), ("7 / 2", 3.5), ("7 // 2", 3),
    ("7 % 3", 1), ("2 ** 10", 1024), ("1.5 * 4", 6.0), ("2 ** -1", 0.5),
])
def test_valid_expressions(expression, value):
    assert safe_arithmetic(expression) == value


@pytest.mark.parametrize("expression,match", [
    ("__import__('os').system('touch /tmp/pwned')", "only numbers"),
    ("os.system('ls')", "only numbers"),
    ("(1).__class__", "only numbers"),
    ("x + 1", "only numbers"),
    ("[1, 2]", "only numbers"),
    ("'a' * 3", "only numbers"),
    ("True + 1", "only numbers"),
    ("lambda: 1", "only numbers"),
    ("1 if 1 else 2", "only numbers"),
    ("9 ** 9 ** 9", "exponent: expected at most 64"),
    ("10 ** 20", "values must stay within"),
    ("1e308 * 10", "values must stay within"),
    ("(-8) ** 0.5", "not a real number"),
    ("1 +", "not an arithmetic expression"),
    ("1" * 201, "at most 200 characters"),
])
def test_malicious_or_bad_input_is_refused(expression, match):
    with pytest.raises(CalculatorError, match=match):
        safe_arithmetic(expression)


@pytest.mark.parametrize("expression", ["1 / 0", "1 // 0", "5 % 0", "1 / (2 - 2)", "0 ** -1"])
def test_division_by_zero(expression):
    with pytest.raises(CalculatorError, match="division by zero|zero"):
        safe_arithmetic(expression)


def test_format_number():
    assert [format_number(v) for v in (84, 6.0, 3.5, 1 / 3)] == ["84", "6", "3.5", "0.3333333333"]


def test_calculator_episode_tool_turn_then_answer():
    env = CalculatorEnvironment(max_turns=3)
    assert isinstance(env, Environment)
    record = PromptRecord("What is 12 * 7?", answer="84")
    first = env.reset(record)
    assert first.endswith("What is 12 * 7?") and "<calc>" in first
    assert env.step("Let me compute <calc>12*7</calc>") == ("<result>84</result>", 0.0, False)
    assert env.step("The answer is 84.") == (None, 1.0, True)
    env.reset(record)
    assert env.step("83") == (None, 0.0, True)  # a turn without a tool call is the final answer


def test_calculator_errors_are_observations_with_zero_reward():
    env = CalculatorEnvironment(max_turns=3, tool_reward=0.1)
    env.reset(PromptRecord("What is 1 + 1?", answer="2"))
    observation, reward, done = env.step("<calc>__import__('os').getcwd()</calc>")
    assert observation.startswith("<result>error: only numbers") and reward == 0.0 and not done
    assert env.step("<calc>1/0</calc>") == ("<result>error: division by zero</result>", 0.0, False)


def test_the_last_turn_is_scored_even_with_a_tool_call():
    env = CalculatorEnvironment(max_turns=2, tool_reward=0.25)
    env.reset(PromptRecord("What is 1 + 1?", answer="2"))
    assert env.step("<calc>1+1</calc>") == ("<result>2</result>", 0.25, False)
    assert env.step("<calc>1+1</calc> so 2") == (None, 1.0, True)  # tags are removed before scoring


def test_build_environment_and_bad_values():
    assert build_environment(None) is None
    env = build_environment({"class_path": "prismrl.rewards.environments.CalculatorEnvironment",
                             "init_args": {"max_turns": 2}})
    assert isinstance(env, CalculatorEnvironment) and env.max_turns == 2
    with pytest.raises(TypeError, match="environment: expected an object with max_turns, reset"):
        build_environment(object())
    with pytest.raises(ValueError, match="max_turns: expected an int >= 1, received 0"):
        CalculatorEnvironment(max_turns=0)
    with pytest.raises(ValueError, match="record: expected a PromptRecord with an answer"):
        CalculatorEnvironment().reset(PromptRecord("What is 1 + 1?"))
    with pytest.raises(RuntimeError, match="call reset"):
        CalculatorEnvironment().step("1")


def test_tool_reward_is_paid_once_per_episode():
    env = CalculatorEnvironment(max_turns=4, tool_reward=0.2)
    env.reset(PromptRecord("What is 6 * 7?", answer="42"))
    assert env.step("<calc>6*7</calc>") == ("<result>42</result>", 0.2, False)
    assert env.step("<calc>7*6</calc>") == ("<result>42</result>", 0.0, False)  # no farming of repeated calls
    assert env.step("42") == (None, 1.0, True)
    env.reset(PromptRecord("What is 6 * 7?", answer="42"))  # a new episode pays again
    assert env.step("<calc>bad</calc>")[1] == 0.0 and env.step("<calc>6*7</calc>")[1] == 0.2


def test_question_template_replaces_the_record_prompt():
    record = PromptRecord("Q: What is 2 * 3?\nA: 2 * 3 = 6\nQ: What is 47 * 83?\nA:", answer="3901",
                          meta={"a": 47, "b": 83, "op": "*"})
    env = CalculatorEnvironment(question_template="Q: What is {a} {op} {b}?\nA:")
    first = env.reset(record)
    assert first.endswith("\n\nQ: What is 47 * 83?\nA:") and "2 * 3 = 6" not in first
    assert "A: <calc>12*7</calc>\n<result>84</result>\nA: 84" in first  # the default worked tool-use example
    assert CalculatorEnvironment(instructions=None).reset(record) == record.prompt
    with pytest.raises(ValueError, match=r"question_template: expected fields among the record's meta keys "
                                         r"\['a', 'b', 'op'\], received 'What is \{x\}\?' \(missing 'x'\)"):
        CalculatorEnvironment(question_template="What is {x}?").reset(record)


def test_smollm2_calculator_preset_shows_the_tool_and_rewards_calling_it():
    """The preset's first turn asks the bare question after worked tool calls, and an evaluated call earns reward."""
    import yaml

    from prismrl.data.prompt_tasks import arithmetic_records

    config = yaml.safe_load(open("configs/grpo/smollm2_calculator.yaml"))
    env = build_environment(config["model"]["init_args"]["environment"])
    task_kwargs = config["data"]["init_args"]["task_kwargs"]
    record = arithmetic_records("train", **task_kwargs)[0]
    a, b = record.meta["a"], record.meta["b"]
    first = env.reset(record)
    assert first.endswith(f"Q: What is {a} * {b}?\nA:") and first.count("<calc>") >= 3  # 1 in the help + examples
    observation, reward, done = env.step(f"<calc>{a}*{b}</calc>")
    assert observation == f"<result>{a * b}</result>" and reward > 0 and not done
    assert env.step(str(a * b)) == (None, 1.0, True)


def test_digit_compare_environment_plays_two_turns_with_a_second_image():
    from prismrl.rewards.environments import DigitCompareEnvironment, Observation, digit_image

    record = PromptRecord("<image>Which digit?", images=[digit_image(4, 1)], answer="4", meta={"label": 4})
    env = DigitCompareEnvironment(identify_reward=0.3)
    assert env.reset(record) == "<image>Which digit is this?"
    second, image = env.second, env.second_image
    assert second != 4 and image.size == (32, 32) and image.mode == "RGB"
    again = DigitCompareEnvironment(identify_reward=0.3)
    again.reset(record)
    assert again.second == second and again.second_image.tobytes() == image.tobytes()  # the same for a whole group
    observation, reward, done = env.step("It is a four.")
    assert isinstance(observation, Observation) and observation.images[0] is image and reward == 0.3 and not done
    assert observation.text.startswith("<image>") and "larger" in observation.text
    right = "yes" if second > 4 else "no"
    assert env.step(f"{right.capitalize()}, it is.") == (None, 1.0, True)
    again.step("4")  # a numeral names it too
    assert again.step("no" if right == "yes" else "yes") == (None, 0.0, True)
    other = DigitCompareEnvironment()
    other.reset(record)
    assert other.step("seven")[1] == 0.0
    seconds = set()
    for pick in range(12):
        other.reset(PromptRecord("<image>?", images=[digit_image(4, pick)], meta={"label": 4}))
        seconds.add(other.second)
    assert len(seconds) > 2 and 4 not in seconds
