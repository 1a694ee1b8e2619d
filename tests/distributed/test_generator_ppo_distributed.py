"""Generator PPO under DDP on 2 CPU processes (gloo) vs 1 process with the doubled batch: the same run.

Setup that makes the two runs the same computation: one PPO iteration per epoch over the same 4 requests (the
request stream has batch_size x iterations_per_epoch requests per epoch, split into contiguous halves across
ranks: batch 4 x 1 iteration in one process, batch 2 x 2 "iterations" = 1 per rank in two), so request ids,
labels and in-context examples match; sampling keeps the top token only (``top_k: 1``), so the completions do
not depend on the ranks' RNG streams; one minibatch per PPO epoch. What the ranks must share for the runs to
match: the reward (every rank trains the classifier on every rank's generations, with a normalizer updated on the
global batch: ``prismrl.rewards.distributed``), the advantage whitening, and the token mean of the PPO loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_launch import fit, metric_rows

TINY = "configs/generator_ppo/tiny.yaml"
ITERATIONS = 3
CSV_LOGGER = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "version": "run"}}'
NORMALIZER = ('{"class_path": "prismrl.callbacks.reward_normalization.RewardNormalizationCallback", '
              '"init_args": {"window": 16, "clip": [0.0, 1.0]}}')
SAMPLING = '{"max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "top_k": 1}'
METRICS = ("train/reward", "train/golden_loss", "train/golden_accuracy", "train/reward_raw/inter", "train/kl",
           "train/loss", "train/completion_length")
_RUNS: dict[str, Path] = {}


def _run(tmp: Path, devices: int) -> Path:
    key = f"devices{devices}"
    if key not in _RUNS:
        workdir = tmp / key
        fit(TINY, workdir, "--trainer.devices", str(devices), *(["--trainer.strategy", "ddp"] if devices > 1 else []),
            "--trainer.max_epochs", str(ITERATIONS), "--trainer.logger", CSV_LOGGER, "--trainer.callbacks", "[]",
            "--trainer.callbacks+", NORMALIZER, "--model.init_args.sampling", SAMPLING,
            "--model.init_args.minibatch_size", "null", "--data.init_args.loader.batch_size", str(4 // devices),
            "--data.init_args.iterations_per_epoch", str(devices))
        _RUNS[key] = workdir
    return _RUNS[key]


def _metrics(workdir: Path) -> dict[str, dict[int, float]]:
    files = list(workdir.glob("runs/*/run/metrics.csv"))
    assert len(files) == 1, files
    return {key: metric_rows(files[0], key) for key in METRICS}


def _weights(workdir: Path) -> dict[str, torch.Tensor]:
    checkpoints = sorted(workdir.glob("runs/**/*.ckpt"))
    assert len(checkpoints) == 1, checkpoints
    state = torch.load(checkpoints[0], weights_only=True, map_location="cpu")["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("policy.", "value_head.")) and v.is_floating_point()}


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process_with_the_doubled_batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generator_ppo")
    one, two = _run(tmp, 1), _run(tmp, 2)
    metrics_one, metrics_two = _metrics(one), _metrics(two)
    gaps = {}
    for key in METRICS:
        assert len(metrics_one[key]) == ITERATIONS and metrics_one[key].keys() == metrics_two[key].keys(), key
        gaps[key] = max(abs(metrics_one[key][s] - metrics_two[key][s]) for s in metrics_one[key])
    weights_one, weights_two = _weights(one), _weights(two)
    assert weights_one.keys() == weights_two.keys() and weights_one
    weight_gap = max((weights_one[k] - weights_two[k]).abs().max().item() for k in weights_one)
    print("generator ppo ddp vs 1 process: max metric gaps", gaps, "max weight gap", weight_gap,
          "rewards", metrics_one["train/reward"], metrics_two["train/reward"])
    assert len(set(metrics_one["train/golden_loss"].values())) > 1  # the classifier saw other generations each time
    assert max(gaps.values()) < 1e-4, gaps
    assert weight_gap < 5e-4
