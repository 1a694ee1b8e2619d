"""Wrap policy and gradient norms of prismrl.backbones.sharding (one process; the 2-process runs live in
tests/distributed/, the norm of sharded gradients in tests/distributed/test_fsdp2_gradient_norm.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prismrl.backbones.sharding import ShardingSettings, total_norm, transformer_blocks
from prismrl.policy.build import PolicySettings, build_policy


@pytest.fixture(scope="module")
def tiny_vlm():
    return build_policy(PolicySettings(tiny_config={"model_type": "qwen2_vl"}, lora={"r": 4, "alpha": 8,
                                                                                      "target_modules": "all-linear"}))[0]


def test_vlm_blocks_are_the_decoder_layers_and_vision_blocks(tiny_vlm):
    names = [type(b).__name__ for b in transformer_blocks(tiny_vlm)]
    config = tiny_vlm.config
    layers = config.text_config.num_hidden_layers if hasattr(config, "text_config") else config.num_hidden_layers
    assert names.count("Qwen2VLDecoderLayer") == layers
    assert names.count("Qwen2VLVisionBlock") == config.vision_config.depth
    assert set(names) == {"Qwen2VLDecoderLayer", "Qwen2VLVisionBlock"}


def test_text_tower_blocks_and_explicit_names():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2))
    stage = nn.ModuleDict({"text": bert, "head": nn.Linear(16, 2)})
    # HF's _no_split_modules of BERT: the embeddings (a large vocabulary) and each encoder layer
    assert [type(b).__name__ for b in transformer_blocks(stage)] == ["BertEmbeddings"] + ["BertLayer"] * 3
    assert [type(b).__name__ for b in transformer_blocks(stage, ["BertLayer"])] == ["BertLayer"] * 3


def test_embeddings_tied_to_an_lm_head_stay_in_the_root_unit():
    from transformers import BertConfig, BertForMaskedLM

    mlm = BertForMaskedLM(BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2))
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert [type(b).__name__ for b in transformer_blocks(mlm)] == ["BertLayer"] * 2


def test_a_wrap_policy_naming_missing_modules_fails_with_the_field(tiny_vlm):
    with pytest.raises(ValueError, match=r"sharding.block_classes: \['LlamaDecoderLayer'\] name no module"):
        transformer_blocks(tiny_vlm, ["Qwen2VLDecoderLayer", "LlamaDecoderLayer"])
    with pytest.raises(ValueError, match="sharding.mixed_precision"):
        ShardingSettings(mixed_precision="fp8")
    with pytest.raises(ValueError, match="sharding.block_classes"):
        ShardingSettings(block_classes="BertLayer")


def test_total_norm_of_plain_tensors_is_the_joint_l2_norm():
    tensors = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    assert total_norm(tensors).item() == pytest.approx(5.0)
    assert total_norm([]).item() == 0.0
