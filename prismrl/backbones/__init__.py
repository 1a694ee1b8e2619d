"""Shared backbones: text / vision / CNN / audio encoders, pooling, projection, towers, fusion, resampler, decoders, LoRA."""

from prismrl.backbones.audio import WhisperAudioEncoder
from prismrl.backbones.cnn import EfficientNetLiteEncoder
from prismrl.backbones.freezing import (
    count_parameters,
    freeze,
    set_requires_grad,
    unfreeze,
)
from prismrl.backbones.fusion import CrossModalFusion
from prismrl.backbones.lora import LoraSettings, apply_lora
from prismrl.backbones.pooling import AttentionPool, EncoderOutput, masked_mean
from prismrl.backbones.prefix_lm import PrefixLMDecoder
from prismrl.backbones.projection import ProjectionHead
from prismrl.backbones.recursive_decoder import RecursiveDecoder
from prismrl.backbones.resampler import PerceiverResampler
from prismrl.backbones.shipped import resolve_model_path
from prismrl.backbones.text import HFTextEncoder, TextPooling
from prismrl.backbones.tower import EmbeddingTower, TowerPooling
from prismrl.backbones.vision import HFVisionEncoder
from prismrl.backbones.visual_prefix import VisualPrefix

__all__ = [
    "AttentionPool",
    "EfficientNetLiteEncoder",
    "EmbeddingTower",
    "EncoderOutput",
    "CrossModalFusion",
    "HFTextEncoder",
    "HFVisionEncoder",
    "LoraSettings",
    "PerceiverResampler",
    "PrefixLMDecoder",
    "ProjectionHead",
    "RecursiveDecoder",
    "TextPooling",
    "TowerPooling",
    "VisualPrefix",
    "WhisperAudioEncoder",
    "apply_lora",
    "count_parameters",
    "freeze",
    "masked_mean",
    "resolve_model_path",
    "set_requires_grad",
    "unfreeze",
]
