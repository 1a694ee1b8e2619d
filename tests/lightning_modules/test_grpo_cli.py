"""End to end: `prismrl fit --config configs/grpo/tiny.yaml` (tiny Qwen2-VL, digit VQA), checkpoints, exact resume."""

from __future__ import annotations

import csv

import pytest
import torch

TINY = "configs/grpo/tiny.yaml"
RUN = "runs/grpo/tiny"
# A reward that varies between completions of a random policy (so advantages are non-zero and LoRA moves).
LENGTH_REWARD = ["--model.init_args.reward", '{"class_path": "prismrl.rewards.functions.CallableReward", '
                 '"init_args": {"function": "tests.lightning_modules.test_grpo_cli:vowel_share"}}']


def vowel_share(completions: list[str], records) -> list[float]:
    """Fraction of characters that are vowels (0 for an empty completion)."""
    return [sum(c in "aeiouAEIOU" for c in text) / len(text) if text else 0.0 for text in completions]


def is_lora(key: str) -> bool:
    return "lora_" in key


@pytest.fixture(scope="module")
def run(cli_tools, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grpo")
    return workdir, cli_tools.run(TINY, workdir, *LENGTH_REWARD)


def test_tiny_config_trains_logs_and_checkpoints(run):
    workdir, cli = run
    assert cli.trainer.global_step == 16  # 4 rollouts x 2 iterations x 2 minibatches
    last = torch.load(workdir / RUN / "version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 16
    trainable = {f"policy.{n}" for n, p in cli.model.policy.named_parameters() if p.requires_grad}
    assert set(last["state_dict"]) == trainable  # LoRA: no frozen base weights in the checkpoint
    with open(workdir / RUN / "version_0/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for name in ("train/reward", "train/reward_std", "train/reward/vowel_share", "train/kl", "train/clip_frac",
                 "train/clip_frac_low", "train/clip_frac_high", "train/entropy", "train/completion_length",
                 "train/tokens_per_s", "train/loss", "val/reward", "val/completion_length"):
        assert any(row.get(name) for row in rows), f"{name} missing"
    assert any(float(row["train/kl"]) > 0 for row in rows if row.get("train/kl"))  # the policy left the reference
    assert list((workdir / RUN / "version_0/").glob("events.out.tfevents.*"))


def test_lora_moves_and_base_weights_stay(run, cli_tools, tmp_path):
    _, cli = run
    fresh = cli_tools.run(TINY, tmp_path, *LENGTH_REWARD, run=False).model.policy.state_dict()
    trained = cli.model.policy.state_dict()
    lora_keys = [k for k in fresh if "lora_B" in k]
    assert lora_keys and any(not torch.equal(trained[k], fresh[k]) for k in lora_keys)
    base_keys = [k for k in fresh if "lora_" not in k]
    for key in base_keys:
        torch.testing.assert_close(trained[key], fresh[key], rtol=0, atol=0, msg=key)
    assert cli.model.reference is None  # LoRA: the reference is the adapter-free policy, no copy


def test_resume_after_a_crash_matches_uninterrupted_run(cli_tools, tmp_path, run):
    resumed = cli_tools.crash_and_resume(TINY, tmp_path, 8, *LENGTH_REWARD, every_n_train_steps=4)
    cli_tools.assert_same_run(run[1], resumed, keep=is_lora)


def test_export_writes_loadable_adapters(run, cli_tools, tmp_path):
    from peft import PeftModel

    from prismrl.policy.build import PolicySettings, load_policy_model

    _, cli = run
    cli.model.export(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    base, _ = load_policy_model(PolicySettings(tiny_config={"model_type": "qwen2_vl"}))
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    for key, value in cli_tools.state(cli.model.policy, is_lora).items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, msg=key)


@pytest.mark.parametrize("args,match", [
    (["--model.init_args.group_size", "1"], "group_size"),
    (["--model.init_args.sampling", '{"max_new_tokens": 0}'], "max_new_tokens"),
    (["--model.init_args.loss_aggregation", "mean"], "loss_aggregation"),
    (["--model.init_args.num_iterations", "0"], "num_iterations: expected an int >= 1, received 0"),
    (["--model.init_args.rollout", '{"engine": "sglang"}'], "rollout.engine"),
    (["--model.init_args.policy", "{tiny_config: {model_type: qwen2_vl}, lora: null, quantization: 4bit}"],
     "policy.quantization"),
])
def test_bad_settings_fail_before_training(cli_tools, tmp_path, args, match):
    with pytest.raises(ValueError, match=match):
        cli_tools.run(TINY, tmp_path, *args)
    assert not (tmp_path / RUN / "version_0/checkpoints").exists()


def test_beta_zero_builds_no_reference_and_full_finetuning_copies_it(cli_tools, tmp_path):
    full = ["--model.init_args.policy", "{tiny_config: {model_type: qwen2_vl}, lora: null}"]
    no_kl = cli_tools.run(TINY, tmp_path, "--model.init_args.beta", "0", *full, run=False)
    assert no_kl.model.reference is None
    with_kl = cli_tools.run(TINY, tmp_path, *full, run=False)
    assert with_kl.model.reference is not None
    assert not any(p.requires_grad for p in with_kl.model.reference.parameters())


def test_grouped_settings_override_one_field_and_keep_the_stage_defaults(cli_tools, tmp_path):
    from prismrl.optim import OptimizerSettings
    from prismrl.policy.rollout import HFRolloutEngine

    cli = cli_tools.run(TINY, tmp_path, "--model.init_args.optimizer.warmup_ratio", "0.25", run=False)
    assert cli.model.optimizer_settings == OptimizerSettings(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99),
                                                             warmup_ratio=0.25, min_lr_ratio=0.1, max_grad_norm=1.0)
    assert isinstance(cli.model.rollout_engine, HFRolloutEngine) and cli.model.rollout_engine is cli.model.rollout_engine


@pytest.mark.parametrize("objective,estimator", [("gspo", "rloo"), ("gspo_token", "grpo"), ("cispo", "reinforce_pp")])
def test_other_objectives_and_advantage_estimators_train(cli_tools, tmp_path, objective, estimator):
    cli = cli_tools.run(TINY, tmp_path, *LENGTH_REWARD, "--model.init_args.objective", objective,
                        "--model.init_args.advantage_estimator", estimator, "--trainer.max_steps", "4",
                        "--trainer.limit_val_batches", "0")
    assert cli.trainer.global_step == 4
    lora = {n: p for n, p in cli.model.policy.named_parameters() if p.requires_grad}
    fresh = cli_tools.run(TINY, tmp_path, *LENGTH_REWARD, run=False).model.policy.state_dict()
    assert any(not torch.equal(p.detach(), fresh[n]) for n, p in lora.items() if n in fresh)  # the policy moved
