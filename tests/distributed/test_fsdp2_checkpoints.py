"""FSDP2 checkpoints on 2 CPU processes: sharded (distributed checkpoint) save, exact resume, consolidated export.

GRPO tiny (LoRA on a tiny Qwen2-VL) runs 4 optimizer steps uninterrupted, saving a sharded checkpoint folder at
step 2; a second run resumes from that folder. Both export the adapters with ``save_pretrained`` from the sharded
weights (gathered to rank 0); the resumed run must end with the same weights.

Generator PPO and actor-critic tiny run 2 epochs, saving a sharded checkpoint per epoch; a second run resumes from
the epoch-0 folder and must write the same epoch-1 weights. Per-rank state must come back for each rank: the RNGs
(``RNGStateCallback``); generator PPO's reward-normalizer history is one state, the same on every rank (every
rank normalizes the rewards of the global batch);
actor-critic in supervised mode never gives its policy head a gradient, whose optimizer state the sharded
checkpoint must still hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_launch import fit
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

TINY = "configs/grpo/tiny.yaml"
FSDP2 = '{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}}'
CSV_LOGGER = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "version": "run"}}'
SAVER = ('{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "steps", '
         '"filename": "{step}", "every_n_train_steps": 2, "save_top_k": -1}}')
REWARD = ('{"class_path": "prismrl.rewards.functions.CallableReward", '
          '"init_args": {"function": "dist_recorders:vowel_share"}}')


def _fit(workdir: Path, *extra: str) -> dict:
    fit(TINY, workdir, "--trainer.devices", "2", "--trainer.strategy", FSDP2, "--trainer.max_steps", "4",
        "--trainer.limit_val_batches", "0", "--trainer.logger", CSV_LOGGER, "--trainer.callbacks", "[]",
        "--trainer.callbacks+=prismrl.callbacks.RNGStateCallback", "--trainer.callbacks+", SAVER,
        "--data.init_args.max_train_prompts", "8", "--model.init_args.minibatch_size", "null",
        "--model.init_args.reward", REWARD, "--model.init_args.export_dir", str(workdir / "export"), *extra)
    return load_file(str(workdir / "export/adapter_model.safetensors"))


@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly_and_exports_consolidated_adapters(tmp_path):
    full = _fit(tmp_path / "full")
    checkpoint = tmp_path / "full/steps/step=2.ckpt"
    assert checkpoint.is_dir() and list(checkpoint.glob("*.distcp")), "expected a sharded checkpoint folder"
    resumed = _fit(tmp_path / "resumed", "--ckpt_path", str(checkpoint))
    assert full.keys() == resumed.keys() and any("lora_B" in k for k in full)
    diff = max((full[k] - resumed[k]).abs().max().item() for k in full)
    print("fsdp2 resume: max |weight difference| resumed vs uninterrupted:", diff)
    assert diff == 0.0
    assert max(full[k].abs().max().item() for k in full if "lora_B" in k) > 0  # trained (LoRA B starts at 0)


EPOCH_SAVER = ('{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "epochs", '
               '"filename": "{epoch}", "every_n_epochs": 1, "save_top_k": -1}}')
NORMALIZER = ('{"class_path": "prismrl.callbacks.reward_normalization.RewardNormalizationCallback", '
              '"init_args": {"window": 16, "clip": [0.0, 1.0]}}')
STAGES = {"generator_ppo": ("configs/generator_ppo/tiny.yaml", "--trainer.callbacks+", NORMALIZER),
          "actor_critic": ("configs/actor_critic/tiny.yaml", "--trainer.limit_val_batches", "0")}


def _fit_epochs(config: str, workdir: Path, *extra: str) -> None:
    fit(config, workdir, "--trainer.devices", "2", "--trainer.strategy", FSDP2, "--trainer.max_epochs", "2",
        "--trainer.logger", "false", "--trainer.callbacks", "[]",
        "--trainer.callbacks+=prismrl.callbacks.RNGStateCallback", "--trainer.callbacks+", EPOCH_SAVER, *extra)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The full model state dict of a sharded checkpoint folder."""
    assert checkpoint.is_dir() and list(checkpoint.glob("*.distcp")), f"expected a sharded checkpoint: {checkpoint}"
    single = checkpoint.parent / f"{checkpoint.name}.pt"
    dcp_to_torch_save(checkpoint, single)
    return torch.load(single, weights_only=True, map_location="cpu")["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_sharded_epoch_checkpoint_resumes_exactly(tmp_path, stage):
    config, *extra = STAGES[stage]
    _fit_epochs(config, tmp_path / "full", *extra)
    start = tmp_path / "full/epochs/epoch=0.ckpt"
    _fit_epochs(config, tmp_path / "resumed", *extra, "--ckpt_path", str(start))
    full, resumed = _weights(tmp_path / "full/epochs/epoch=1.ckpt"), _weights(tmp_path / "resumed/epochs/epoch=1.ckpt")
    assert full.keys() == resumed.keys()
    diff = max((full[k].float() - resumed[k].float()).abs().max().item() for k in full)
    moved = max((full[k].float() - v.float()).abs().max().item() for k, v in _weights(start).items())
    print(f"fsdp2 resume {stage}: max |weight difference| resumed vs uninterrupted: {diff} (epoch 1 moved by {moved})")
    assert diff == 0.0 and moved > 0
    meta = torch.load(start / "meta.pt", weights_only=True)
    assert meta["prismrl"]["world_size"] == 2
    if stage == "generator_ppo":  # one history for every rank, in the callback state Lightning saves
        states = [v for k, v in meta["callbacks"].items() if k.startswith("RewardNormalizationCallback")]
        assert len(states) == 1 and all(states[0]["history"].values()), meta["callbacks"].keys()
