"""GRPO on the shipped SmolLM2 with 8-bit base weights (bitsandbytes ``Linear8bitLt``, on CPU) and LoRA: a tiny
version of configs/grpo/smollm2_arithmetic.yaml trains, only the adapters move."""

from __future__ import annotations

import json

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

CONFIG = "configs/grpo/smollm2_arithmetic.yaml"
POLICY = {"model_name_or_path": "shipped:smollm2-135m-instruct", "torch_dtype": "float32", "quantization": "8bit",
          "lora": {"r": 8, "alpha": 16, "target_modules": "all-linear"}}
TINY_BUDGET = [
    "--model.init_args.policy", json.dumps(POLICY),
    # vowel share varies between any two completions, so group advantages are never all zero and LoRA moves
    "--model.init_args.reward", ('{"class_path": "prismrl.rewards.functions.CallableReward", '
                                 '"init_args": {"function": "tests.lightning_modules.test_grpo_cli:vowel_share"}}'),
    "--model.init_args.group_size", "4", "--model.init_args.sampling.max_new_tokens", "6",
    "--data.init_args.loader.batch_size", "1", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
    "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path of bitsandbytes")
def test_grpo_steps_with_8bit_base_weights_on_cpu_train_lora_only(cli_tools, tmp_path):
    cli = cli_tools.run(CONFIG, tmp_path, *TINY_BUDGET, run=False)
    policy = cli.model.policy
    layers = [m for m in policy.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert len(layers) == 210 and all(m.weight.dtype == torch.int8 for m in layers)
    before = cli_tools.state(policy)
    cli_tools.fit(cli, tmp_path)

    assert cli.trainer.global_step == 2
    loss = cli.trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    after = policy.state_dict()
    lora_b = [k for k in before if "lora_B" in k]
    assert lora_b and any(not torch.equal(after[k], before[k]) for k in lora_b)
    base = [k for k in before if "lora_" not in k]
    assert any(after[k].dtype == torch.int8 for k in base)
    for key in base:  # int8 weights, their scales, norms and embeddings: bit-identical
        assert torch.equal(after[key], before[key]), key
    assert all(isinstance(m, bnb.nn.Linear8bitLt) for m in layers)
