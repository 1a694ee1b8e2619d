"""One tiny generator PPO run (configs/generator_ppo/tiny.yaml, one epoch = 2 PPO iterations) shared by the app tests."""

from __future__ import annotations

import os

import pytest

from prismrl.cli import build_cli

TINY_GENERATOR = "configs/generator_ppo/tiny.yaml"


@pytest.fixture(scope="session")
def tiny_checkpoint(repo_root, tmp_path_factory):
    """(run folder, last.ckpt) of a finished tiny generator PPO run."""
    workdir = tmp_path_factory.mktemp("generator_run")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        build_cli(["fit", "--config", str(repo_root / TINY_GENERATOR), "--trainer.max_epochs", "1"])
    finally:
        os.chdir(cwd)
    return workdir, workdir / "runs/generator_ppo/tiny/version_0/checkpoints/last.ckpt"
