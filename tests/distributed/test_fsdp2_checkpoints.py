"""FSDP2 checkpoints on 2 CPU processes: sharded (distributed checkpoint) save, exact resume, consolidated export.

GRPO tiny (LoRA on a tiny Qwen2-VL) runs 4 optimizer steps uninterrupted, saving a sharded checkpoint folder at
step 2; a second run resumes from that folder. Both export the adapters with ``save_pretrained`` from the sharded
weights (gathered to rank 0); the resumed run must end with the same weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dist_launch import fit
from safetensors.torch import load_file

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
