"""Every backbone builds from YAML with class_path / init_args, as LightningCLI does."""

import pytest
import torch
from jsonargparse import ArgumentParser
from peft import PeftModel

from prismrl.backbones import (
    EfficientNetLiteEncoder,
    EmbeddingTower,
    HFTextEncoder,
    HFVisionEncoder,
)

TEXT_TOWER = """
tower:
  class_path: prismrl.backbones.EmbeddingTower
  init_args:
    embed_dim: 16
    attention_heads: 2
    projection_hidden_dim: 24
    encoder:
      class_path: prismrl.backbones.HFTextEncoder
      init_args:
        tiny_config: {model_type: roberta, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}
        pooling: cls
        max_length: 16
        lora: {r: 2, alpha: 4, target_modules: [query, value]}
"""

VISION_TOWER = """
tower:
  class_path: prismrl.backbones.EmbeddingTower
  init_args:
    embed_dim: 8
    pooling: encoder
    encoder:
      class_path: prismrl.backbones.HFVisionEncoder
      init_args:
        tiny_config: {model_type: siglip2_vision_model, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, patch_size: 8, num_patches: 16}
        freeze: true
"""

CNN_TOWER = """
tower:
  class_path: prismrl.backbones.EmbeddingTower
  init_args:
    embed_dim: 8
    encoder:
      class_path: prismrl.backbones.EfficientNetLiteEncoder
      init_args: {pretrained: false, freeze: true}
"""


def build(yaml: str) -> EmbeddingTower:
    parser = ArgumentParser()
    parser.add_argument("--tower", type=EmbeddingTower)
    return parser.instantiate(parser.parse_string(yaml)).tower


def test_text_tower_from_yaml():
    tower = build(TEXT_TOWER)
    assert isinstance(tower.encoder, HFTextEncoder) and isinstance(tower.encoder.model, PeftModel)
    assert tower.encoder.max_length == 16 and tower.encoder.pooling.value == "cls"
    assert tower.encode_texts(["a dog", "two cats"]).shape == (2, 16)


@pytest.mark.parametrize(
    "yaml,encoder_type,size", [(VISION_TOWER, HFVisionEncoder, 32), (CNN_TOWER, EfficientNetLiteEncoder, 64)]
)
def test_image_towers_from_yaml(yaml, encoder_type, size):
    tower = build(yaml)
    assert isinstance(tower.encoder, encoder_type)
    assert not any(p.requires_grad for p in tower.encoder.parameters())
    assert tower(torch.randn(2, 3, size, size)).shape == (2, 8)


def test_bad_yaml_value_is_reported():
    with pytest.raises(Exception, match="pooling"):
        build(TEXT_TOWER.replace("pooling: cls", "pooling: max"))
