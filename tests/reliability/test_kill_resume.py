"""SIGKILL a real ``prismrl fit`` process mid-run, resume it from its last checkpoint, and compare with an
uninterrupted run: the final weights are identical (deterministic CPU, same seed)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prismrl.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow
OVERLAY = """
trainer:
  logger: false
  enable_progress_bar: false
  limit_val_batches: 1
  default_root_dir: {root}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/checkpoints, filename: "step-{{step}}", every_n_train_steps: 1, save_top_k: -1,
                  save_last: true}}
    - class_path: prismrl.callbacks.RNGStateCallback
"""
STAGES = {"alignment": ("configs/alignment/tiny.yaml",), "actor_critic": ("configs/actor_critic/tiny.yaml",),
          # WebDataset tar shards read by 2 worker processes: the resumed epoch continues mid-stream
          "alignment_webdataset": ("configs/alignment/tiny.yaml", "--data.init_args.format", "webdataset",
                                   "--data.init_args.loader.num_workers", "2", "--data.init_args.samples_per_epoch", "192")}


def _command(repo_root: Path, stage: tuple[str, ...], root: Path, *extra: str) -> list[str]:
    overlay = root.parent / f"{root.name}.yaml"
    overlay.write_text(OVERLAY.format(root=root))
    config, *options = stage
    return [sys.executable, "-m", "prismrl.cli", "fit", "--config", str(repo_root / config), "--config", str(overlay),
            *options, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_sigkill_then_resume_matches_an_uninterrupted_run(repo_root, tmp_path, stage):
    config = STAGES[stage]
    subprocess.run(_command(repo_root, config, tmp_path / "whole"), cwd=tmp_path, env=_env(), check=True,
                   capture_output=True, timeout=600)
    whole = _weights(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    steps = sorted(int(p.stem.split("=")[-1]) for p in (tmp_path / "whole" / "checkpoints").glob("step-step=*.ckpt"))
    kill_after = random.Random(stage).randint(2, max(2, steps[-1] - 3))  # a reproducible "random" point

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(repo_root, config, killed), cwd=tmp_path, env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while not (killed / "checkpoints" / f"step-step={kill_after}.ckpt").exists():
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    last = killed / "checkpoints" / "last.ckpt"
    resumed_from = load_checkpoint(last)["global_step"]
    assert 0 < resumed_from < steps[-1]
    subprocess.run(_command(repo_root, config, killed, "--ckpt_path", str(last)), cwd=tmp_path, env=_env(),
                   check=True, capture_output=True, timeout=600)
    resumed = _weights(last)
    assert resumed.keys() == whole.keys()
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not different, f"killed after step {kill_after} (resumed from {resumed_from}): {different[:5]} differ"
