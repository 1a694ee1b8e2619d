"""GRPO's ``processor:`` settings (``ProcessorSettings``) reach the policy's adapter from YAML."""

from __future__ import annotations

import pytest

from prismrl.policy.adapters import ProcessorSettings


def test_grpo_yaml_reaches_the_adapter(cli_tools, tmp_path):
    cli = cli_tools.run("configs/grpo/tiny.yaml", tmp_path, "--model.init_args.processor",
                        '{"min_pixels": 784, "max_pixels": 3136}', run=False)
    adapter = cli.model.adapter
    assert adapter.processor_settings == ProcessorSettings(min_pixels=784, max_pixels=3136)
    assert (adapter.image_processor.size["shortest_edge"], adapter.image_processor.size["longest_edge"]) == (784, 3136)
    with pytest.raises(ValueError, match=r"processor.max_tiles: Qwen2VLAdapter has no such image setting"):
        cli_tools.run("configs/grpo/tiny.yaml", tmp_path, "--model.init_args.processor", '{"max_tiles": 2}', run=False)
