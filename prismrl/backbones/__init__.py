"""Shared encoder backbones: text / vision / CNN encoders, pooling, projection, towers, LoRA."""

from prismrl.backbones.cnn import EfficientNetLiteEncoder
from prismrl.backbones.fusion import CrossModalFusion
from prismrl.backbones.freezing import count_parameters, freeze, set_requires_grad, unfreeze
from prismrl.backbones.lora import LoraSettings, apply_lora
from prismrl.backbones.pooling import AttentionPool, EncoderOutput, masked_mean
from prismrl.backbones.projection import ProjectionHead
from prismrl.backbones.shipped import resolve_model_path
from prismrl.backbones.text import HFTextEncoder, TextPooling
from prismrl.backbones.tower import EmbeddingTower, TowerPooling
from prismrl.backbones.vision import HFVisionEncoder

__all__ = [
    "AttentionPool",
    "EfficientNetLiteEncoder",
    "EmbeddingTower",
    "EncoderOutput",
    "CrossModalFusion",
    "HFTextEncoder",
    "HFVisionEncoder",
    "LoraSettings",
    "ProjectionHead",
    "TextPooling",
    "TowerPooling",
    "apply_lora",
    "count_parameters",
    "freeze",
    "masked_mean",
    "resolve_model_path",
    "set_requires_grad",
    "unfreeze",
]
