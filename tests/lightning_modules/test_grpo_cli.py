"""End to end: `prismrl fit --config configs/grpo/tiny.yaml` (tiny Qwen2-VL, digit VQA), checkpoints, exact resume."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from prismrl.cli import build_cli

TINY = "configs/grpo/tiny.yaml"
RUN = "runs/grpo/tiny"
# A reward that varies between completions of a random policy (so advantages are non-zero and LoRA moves).
LENGTH_REWARD = ["--model.init_args.reward", '{"class_path": "prismrl.rl.rewards.CallableReward", '
                 '"init_args": {"function": "tests.lightning_modules.test_grpo_cli:vowel_share"}}']


def vowel_share(completions: list[str], records) -> list[float]:
    """Fraction of characters that are vowels (0 for an empty completion)."""
    return [sum(c in "aeiouAEIOU" for c in text) / len(text) if text else 0.0 for text in completions]


def _cli(repo_root: Path, workdir: Path, *args: str, run: bool = True):
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return build_cli([*(["fit"] if run else []), "--config", str(repo_root / TINY), *args], run=run)
    finally:
        os.chdir(cwd)


def _lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if "lora_" in k}


@pytest.fixture(scope="module")
def run(repo_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grpo")
    return workdir, _cli(repo_root, workdir, *LENGTH_REWARD)


def test_tiny_config_trains_logs_and_checkpoints(run, repo_root):
    workdir, cli = run
    assert cli.trainer.global_step == 16  # 4 rollouts x 2 iterations x 2 minibatches
    last = torch.load(workdir / RUN / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 16
    with open(workdir / RUN / "logs/tiny/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for name in ("train/reward", "train/reward_std", "train/reward/vowel_share", "train/kl", "train/clip_frac",
                 "train/clip_frac_low", "train/clip_frac_high", "train/entropy", "train/completion_length",
                 "train/tokens_per_s", "train/loss", "val/reward", "val/completion_length"):
        assert any(row.get(name) for row in rows), f"{name} missing"
    assert any(float(row["train/kl"]) > 0 for row in rows if row.get("train/kl"))  # the policy left the reference
    assert list((workdir / RUN / "logs/tiny/").glob("events.out.tfevents.*"))


def test_lora_moves_and_base_weights_stay(run, repo_root, tmp_path):
    _, cli = run
    fresh = _cli(repo_root, tmp_path, *LENGTH_REWARD, run=False).model.policy.state_dict()
    trained = cli.model.policy.state_dict()
    lora_keys = [k for k in fresh if "lora_B" in k]
    assert lora_keys and any(not torch.equal(trained[k], fresh[k]) for k in lora_keys)
    base_keys = [k for k in fresh if "lora_" not in k]
    for key in base_keys:
        torch.testing.assert_close(trained[key], fresh[key], rtol=0, atol=0, msg=key)
    assert cli.model.reference is None  # LoRA: the reference is the adapter-free policy, no copy


class _CrashAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_after_a_crash_matches_uninterrupted_run(repo_root, tmp_path, run):
    _, full = run
    cli = _cli(repo_root, tmp_path, *LENGTH_REWARD, run=False)
    saver = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=4, save_top_k=-1, filename="{step}")
    cli.trainer.callbacks.extend([saver, _CrashAtStep(8)])
    os.chdir(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        resumed = _cli(repo_root, tmp_path, *LENGTH_REWARD, run=False)
        resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=tmp_path / "steps" / "step=8.ckpt")
    finally:
        os.chdir(repo_root)
    assert resumed.trainer.global_step == full.trainer.global_step
    expected, actual = _lora_state(full.model), _lora_state(resumed.model)
    assert expected and expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_export_writes_loadable_adapters(run, tmp_path):
    from peft import PeftModel

    from prismrl.backbones.causal_lm import load_causal_lm

    _, cli = run
    cli.model.export(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    base, _ = load_causal_lm(tiny_config={"model_type": "qwen2_vl"})
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    for key, value in _lora_state(cli.model.policy).items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, msg=key)


@pytest.mark.parametrize("args,match", [
    (["--model.init_args.group_size", "1"], "group_size"),
    (["--model.init_args.sampling", '{"max_new_tokens": 0}'], "max_new_tokens"),
    (["--model.init_args.loss_aggregation", "mean"], "loss_aggregation"),
])
def test_bad_settings_fail_before_training(repo_root, tmp_path, args, match):
    with pytest.raises(ValueError, match=match):
        _cli(repo_root, tmp_path, *args)
    assert not (tmp_path / RUN / "checkpoints").exists()


def test_beta_zero_builds_no_reference_and_full_finetuning_copies_it(repo_root, tmp_path):
    no_kl = _cli(repo_root, tmp_path, "--model.init_args.beta", "0", "--model.init_args.lora", "null", run=False)
    assert no_kl.model.reference is None
    with_kl = _cli(repo_root, tmp_path, "--model.init_args.lora", "null", run=False)
    assert with_kl.model.reference is not None
    assert not any(p.requires_grad for p in with_kl.model.reference.parameters())
