"""Shared helpers for the end-to-end CLI tests: run a config in a work dir, crash a run and resume it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from prismrl.cli import build_cli


class CrashAtStep(Callback):
    """Simulates a crash: raises when the loop is about to run global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class CliTools:
    """Handed to tests as the ``cli_tools`` fixture (conftest modules are not importable by name)."""

    def __init__(self, repo_root: Path) -> None:
        self.repo_root = repo_root

    def run(self, config: str, workdir: Path, *args: str, run: bool = True):
        """``prismrl [fit] --config <repo>/<config> *args`` in-process, relative output paths inside ``workdir``."""
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            return build_cli([*(["fit"] if run else []), "--config", str(self.repo_root / config), *args], run=run)
        finally:
            os.chdir(cwd)

    @staticmethod
    def fit(cli, workdir: Path, ckpt_path: Path | None = None) -> None:
        """``cli.trainer.fit`` of a CLI built with ``run=False``, relative output paths inside ``workdir``."""
        cwd = os.getcwd()
        os.chdir(workdir)
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
        finally:
            os.chdir(cwd)

    @staticmethod
    def state(module: torch.nn.Module, keep: Callable[[str], bool] = lambda key: True) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.state_dict().items() if keep(k)}

    def crash_and_resume(self, config: str, workdir: Path, crash_step: int, *args: str, every_n_train_steps: int = 1):
        """Fit until a crash at ``crash_step`` (saving every N steps), then resume from ``step=<crash_step>.ckpt``."""
        cli = self.run(config, workdir, *args, run=False)
        saver = ModelCheckpoint(dirpath=workdir / "steps", every_n_train_steps=every_n_train_steps, save_top_k=-1,
                                filename="{step}")
        cli.trainer.callbacks.extend([saver, CrashAtStep(crash_step)])
        with pytest.raises(RuntimeError, match="simulated crash"):
            self.fit(cli, workdir)
        resumed = self.run(config, workdir, *args, run=False)
        self.fit(resumed, workdir, workdir / "steps" / f"step={crash_step}.ckpt")
        return resumed

    def assert_same_run(self, full, resumed, keep: Callable[[str], bool] = lambda key: True) -> dict[str, torch.Tensor]:
        """Same final step and every kept weight equal (atol 1e-6); returns the expected state."""
        assert resumed.trainer.global_step == full.trainer.global_step
        expected, actual = self.state(full.model, keep), self.state(resumed.model, keep)
        assert expected and expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)
        return expected


@pytest.fixture(scope="session")
def cli_tools(repo_root) -> CliTools:
    return CliTools(repo_root)
