"""Per-family batch builders for (vision-)language policies: prompts + images -> MultimodalBatch."""

from prismrl.data.adapters.base import IMAGE_PLACEHOLDER, ProcessedImages, VLMAdapter, split_completions
from prismrl.data.adapters.causal_lm import CausalLMAdapter
from prismrl.data.adapters.internvl import InternVLAdapter
from prismrl.data.adapters.llava import LlavaAdapter
from prismrl.data.adapters.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from prismrl.data.adapters.registry import ADAPTERS, adapter_class_for, adapter_for

__all__ = [
    "ADAPTERS",
    "IMAGE_PLACEHOLDER",
    "CausalLMAdapter",
    "InternVLAdapter",
    "LlavaAdapter",
    "ProcessedImages",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "VLMAdapter",
    "adapter_class_for",
    "adapter_for",
    "split_completions",
]
