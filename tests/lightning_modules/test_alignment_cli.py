"""End to end: `prismrl fit --config configs/alignment/tiny.yaml` and friends, with real files."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from prismrl.optim import OptimizerSettings

TINY = "configs/alignment/tiny.yaml"


@pytest.fixture(scope="module")
def tiny_run(cli_tools, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    return workdir, cli_tools.run(TINY, workdir)


def test_fit_writes_checkpoints_events_plots_and_metrics(tiny_run):
    workdir, cli = tiny_run
    run = workdir / "runs/alignment/tiny"
    checkpoints = sorted(p.name for p in (run / "version_0/checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)
    last = torch.load(run / "version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == cli.trainer.global_step and last["epoch"] == cli.trainer.max_epochs - 1
    assert "prismrl_rng" in last and last["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    events = list((run / "version_0").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0]), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    for tag in ("train/loss", "train/loss_d16", "val/i2t_recall@1_d16", "val/t2i_recall@5_d64", "val/zero_shot_acc_d32"):
        assert tag in scalars, f"{tag} missing from {scalars}"
    assert accumulator.Tags()["images"], "no image summaries (embedding plots)"
    plots = {p.name for p in (run / "version_0/plots").glob("*.png")}
    assert {"training_curves.png", "loss_components.png"} <= plots
    assert any(name.startswith("embeddings_epoch") for name in plots)
    with open(run / "version_0/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert any(row.get("val/mean_recall@1") for row in rows)
    recall = cli.trainer.callback_metrics["val/mean_recall@1"].item()
    assert 0.0 <= recall <= 1.0


def test_load_from_checkpoint_reproduces_embeddings(tiny_run):
    from prismrl.lightning_modules.alignment import AlignmentModule

    workdir, cli = tiny_run
    model = cli.model.eval()
    restored = AlignmentModule.load_from_checkpoint(workdir / "runs/alignment/tiny/version_0/checkpoints/last.ckpt").eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored.embed_images(pixels), model.embed_images(pixels))
        torch.testing.assert_close(restored.embed_texts(["the digit 3", "a handwritten five"]), model.embed_texts(["the digit 3", "a handwritten five"]))
    assert restored.class_names == model.class_names


@pytest.mark.parametrize("crash_step", [6, 9])  # at an epoch boundary (6 steps/epoch) and mid-epoch
def test_resume_after_a_crash_matches_uninterrupted_run(cli_tools, tmp_path, tiny_run, crash_step):
    _, full = tiny_run  # 2 epochs uninterrupted
    cli_tools.assert_same_run(full, cli_tools.crash_and_resume(TINY, tmp_path, crash_step))


def test_print_config_round_trips(repo_root, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    printed = subprocess.run(
        [sys.executable, "-m", "prismrl.cli", "fit", "--config", str(repo_root / TINY), "--print_config"],
        capture_output=True, text=True, check=True, env=env, cwd=tmp_path,
    ).stdout
    (tmp_path / "printed.yaml").write_text(printed)
    again = subprocess.run(
        [sys.executable, "-m", "prismrl.cli", "fit", "--config", "printed.yaml", "--print_config"],
        capture_output=True, text=True, check=True, env=env, cwd=tmp_path,
    ).stdout
    assert printed == again
    assert "prismrl.lightning_modules.alignment.AlignmentModule" in printed
    assert "matryoshka_dims" in printed
    assert "    optimizer:\n      lr: 0.003\n      encoder_lr: 0.001\n      weight_decay: 0.05\n" in printed


def test_optimizer_override_keeps_the_yaml_and_stage_defaults(cli_tools, tmp_path):
    cli = cli_tools.run(TINY, tmp_path, "--model.init_args.optimizer.lr", "5e-4", run=False)
    # lr from the command line, encoder_lr and warmup_ratio from the YAML, weight_decay and betas the stage's defaults
    assert cli.model.optimizer_settings == OptimizerSettings(
        lr=5e-4, encoder_lr=1e-3, weight_decay=0.05, betas=(0.9, 0.98), warmup_ratio=0.1
    )


def test_bad_contrastive_kind_names_the_field(cli_tools, tmp_path):
    with pytest.raises(ValueError, match=r"contrastive: expected one of \['clip', 'siglip'\], received 'triplet'"):
        cli_tools.run(TINY, tmp_path, "--model.init_args.contrastive", "triplet", run=False)


def test_bad_matryoshka_dims_fail_before_training(cli_tools, tmp_path):
    with pytest.raises(ValueError, match="dims"):
        cli_tools.run(TINY, tmp_path, "--model.init_args.matryoshka_dims", "[32, 16]")
    with pytest.raises(ValueError, match="dims"):
        cli_tools.run(TINY, tmp_path, "--model.init_args.matryoshka_dims", "[16, 128]")
    assert not (tmp_path / "runs/alignment/tiny/version_0/checkpoints").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes_via_cli(repo_root, tmp_path):
    launcher_vars = {"MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"}
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars} | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "prismrl.cli", "fit", "--config", str(repo_root / TINY),
         "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "runs/alignment/tiny/version_0/checkpoints/last.ckpt").exists()
    assert sorted(p.name for p in (tmp_path / "runs/alignment/tiny").iterdir()) == ["version_0"]  # one run, one folder
