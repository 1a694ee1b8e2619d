"""Actor-critic and VL SFT under DDP and FSDP2 on 2 CPU processes (gloo) vs 1 process with the doubled batch.

One optimizer step per epoch covers the whole training split (719 samples per rank, 1438 in the single process),
so both runs see the same samples at every step (the sampler's epoch order is shared; ranks take contiguous
halves). Every dropout is off (it would draw different masks per rank). Actor-critic trains in combined mode
(classifier + actor-critic losses) on logged feedback: the logged actions and rewards replace the actions each
rank would sample from its own generator, and the advantages are not whitened (that would use each rank's own
batch statistics). VL SFT asks digit questions only, so every answer
has the same number of tokens and the mean of the ranks' token-mean losses is the loss of the whole batch. The
loss of a step is the mean over ranks of what each rank's ``training_step`` returned (``LossRecorder``); the
weights are those of the last checkpoint (a full state dict for FSDP2: ``save_distributed_checkpoint: false``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_launch import fit
from dist_recorders import recorded_losses

STEPS = 3
FSDP2 = ('{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", "init_args": {"data_parallel_size": 2, '
         '"tensor_parallel_size": 1, "save_distributed_checkpoint": false}}')
CSV_LOGGER = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "version": "run"}}'
BERT = ('{"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, '
        '"num_attention_heads": 2, "vocab_size": 30522, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0, '
        '"attention_probs_dropout_prob": 0.0}')
STAGES = {
    "actor_critic": ("configs/actor_critic/tiny.yaml", "--model.init_args.mode", "combined",
                     "--model.init_args.normalize_advantages", "false", "--data.init_args.logged_feedback", "true",
                     "--model.init_args.dropout", "0.0", "--model.init_args.text_encoder.init_args.tiny_config", BERT),
    "vl_sft": ("configs/vl_sft/tiny_lm.yaml", "--model.init_args.text_dropout", "0.0",
               "--model.init_args.decoder.init_args.lora", '{"r": 4, "alpha": 8, "dropout": 0.0}',
               "--data.init_args.question_types", "[digit]"),
}
_RUNS: dict[tuple[str, str], tuple[dict[int, float], dict[str, torch.Tensor]]] = {}


def _run(tmp: Path, stage: str, strategy: str | None) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    """(step -> loss, final weights) of 1 process (strategy None) or 2 processes; cached per (stage, strategy)."""
    key = (stage, strategy or "one")
    if key not in _RUNS:
        config, *extra = STAGES[stage]
        workdir, devices = tmp / f"{stage}-{key[1]}", 2 if strategy else 1
        fit(config, workdir, "--trainer.max_steps", str(STEPS), "--trainer.max_epochs", str(STEPS),
            "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0", "--trainer.logger", CSV_LOGGER,
            "--trainer.callbacks", "[]", "--trainer.callbacks+=dist_recorders.LossRecorder",
            "--trainer.callbacks.folder", str(workdir / "losses"), "--trainer.devices", str(devices),
            *(["--trainer.strategy", "ddp" if strategy == "ddp" else FSDP2] if strategy else []),
            "--data.init_args.loader.batch_size", str(1438 // devices), *extra)
        checkpoints = sorted(workdir.glob("runs/**/*.ckpt"))
        assert len(checkpoints) == 1, checkpoints
        checkpoint = torch.load(checkpoints[0], weights_only=True, map_location="cpu")
        assert checkpoint["global_step"] == STEPS
        _RUNS[key] = recorded_losses(workdir / "losses"), checkpoint["state_dict"]
    return _RUNS[key]


@pytest.fixture(scope="module")
def tmp_runs(tmp_path_factory):
    yield tmp_path_factory.mktemp("stages")
    _RUNS.clear()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_two_ranks_match_one_process_with_the_doubled_batch(tmp_runs, stage, strategy):
    (losses_one, one), (losses_two, two) = _run(tmp_runs, stage, None), _run(tmp_runs, stage, strategy)
    assert len(losses_one) == STEPS and losses_one.keys() == losses_two.keys(), (losses_one, losses_two)
    loss_gap = max(abs(losses_one[s] - losses_two[s]) for s in losses_one)
    assert one.keys() == two.keys()
    floats = [k for k in one if one[k].is_floating_point()]
    weight_gap = max((one[k].float() - two[k].float()).abs().max().item() for k in floats)
    print(f"{stage} {strategy} vs 1 process: losses {losses_one} / {losses_two}, max loss gap {loss_gap:.3g}, "
          f"max weight gap {weight_gap:.3g}")
    first, last = min(losses_one), max(losses_one)
    assert losses_one[first] != losses_one[last]  # it trained
    assert loss_gap < 1e-4
    assert weight_gap < 5e-4  # Adam turns rounding-level gradient differences into ~lr-sized steps
