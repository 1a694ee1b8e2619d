"""End to end: `prismrl fit --config configs/actor_critic/tiny.yaml` in every mode, checkpoints, exact resume."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from lightning.pytorch.callbacks import Callback

TINY = "configs/actor_critic/tiny.yaml"
RUN = "runs/actor_critic/tiny"


@pytest.fixture(scope="module")
def runs(cli_tools, tmp_path_factory):
    """One uninterrupted 2-epoch run per mode: {mode: (workdir, cli)}."""
    out = {}
    for mode in ("supervised", "rl", "combined"):
        workdir = tmp_path_factory.mktemp(mode)
        out[mode] = (workdir, cli_tools.run(TINY, workdir, "--model.init_args.mode", mode))
    return out


@pytest.mark.parametrize("mode", ["supervised", "rl", "combined"])
def test_every_mode_trains_and_writes_checkpoints_and_metrics(runs, mode):
    workdir, cli = runs[mode]
    assert cli.model.mode == mode
    checkpoints = {p.name for p in (workdir / RUN / "version_0/checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)
    last = torch.load(workdir / RUN / "version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 8 and last["prismrl_actor_critic"]["mode"] == mode
    with open(workdir / RUN / "version_0/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for name in ("val/acc", "val/f1_macro", "val/reward", "val/entropy", "val/loss_value", "train/loss_policy", "train/reward"):
        assert any(row.get(name) for row in rows), f"{name} missing"
    assert any(row.get("train/loss_supervised") for row in rows)
    assert 0.0 <= cli.trainer.callback_metrics["val/acc"].item() <= 1.0
    assert (workdir / RUN / "version_0/plots/loss_components.png").is_file()
    optimizer = cli.trainer.optimizers[0]
    assert {group["initial_lr"] for group in optimizer.param_groups} == {3.0e-3, 1.0e-3}  # head lr, encoder lr


def test_modes_train_different_things(cli_tools, runs):
    """supervised leaves the policy at its initialization, rl leaves the classifier there; combined moves both."""
    fresh = cli_tools.run(TINY, runs["rl"][0], run=False).model.state_dict()  # seed_everything: the runs' initial weights
    trained = {mode: runs[mode][1].model.state_dict() for mode in runs}
    policy = [k for k in fresh if k.startswith("head.policy")]
    classifier = [k for k in fresh if k.startswith("classifier")]
    assert policy and classifier
    for key in policy:
        torch.testing.assert_close(trained["supervised"][key], fresh[key], msg=key)
    for key in classifier:
        torch.testing.assert_close(trained["rl"][key], fresh[key], msg=key)
    for mode, keys in (("rl", policy), ("combined", policy), ("supervised", classifier), ("combined", classifier)):
        assert any(not torch.equal(trained[mode][k], fresh[k]) for k in keys), (mode, keys[0])


@pytest.mark.parametrize("crash_step", [4, 6])  # at the epoch boundary (4 steps/epoch) and mid-epoch
def test_resume_after_a_crash_matches_uninterrupted_run(cli_tools, tmp_path, runs, crash_step):
    # sampled actions and dropout: the RNG and data position must both resume
    resumed = cli_tools.crash_and_resume(TINY, tmp_path, crash_step, "--model.init_args.mode", "combined")
    cli_tools.assert_same_run(runs["combined"][1], resumed)


class _SwitchMode(Callback):
    """What the staged-unfreezing callback does in its last stage: switch the objective at an epoch."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1:
            pl_module.mode = "combined"


def test_runtime_mode_switch_is_checkpointed(cli_tools, repo_root, tmp_path):
    from prismrl.lightning_modules.actor_critic import ActorCriticModule

    cli = cli_tools.run(TINY, tmp_path, run=False)
    cli.trainer.callbacks.append(_SwitchMode())
    os.chdir(tmp_path)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        os.chdir(repo_root)
    last = tmp_path / RUN / "version_0/checkpoints/last.ckpt"
    assert ActorCriticModule.load_from_checkpoint(last).mode == "combined"  # same config: the switched mode
    assert ActorCriticModule.load_from_checkpoint(last, mode="rl").mode == "rl"  # a new configured mode wins


def test_bad_mode_fails_before_training(cli_tools, tmp_path):
    with pytest.raises(ValueError, match="mode: expected one of"):
        cli_tools.run(TINY, tmp_path, "--model.init_args.mode", "ppo")
    assert not (tmp_path / RUN / "version_0/checkpoints").exists()


def test_rl_mode_trains_on_logged_parquet_feedback(cli_tools, tmp_path):
    """--data.init_args.logged_feedback: rewards and actions come from Parquet columns, not from the policy."""
    cli = cli_tools.run(TINY, tmp_path, "--model.init_args.mode", "rl", "--data.init_args.logged_feedback", "true")
    with open(tmp_path / RUN / "version_0/metrics.csv") as handle:
        rewards = [float(row["train/reward"]) for row in csv.DictReader(handle) if row.get("train/reward")]
    # a uniform logging policy over 10 digits is right about 1 time in 10, whatever the trained policy does
    assert rewards and sum(rewards) / len(rewards) < 0.35
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert batch.actions.shape == batch.rewards.shape == (16,)
    assert torch.equal(batch.rewards, (batch.actions == batch.labels).float())
