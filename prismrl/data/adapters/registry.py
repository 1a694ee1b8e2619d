"""adapter_for(model_or_config, tokenizer) -> the family's VLMAdapter, keyed by ``config.model_type``.

Vision-language families are looked up in ``ADAPTERS``; any text-only causal LM family that
transformers knows (``AutoModelForCausalLM``, no ``vision_config``) gets ``CausalLMAdapter``.
"""

from __future__ import annotations

from typing import Any

from prismrl.data.adapters.base import VLMAdapter
from prismrl.data.adapters.causal_lm import CausalLMAdapter
from prismrl.data.adapters.internvl import InternVLAdapter
from prismrl.data.adapters.llava import LlavaAdapter
from prismrl.data.adapters.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter

ADAPTERS: dict[str, type[VLMAdapter]] = {
    model_type: cls
    for cls in (Qwen2VLAdapter, Qwen2_5_VLAdapter, LlavaAdapter, InternVLAdapter)
    for model_type in cls.model_types
}


def _config_of(model_or_config: Any):
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(getattr(config, "model_type", None), str):
        raise TypeError(
            "model_or_config: expected a transformers model or config with a model_type, "
            f"got {type(model_or_config).__name__}"
        )
    return config


def _is_text_causal_lm(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and getattr(config, "vision_config", None) is None


def adapter_class_for(model_or_config: Any) -> type[VLMAdapter]:
    """The adapter class for a model / config; ValueError listing the supported families otherwise."""
    config = _config_of(model_or_config)
    if config.model_type in ADAPTERS:
        return ADAPTERS[config.model_type]
    if _is_text_causal_lm(config):
        return CausalLMAdapter
    raise ValueError(
        f"model_or_config: no adapter for model_type {config.model_type!r}; supported: "
        f"{', '.join(sorted(ADAPTERS))} and text-only causal LMs (llama, qwen2, mistral, ...)"
    )


def adapter_for(model_or_config: Any, tokenizer, **adapter_kwargs: Any) -> VLMAdapter:
    """Build the family's adapter for ``tokenizer``; ``adapter_kwargs`` go to its constructor."""
    config = _config_of(model_or_config)
    return adapter_class_for(config)(tokenizer, config, **adapter_kwargs)
