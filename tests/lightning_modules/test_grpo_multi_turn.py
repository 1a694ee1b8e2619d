"""GRPO with multi-turn episodes (the calculator tool), DAPO dynamic sampling and overlong handling:
`configs/grpo/tiny_calculator.yaml` end to end, its rollouts' loss masks, and exact resume.

A random tiny policy never writes a tool call, so ``ToolCallingEngine`` samples with the policy and then has the
even rows of a first turn call the calculator on the question and answer with its result in the next turn: the
episodes span two turns and rewards differ within a group. Log-probs, losses and updates are the policy's own.
"""

from __future__ import annotations

import csv
import re

import pytest
import torch

from prismrl.policy import rollout as rollout_module
from prismrl.policy.rollout import HFRolloutEngine, RolloutEngineKind

CONFIG = "configs/grpo/tiny_calculator.yaml"
RUN = "runs/grpo/tiny_calculator"


class ToolCallingEngine(HFRolloutEngine):
    """The policy's samples, with even rows of a first turn replaced by a calculator call, answered next turn."""

    def generate(self, prompt_batch, sampling, greedy=False):
        sampled = super().generate(prompt_batch, sampling, greedy)
        tokenizer = self.adapter.tokenizer
        out = []
        for b, completion in enumerate(sampled):
            prompt = tokenizer.decode(prompt_batch.input_ids[b][prompt_batch.attention_mask[b].bool()])
            results = re.findall(r"<result>(.*?)</result>", prompt.rsplit("\nA:", 1)[-1])  # after the question
            if results:
                text = results[-1]
            elif b % 2 == 0:
                text = "<calc>{}</calc>".format(re.findall(r"What is (\d+ [-+*] \d+)\?", prompt)[-1])
            else:
                out.append(completion)
                continue
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
        return out


@pytest.fixture
def tool_engine(monkeypatch):
    monkeypatch.setitem(rollout_module.ROLLOUT_ENGINES, RolloutEngineKind.HF, ToolCallingEngine)


@pytest.fixture(scope="module")
def fitted(cli_tools, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grpo_calculator")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(rollout_module.ROLLOUT_ENGINES, RolloutEngineKind.HF, ToolCallingEngine)
        return workdir, cli_tools.run(CONFIG, workdir)


def test_rollout_masks_exactly_the_tool_result_tokens(cli_tools, tmp_path, tool_engine):
    cli = cli_tools.run(CONFIG, tmp_path, run=False)
    module, dataset = cli.model, cli.datamodule.dataset("train")
    module.trainer = cli.trainer  # the step and rank that seed the rollout
    records = [dataset[0], dataset[1]]
    batch, texts, scores = module.rollout(records)
    tokenizer = module.tokenizer
    assert batch.batch_size == 8 and scores.components.keys() == {"environment", "overlong"}
    for b in range(batch.batch_size):
        row, mask = batch.input_ids[b].tolist(), batch.loss_mask[b].tolist()
        text = tokenizer.decode(row).rsplit("\nA:", 1)[-1]  # the conversation after the question
        if b % 2 == 0:  # called the tool: its result is a user turn, out of the loss
            answer = records[b // 4].answer
            assert f"<result>{answer}</result>" in text and texts[b] == answer and scores.total[b] == 1.0
            spans = [i for i, m in enumerate(mask) if m]
            first, last = spans[0], spans[-1]
            hole = [i for i in range(first, last) if not mask[i]]  # masked tokens between the two turns
            assert hole and tokenizer.decode([row[i] for i in hole]) == (
                f"\n<|im_start|>user\n<result>{answer}</result><|im_end|>\n<|im_start|>assistant\n")
            assert tokenizer.decode([row[i] for i in spans]).count("<calc>") == 1
        else:  # one turn of random tokens, cut at the budget: filtered out of the loss
            assert "<result>" not in text and sum(mask) == 0
    assert module.rollout_stats["turns"].item() == 1.5


def test_fit_with_calculator_dynamic_sampling_and_overlong(fitted, cli_tools, tmp_path, tool_engine):
    workdir, cli = fitted
    assert cli.trainer.global_step == 4
    with open(workdir / RUN / "version_0/metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    assert len(rows) == 2  # 2 rollouts x 2 minibatches of 4 rows
    for row in rows:
        assert float(row["train/turns"]) == 1.5
        assert float(row["train/dynamic_rounds"]) == 1.0 and float(row["train/dynamic_filtered_groups"]) == 0.0
        assert float(row["train/overlong_filtered"]) == 4.0  # the random, cut rows
        assert float(row["train/reward/environment"]) == 0.5
    fresh = cli_tools.run(CONFIG, tmp_path, run=False).model.policy.state_dict()
    lora = {n: p for n, p in cli.model.policy.named_parameters() if p.requires_grad}
    assert any(not torch.equal(p.detach(), fresh[n]) for n, p in lora.items() if n in fresh)  # the policy moved


@pytest.mark.slow
def test_resume_after_a_crash_matches_uninterrupted_run(fitted, cli_tools, tmp_path, tool_engine):
    resumed = cli_tools.crash_and_resume(CONFIG, tmp_path, 2, every_n_train_steps=2)
    cli_tools.assert_same_run(fitted[1], resumed, keep=lambda key: "lora_" in key)


@pytest.mark.parametrize("args,match", [
    (["--model.init_args.dynamic_sampling", '{"max_rounds": 0}'], "dynamic_sampling.max_rounds: expected an int >= 1"),
    (["--model.init_args.overlong", '{"buffer": 0}'], "overlong.buffer: expected an int >= 1, received 0"),
    (["--model.init_args.environment", '{"class_path": "prismrl.rewards.environments.CalculatorEnvironment", '
      '"init_args": {"max_turns": 0}}'], "max_turns: expected an int >= 1, received 0"),
])
def test_bad_dapo_and_environment_settings_fail_before_training(cli_tools, tmp_path, args, match):
    with pytest.raises(ValueError, match=match):
        cli_tools.run(CONFIG, tmp_path, *args)
    assert not (tmp_path / RUN / "version_0/checkpoints").exists()


VLM_CONFIG = "configs/grpo/tiny_digit_compare.yaml"


def test_vlm_episodes_with_a_later_image_turn_rewards_and_packing_train(cli_tools, tmp_path):
    """``tiny_digit_compare.yaml``: two-image episodes, per-turn advantages, packed training forwards."""
    cli = cli_tools.run(VLM_CONFIG, tmp_path, run=False)
    module, dataset = cli.model, cli.datamodule.dataset("train")
    module.trainer = cli.trainer
    batch, _, scores = module.rollout([dataset[0], dataset[1]])
    assert batch.images_per_sample.tolist() == [2] * 8 and module.rollout_stats["turns"].item() == 2.0
    vision = torch.isin(batch.input_ids, torch.tensor(module.adapter.image_token_ids))
    assert int((batch.input_ids == module.adapter.image_token_id).sum()) == 8 * 8 and batch.loss_mask[vision].sum() == 0
    torch.testing.assert_close(module.sampled.turn_rewards.sum(1), scores.total)
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    cli_tools.fit(cli, tmp_path)
    assert cli.trainer.global_step == 2  # 1 rollout x 2 minibatches of 4 rows
    moved = [n for n, p in module.policy.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved


def test_turn_rewards_off_keeps_episode_advantages_and_bad_settings_are_named(cli_tools, tmp_path):
    cli = cli_tools.run(VLM_CONFIG, tmp_path, "--model.init_args.turn_rewards", "false", run=False)
    module = cli.model
    module.trainer = cli.trainer
    records = [cli.datamodule.dataset("train")[0]]
    module.rollout(records)
    assert module.sampled.turn_rewards is not None and not module.hparams.turn_rewards  # kept, unused
    with pytest.raises(ValueError, match="turn_rewards: expected an environment"):
        cli_tools.run(CONFIG, tmp_path, "--model.init_args.environment", "null", "--model.init_args.turn_rewards",
                      "true", run=False)
    with pytest.raises(ValueError, match="turn_rewards: expected advantage_estimator grpo with advantage_scaling "
                                         "group_std or none, received rloo / group_std"):
        cli_tools.run(VLM_CONFIG, tmp_path, "--model.init_args.advantage_estimator", "rloo", run=False)
