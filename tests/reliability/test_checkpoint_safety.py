"""Checkpoints are read with weights_only=True: a crafted file runs no code, a damaged one is named, and a checkpoint
of another stage is refused before training."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch

from prismrl.backbones.visual_prefix import load_aligned_vision
from prismrl.checkpoints import load_checkpoint
from prismrl.cli import build_cli
from prismrl.lightning_modules.plumbing import CHECKPOINT_KEY, check_checkpoint_stage

ALIGNMENT = "configs/alignment/tiny.yaml"


class RunsCode:
    """Unpickling this object calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def crafted(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {"image_tower.x": torch.zeros(1)}, "payload": RunsCode(str(marker))}, path)
    return path, marker


def test_a_crafted_checkpoint_runs_no_code(crafted):
    path, marker = crafted
    with pytest.raises(ValueError, match=r"alignment_checkpoint: '.*crafted.ckpt' holds pickled objects .*weights_only=True"):
        load_aligned_vision(torch.nn.Linear(1, 1), path)
    with pytest.raises(ValueError, match="ckpt_path: "):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: a full unpickler runs it
    assert marker.exists()


def test_a_truncated_or_missing_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"ckpt_path: '.*last.ckpt' is not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match=r"alignment_checkpoint: expected a checkpoint file, received '.*nothing.ckpt'"):
        load_checkpoint(tmp_path / "nothing.ckpt", field="alignment_checkpoint")


def test_check_checkpoint_stage_names_both_stages():
    class AlignmentModule:  # only the class name and module matter here
        pass

    written = {CHECKPOINT_KEY: {"stage": "prismrl.lightning_modules.grpo.GRPOModule", "version": "0.1.0"}}
    with pytest.raises(ValueError, match=r"ckpt_path: the checkpoint was written by stage prismrl.lightning_modules.grpo."
                                         r"GRPOModule \(prismrl 0.1.0\); this run's model is .*AlignmentModule"):
        check_checkpoint_stage(written, AlignmentModule)
    check_checkpoint_stage({}, AlignmentModule)  # no record (another program's checkpoint): nothing to compare


@pytest.fixture(scope="module")
def alignment_run(repo_root, tmp_path_factory):
    """The tiny alignment stage (real config, data and Trainer) fitted one step; its checkpoint path."""
    workdir = tmp_path_factory.mktemp("alignment")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cli = build_cli(["--config", str(repo_root / ALIGNMENT)], run=False)
        trainer = pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=workdir)
        trainer.fit(cli.model, datamodule=cli.datamodule)
        trainer.save_checkpoint(workdir / "last.ckpt")
        return cli, workdir / "last.ckpt"
    finally:
        os.chdir(cwd)


def test_checkpoints_record_their_stage_and_load_weights_only(alignment_run):
    _, path = alignment_run
    record = load_checkpoint(path)[CHECKPOINT_KEY]
    assert record["stage"] == "prismrl.lightning_modules.alignment.AlignmentModule"
    assert record["version"]


def test_another_stages_checkpoint_is_refused_before_training(alignment_run, tmp_path):
    cli, path = alignment_run
    checkpoint = load_checkpoint(path)
    checkpoint[CHECKPOINT_KEY]["stage"] = "prismrl.lightning_modules.actor_critic.ActorCriticModule"
    torch.save(checkpoint, tmp_path / "other.ckpt")
    before = [p.detach().clone() for p in cli.model.parameters()]
    trainer = pl.Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="written by stage prismrl.lightning_modules.actor_critic.ActorCriticModule"):
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=tmp_path / "other.ckpt")
    assert trainer.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, cli.model.parameters()))
