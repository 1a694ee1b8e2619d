"""GRPO under DDP and FSDP2 on 2 CPU processes (gloo) vs 1 process with the doubled batch: the same run.

Setup that makes the two runs the same computation: 4 training prompts, 2 per rank (4 in the single process), so
every step sees the same 4 prompts (the sampler's epoch order is shared, ranks take contiguous slices);
``rollout_seeding: per_prompt`` samples each prompt's group from a seed of (run seed, step, prompt), so both
runs roll out identical completions (under FSDP2 from weights gathered once per rollout); DAPO's token count is all-reduced and ``batch_std`` gathers the std over
ranks, so losses, advantages and DDP-averaged gradients match the single-process ones up to float rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dist_launch import fit, metric_rows
from safetensors.torch import load_file

TINY = "configs/grpo/tiny.yaml"
VOWEL_REWARD = ["--model.init_args.reward", ('{"class_path": "prismrl.rewards.functions.CallableReward", '
                                            '"init_args": {"function": "dist_recorders:vowel_share"}}')]
CSV_LOGGER = '{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "version": "run"}}'
STEPS = 6  # 3 rollouts x 2 iterations
METRICS = ("train/loss", "train/reward", "train/reward_std", "train/kl", "train/completion_length")


def _args(workdir: Path, batch_size: int, scaling: str, *extra: str) -> list[str]:
    return [
        "--trainer.max_steps", str(STEPS), "--trainer.limit_val_batches", "0", "--trainer.logger", CSV_LOGGER,
        "--trainer.callbacks", "[]", "--trainer.callbacks+=dist_recorders.PromptRecorder",
        "--trainer.callbacks.folder", str(workdir / "prompts"),
        "--data.init_args.max_train_prompts", "4", "--data.init_args.loader.batch_size", str(batch_size),
        "--model.init_args.minibatch_size", "null", "--model.init_args.rollout_seeding", "per_prompt",
        "--model.init_args.advantage_scaling", scaling, "--model.init_args.export_dir", str(workdir / "export"),
        *VOWEL_REWARD, *extra,
    ]


FSDP2 = '{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy", "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}}'
STRATEGIES = {"ddp": "ddp", "fsdp2": FSDP2}
_RUNS: dict[tuple[str, str], Path] = {}


def _run(tmp: Path, strategy: str | None, scaling: str) -> Path:
    """A run of the tiny preset: 1 process with 4 prompts per step (strategy None) or 2 with 2 each (cached)."""
    if (strategy, scaling) not in _RUNS:
        workdir = tmp / f"{strategy or 'one'}-{scaling}"
        devices = 2 if strategy else 1
        fit(TINY, workdir, *_args(workdir, 4 // devices, scaling), "--trainer.devices", str(devices),
            *(["--trainer.strategy", STRATEGIES[strategy]] if strategy else []))
        _RUNS[(strategy, scaling)] = workdir
    return _RUNS[(strategy, scaling)]


def _metrics(workdir: Path) -> dict[str, dict[int, float]]:
    csv_files = list(workdir.glob("runs/*/run/metrics.csv"))
    assert len(csv_files) == 1, csv_files
    return {key: metric_rows(csv_files[0], key) for key in METRICS}


@pytest.fixture(scope="module")
def tmp_runs(tmp_path_factory):
    yield tmp_path_factory.mktemp("runs")
    _RUNS.clear()


@pytest.fixture(params=[("ddp", "group_std"), ("ddp", "batch_std"), ("fsdp2", "group_std")], ids=lambda p: "-".join(p))
def runs(request, tmp_runs):
    strategy, scaling = request.param
    return _run(tmp_runs, None, scaling), _run(tmp_runs, strategy, scaling)


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_doubled_batch(runs):
    one, two = (_metrics(w) for w in runs)
    diffs = {}
    for key in METRICS:
        assert one[key].keys() == two[key].keys() and len(one[key]) == STEPS // 2, (key, one[key], two[key])
        diffs[key] = max(abs(one[key][s] - two[key][s]) for s in one[key])
    print(f"{runs[1].name}: max |1 process - 2 processes|:", diffs)
    assert max(diffs.values()) < 1e-4, diffs
    a, b = (load_file(str(w / "export/adapter_model.safetensors")) for w in runs)
    assert a.keys() == b.keys()
    weight_diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print("max |weight difference| after training:", weight_diff)
    assert weight_diff < 1e-4
    moved = max(a[k].abs().max().item() for k in a if "lora_B" in k)
    assert moved > 0  # LoRA B starts at zero: the runs trained


@pytest.mark.slow
def test_each_prompt_group_is_rolled_out_on_one_rank(runs):
    one, two = runs
    single = {json.loads(line)["step"]: json.loads(line)["prompts"] for line in (one / "prompts/rank0.jsonl").read_text().splitlines()}
    ranks = [[json.loads(line) for line in (two / f"prompts/rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [len(r) for r in ranks] == [STEPS // 2] * 2
    for line0, line1 in zip(*ranks):
        assert line0["step"] == line1["step"]
        assert len(line0["prompts"]) == len(line1["prompts"]) == 2
        assert not set(line0["prompts"]) & set(line1["prompts"])  # a prompt's group lives on one rank only
        assert sorted(line0["prompts"] + line1["prompts"]) == sorted(single[line0["step"]])
