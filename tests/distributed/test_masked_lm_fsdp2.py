"""Masked LM under DDP and FSDP2 on 2 CPU processes vs 1 process on the same global batch, and the world-size resume guard.

A 16-line corpus with one optimizer step per epoch (batch 16 in one process, 8 per rank in two), so both runs see
the same texts at every step (the sampler's epoch order is shared; ranks take contiguous halves); each text gets
the same mask in both runs (seeded per sample), every batch is padded to the same length and dropout is off. The
loss is the mean over every rank's selected positions, so both runs take the same steps. The FSDP2 run takes its
sharding settings from the command line (``model.init_args.sharding``: activation checkpointing on) and exports
the consolidated encoder, compared with the one-process export.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dist_launch import REPO, clean_env, fit, metric_rows
from safetensors.torch import load_file

TINY = "configs/masked_lm/tiny.yaml"
STEPS = 3
BERT = ('{"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, '
        '"num_attention_heads": 2, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0, '
        '"attention_probs_dropout_prob": 0.0}')
FSDP2 = '{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", "init_args": {"data_parallel_size": %d, "tensor_parallel_size": 1}}'
CSV_LOGGER = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "version": "run"}}'
SAVER = ('{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "steps", '
         '"filename": "{step}", "every_n_train_steps": 1, "save_top_k": -1}}')
WORDS = "module function class return value import string list dict tuple parser socket thread buffer".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    lines = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12 + i % 5)) for i in range(20)]
    (folder / "train.txt").write_text("\n".join(lines[:16]) + "\n")
    (folder / "val.txt").write_text("\n".join(lines[16:]) + "\n")
    return folder


def _args(workdir: Path, corpus: Path, devices: int, *extra: str) -> list[str]:
    return ["--trainer.max_epochs", str(STEPS), "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0",
            "--trainer.logger", CSV_LOGGER, "--trainer.callbacks", "[]", "--trainer.callbacks+", SAVER,
            "--trainer.devices", str(devices), "--model.init_args.tiny_config", BERT,
            "--model.init_args.export_dir", str(workdir / "export"), "--data.init_args.corpus", "null",
            "--data.init_args.train_path", str(corpus / "train.txt"), "--data.init_args.val_path", str(corpus / "val.txt"),
            "--data.init_args.pad_to_multiple_of", "48", "--data.init_args.loader.batch_size", str(16 // devices), *extra]


_RUNS: dict[str, Path] = {}


def _run(tmp: Path, corpus: Path, strategy: str | None) -> Path:
    """1 process (strategy None), 2 DDP processes, or 2 FSDP2 processes with activation checkpointing from the
    sharding argument; cached per strategy."""
    key = strategy or "one"
    if key not in _RUNS:
        workdir, devices = tmp / key, 2 if strategy else 1
        sharded = {"ddp": ["--trainer.strategy", "ddp"],
                   "fsdp2": ["--trainer.strategy", FSDP2 % devices, "--model.init_args.sharding",
                             '{"activation_checkpointing": true}']}.get(key, [])
        fit(TINY, workdir, *_args(workdir, corpus, devices, *sharded))
        _RUNS[key] = workdir
    return _RUNS[key]


def _losses(workdir: Path) -> dict[int, float]:
    files = list(workdir.glob("runs/*/run/metrics.csv"))
    assert len(files) == 1, files
    return metric_rows(files[0], "train/loss")


@pytest.fixture(scope="module")
def tmp_runs(tmp_path_factory):
    yield tmp_path_factory.mktemp("mlm")
    _RUNS.clear()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_match_one_process(tmp_runs, corpus, strategy):
    one, two = _run(tmp_runs, corpus, None), _run(tmp_runs, corpus, strategy)
    losses_one, losses_two = _losses(one), _losses(two)
    assert len(losses_one) == STEPS and losses_one.keys() == losses_two.keys()
    loss_gap = max(abs(losses_one[s] - losses_two[s]) for s in losses_one)
    weights_one = load_file(str(one / "export/model.safetensors"))
    weights_two = load_file(str(two / "export/model.safetensors"))
    assert weights_one.keys() == weights_two.keys()
    weight_gap = max((weights_one[k] - weights_two[k]).abs().max().item() for k in weights_one)
    print(f"masked lm {strategy} vs 1 process:", {s: (losses_one[s], losses_two[s]) for s in losses_one},
          "max loss gap", loss_gap, "max weight gap", weight_gap)
    assert losses_one[0] != losses_one[STEPS - 1]  # it trained
    assert loss_gap < 1e-5
    assert weight_gap < 5e-4  # Adam turns rounding-level gradient differences into ~lr-sized steps


@pytest.mark.slow
def test_resuming_under_another_world_size_is_refused_before_training(tmp_runs, corpus):
    tmp = tmp_runs
    two = _run(tmp, corpus, "fsdp2")
    checkpoint = two / "steps/step=2.ckpt"
    assert checkpoint.is_dir(), sorted(p.name for p in (two / "steps").iterdir())
    workdir = tmp / "resume1"
    workdir.mkdir()
    args = _args(workdir, corpus, 1, "--trainer.strategy", FSDP2 % 1, "--ckpt_path", str(checkpoint))
    done = subprocess.run([sys.executable, "-m", "prismrl.cli", "fit", "--config", str(REPO / TINY), *args],
                          check=False, cwd=workdir, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "written by a run of 2 processes" in done.stderr and "this run has 1" in done.stderr, done.stderr[-3000:]
    assert not list(workdir.glob("runs/*/run/metrics.csv")) or not _losses(workdir)  # no step was trained
