"""Alignment (CLIP loss with the cross-rank feature gather) under DDP and FSDP2 on 2 CPU processes vs 1 process.

One optimizer step per epoch covers the whole training split (719 pairs per rank, 1438 in the single process),
so both runs see the same pairs at every step (the sampler's epoch order is shared; ranks take contiguous
halves). Dropout is off (it would draw different masks per rank). The local-loss CLIP gradient averaged over
ranks equals the full-batch gradient, so the weights of the DDP run and the consolidated weights of the sharded
run (a full state dict written by rank 0: ``save_distributed_checkpoint: false``) match the single-process weights
up to float rounding. The single-process run is shared by both tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_launch import fit

TINY = "configs/alignment/tiny.yaml"
STEPS = 3
BERT = ('{"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, '
        '"num_attention_heads": 2, "vocab_size": 30522, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0, '
        '"attention_probs_dropout_prob": 0.0}')
FSDP2 = ('{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1, '
         '"save_distributed_checkpoint": false}}')
CSV_LOGGER = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "version": "run"}}'


STRATEGIES = {"ddp": "ddp", "fsdp2": FSDP2}
_RUNS: dict[str, dict[str, torch.Tensor]] = {}


def _run(tmp: Path, strategy: str | None) -> dict[str, torch.Tensor]:
    """Final weights of 1 process (strategy None) or 2 processes (cached per strategy)."""
    key = strategy or "one"
    if key not in _RUNS:
        _RUNS[key] = _fit(tmp / key, 2 if strategy else 1, *(["--trainer.strategy", STRATEGIES[strategy]] if strategy else []))
    return _RUNS[key]


def _fit(workdir: Path, devices: int, *extra: str) -> dict[str, torch.Tensor]:
    fit(TINY, workdir, "--trainer.max_steps", str(STEPS), "--trainer.max_epochs", str(STEPS), "--trainer.limit_val_batches", "0",
        "--trainer.callbacks", "[]", "--trainer.logger", CSV_LOGGER, "--trainer.devices", str(devices), *extra,
        "--data.init_args.loader.batch_size", str(1438 // devices), "--model.init_args.text_dropout", "0.0",
        "--model.init_args.text_tower.init_args.encoder.init_args.tiny_config", BERT)
    checkpoints = sorted(workdir.glob("runs/**/*.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    checkpoint = torch.load(checkpoints[0], weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == STEPS
    return checkpoint["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_match_one_process(tmp_path_factory, strategy):
    tmp = tmp_path_factory.mktemp("alignment")
    one, two = _run(tmp, None), _run(tmp, strategy)
    assert one.keys() == two.keys()
    diff = max((one[k].float() - two[k].float()).abs().max().item() for k in one if one[k].is_floating_point())
    print(f"alignment {strategy}: max |weight difference| after", STEPS, "steps:", diff)
    assert diff < 5e-4  # Adam turns rounding-level gradient differences of near-zero gradients into ~lr-sized steps
