"""Per-family batch builders for (vision-)language policies: prompts + images -> MultimodalBatch."""

from prismrl.policy.adapters.base import (
    IMAGE_PLACEHOLDER,
    ProcessedImages,
    ProcessorSettings,
    VLMAdapter,
    split_completions,
)
from prismrl.policy.adapters.causal_lm import CausalLMAdapter
from prismrl.policy.adapters.internvl import InternVLAdapter
from prismrl.policy.adapters.llava import LlavaAdapter
from prismrl.policy.adapters.llava_next import LlavaNextAdapter
from prismrl.policy.adapters.pixtral import PixtralAdapter
from prismrl.policy.adapters.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from prismrl.policy.adapters.registry import (
    ADAPTERS,
    TINY_FAMILIES,
    adapter_class_for,
    adapter_for,
    tiny_policy_config,
)

__all__ = [
    "ADAPTERS",
    "IMAGE_PLACEHOLDER",
    "CausalLMAdapter",
    "InternVLAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "PixtralAdapter",
    "ProcessedImages",
    "ProcessorSettings",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "TINY_FAMILIES",
    "VLMAdapter",
    "adapter_class_for",
    "adapter_for",
    "split_completions",
    "tiny_policy_config",
]
