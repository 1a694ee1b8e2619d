"""End to end: `prismrl fit --config configs/alignment/tiny.yaml` and friends, with real files."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from prismrl.cli import build_cli

TINY = "configs/alignment/tiny.yaml"


def _run_cli(repo_root: Path, workdir: Path, *args: str):
    """Run the CLI in-process with relative output paths landing in ``workdir``."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        return build_cli(["fit", "--config", str(repo_root / TINY), *args])
    finally:
        os.chdir(cwd)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_run(repo_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny_run")
    cli = _run_cli(repo_root, workdir)
    return workdir, cli


def test_fit_writes_checkpoints_events_plots_and_metrics(tiny_run):
    workdir, cli = tiny_run
    run = workdir / "runs/alignment/tiny"
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)
    last = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == cli.trainer.global_step and last["epoch"] == cli.trainer.max_epochs - 1
    assert "prismrl_rng" in last and last["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    events = list((run / "logs/tiny").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0]), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    for tag in ("train/loss", "train/loss_d16", "val/i2t_recall@1_d16", "val/t2i_recall@5_d64", "val/zero_shot_acc_d32"):
        assert tag in scalars, f"{tag} missing from {scalars}"
    assert accumulator.Tags()["images"], "no image summaries (embedding plots)"
    plots = {p.name for p in (run / "logs/tiny/plots").glob("*.png")}
    assert {"training_curves.png", "loss_components.png"} <= plots
    assert any(name.startswith("embeddings_epoch") for name in plots)
    with open(run / "logs/tiny/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert any(row.get("val/mean_recall@1") for row in rows)
    recall = cli.trainer.callback_metrics["val/mean_recall@1"].item()
    assert 0.0 <= recall <= 1.0


def test_load_from_checkpoint_reproduces_embeddings(tiny_run):
    from prismrl.lightning_modules.alignment import AlignmentModule

    workdir, cli = tiny_run
    model = cli.model.eval()
    restored = AlignmentModule.load_from_checkpoint(workdir / "runs/alignment/tiny/checkpoints/last.ckpt").eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored.embed_images(pixels), model.embed_images(pixels))
        torch.testing.assert_close(restored.embed_texts(["the digit 3", "a handwritten five"]), model.embed_texts(["the digit 3", "a handwritten five"]))
    assert restored.class_names == model.class_names


class _CrashAtStep(Callback):
    """Simulates a crash: raises when the loop is about to run global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("crash_step", [6, 9])  # at an epoch boundary (6 steps/epoch) and mid-epoch
def test_resume_after_a_crash_matches_uninterrupted_run(repo_root, tmp_path, tiny_run, crash_step):
    _, full = tiny_run  # 2 epochs uninterrupted
    os.chdir(tmp_path)
    try:
        cli = build_cli(["--config", str(repo_root / TINY)], run=False)
        saver = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=1, save_top_k=-1, filename="{step}")
        cli.trainer.callbacks.extend([saver, _CrashAtStep(crash_step)])
        with pytest.raises(RuntimeError, match="simulated crash"):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        resumed = build_cli(["--config", str(repo_root / TINY)], run=False)
        resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=tmp_path / "steps" / f"step={crash_step}.ckpt")
    finally:
        os.chdir(repo_root)
    assert resumed.trainer.global_step == full.trainer.global_step
    expected, actual = _state(full.model), _state(resumed.model)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


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


def test_bad_matryoshka_dims_fail_before_training(repo_root, tmp_path):
    with pytest.raises(ValueError, match="dims"):
        _run_cli(repo_root, tmp_path, "--model.init_args.matryoshka_dims", "[32, 16]")
    with pytest.raises(ValueError, match="dims"):
        _run_cli(repo_root, tmp_path, "--model.init_args.matryoshka_dims", "[16, 128]")
    assert not (tmp_path / "runs/alignment/tiny/checkpoints").exists()


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
    assert (tmp_path / "runs/alignment/tiny/checkpoints/last.ckpt").exists()
