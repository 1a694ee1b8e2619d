"""GRPO through the CLI on tiny LLaVA-NeXT and Pixtral policies (configs/grpo/tiny.yaml with the family swapped):
two optimizer steps on digit images, LoRA moves; LLaVA-NeXT with packed training forwards."""

from __future__ import annotations

import pytest
import torch

from prismrl.policy.adapters import LlavaNextAdapter, PixtralAdapter

TINY = "configs/grpo/tiny.yaml"
REWARD = ["--model.init_args.reward", ('{"class_path": "prismrl.rewards.functions.CallableReward", '
                                      '"init_args": {"function": "tests.lightning_modules.test_grpo_cli:vowel_share"}}')]


@pytest.mark.parametrize("family, adapter_cls, extra", [
    ("llava_next", LlavaNextAdapter, ["--model.init_args.packing", '{"max_tokens_per_row": 512}']),
    ("pixtral", PixtralAdapter, []),
])
def test_two_grpo_steps_train_the_lora(cli_tools, tmp_path, family, adapter_cls, extra):
    policy = ["--model.init_args.policy", (f'{{"tiny_config": {{"model_type": "{family}"}}, '
                                           '"lora": {"r": 8, "alpha": 16, "target_modules": "all-linear"}}')]
    args = [*policy, *REWARD, *extra, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
            "--model.init_args.num_iterations", "1"]
    cli = cli_tools.run(TINY, tmp_path, *args)
    assert cli.trainer.global_step == 2 and type(cli.model.adapter) is adapter_cls
    lora = {n: p for n, p in cli.model.policy.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    fresh = cli_tools.run(TINY, tmp_path, *args, run=False).model.policy.state_dict()
    assert any(not torch.equal(p.detach(), fresh[n]) for n, p in lora.items() if n in fresh)  # the policy moved
