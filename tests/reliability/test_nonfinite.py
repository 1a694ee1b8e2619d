"""A diverging run stops at the first non-finite loss, gradient or policy output, naming the step and the component;
a negative learning rate is a config error."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch

from prismrl.callbacks.numerical_guard import NonFiniteError, NumericalGuard
from prismrl.cli import build_cli

STAGES = ["configs/alignment/tiny.yaml", "configs/actor_critic/tiny.yaml", "configs/vl_sft/tiny_trm.yaml",
          "configs/masked_lm/tiny.yaml"]


def _cli(repo_root, workdir, config, *args):
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return build_cli(["--config", str(repo_root / config), *args], run=False)
    finally:
        os.chdir(cwd)


def _fit(cli, workdir, max_steps=8):
    trainer = pl.Trainer(max_steps=max_steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=workdir,
                         gradient_clip_val=None)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    return trainer


@pytest.mark.parametrize("config", STAGES)
def test_a_huge_learning_rate_stops_with_a_named_component(repo_root, tmp_path, config):
    cli = _cli(repo_root, tmp_path, config, "--model.init_args.optimizer.lr", "1e30")
    with pytest.raises(NonFiniteError, match=r"step \d+: (the loss|the gradient norm|the policy logits|the advantages|"
                                             r"the policy's next-token distribution) is not finite"):
        _fit(cli, tmp_path)
    guards = [c for c in cli.model.trainer.callbacks if isinstance(c, NumericalGuard)]
    assert len(guards) == 1  # added by the stage itself


def test_a_diverged_policy_stops_at_its_rollout(repo_root, tmp_path):
    """GRPO: a policy whose weights hold NaN cannot sample; the rollout names it instead of torch.multinomial."""
    cli = _cli(repo_root, tmp_path, "configs/grpo/tiny.yaml")
    head = cli.model.policy.get_output_embeddings()
    with torch.no_grad():
        head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"step 0: the policy's next-token distribution is not finite"):
        _fit(cli, tmp_path)


def test_skip_step_keeps_training_finite_weights(repo_root, tmp_path):
    cli = _cli(repo_root, tmp_path, STAGES[0])
    trainer = pl.Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[NumericalGuard(on_nonfinite="skip_step", max_consecutive_skips=2)])
    original = cli.model.training_step

    def poisoned(batch, batch_idx):  # the real step, with its loss made NaN at step 1
        loss = original(batch, batch_idx)
        return loss * float("nan") if cli.model.global_step == 1 else loss

    cli.model.training_step = poisoned
    trainer.fit(cli.model, datamodule=cli.datamodule)
    guard = next(c for c in trainer.callbacks if isinstance(c, NumericalGuard))
    assert guard.skipped_steps == 1 and trainer.global_step == 3  # the user's guard replaced the default one
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


def test_a_negative_learning_rate_is_a_config_error(repo_root, tmp_path):
    with pytest.raises((ValueError, SystemExit)) as info:
        _cli(repo_root, tmp_path, STAGES[0], "--model.init_args.optimizer.lr", "-0.001")
    assert "optimizer.lr: expected a finite float > 0, received -0.001" in str(info.value) + str(info.value.__context__)
