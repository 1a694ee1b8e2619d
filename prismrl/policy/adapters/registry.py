"""adapter_for(model_or_config, tokenizer) -> the family's VLMAdapter, keyed by ``config.model_type``.

Vision-language families are looked up in ``ADAPTERS``; any text-only causal LM family that
transformers knows (``AutoModelForCausalLM``, no ``vision_config``) gets ``CausalLMAdapter``.
``tiny_policy_config`` builds a tiny random-init config of a family from its adapter's recipe
(``VLMAdapter.tiny_config``): adding a family is one adapter file plus its class in ``ADAPTERS``.
"""

from __future__ import annotations

from typing import Any

from prismrl.backbones.shipped import split_tiny_config
from prismrl.backbones.tokenizers import load_smollm2_tokenizer
from prismrl.policy.adapters.base import VLMAdapter
from prismrl.policy.adapters.causal_lm import CausalLMAdapter
from prismrl.policy.adapters.internvl import InternVLAdapter
from prismrl.policy.adapters.llava import LlavaAdapter
from prismrl.policy.adapters.llava_next import LlavaNextAdapter
from prismrl.policy.adapters.pixtral import PixtralAdapter, is_pixtral
from prismrl.policy.adapters.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from prismrl.policy.adapters.visual_prefix import VisualPrefixAdapter

ADAPTERS: dict[str, type[VLMAdapter]] = {
    model_type: cls
    for cls in (Qwen2VLAdapter, Qwen2_5_VLAdapter, LlavaAdapter, InternVLAdapter, LlavaNextAdapter)
    for model_type in cls.model_types
}
# Pixtral is model_type "llava" with a "pixtral" vision tower: adapter_class_for checks is_pixtral first
TINY_FAMILIES: dict[str, type[VLMAdapter]] = {**ADAPTERS, "pixtral": PixtralAdapter, "llama": CausalLMAdapter}
# prismrl's own models (built from a stage checkpoint, no transformers family and no tiny recipe)
OWN_ADAPTERS: dict[str, type[VLMAdapter]] = {t: cls for cls in (VisualPrefixAdapter,) for t in cls.model_types}


def _config_of(model_or_config: Any):
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(getattr(config, "model_type", None), str):
        raise TypeError(
            "model_or_config: expected a transformers model or config with a model_type, "
            f"received {type(model_or_config).__name__}"
        )
    return config


def _is_text_causal_lm(config) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and getattr(config, "vision_config", None) is None


def adapter_class_for(model_or_config: Any) -> type[VLMAdapter]:
    """The adapter class for a model / config; ValueError listing the supported families otherwise."""
    config = _config_of(model_or_config)
    if is_pixtral(config):
        return PixtralAdapter
    if config.model_type in ADAPTERS or config.model_type in OWN_ADAPTERS:
        return ADAPTERS.get(config.model_type) or OWN_ADAPTERS[config.model_type]
    if _is_text_causal_lm(config):
        return CausalLMAdapter
    raise ValueError(
        f"model_or_config: no adapter for model_type {config.model_type!r}; supported: "
        f"{', '.join(sorted(ADAPTERS))}, pixtral and text-only causal LMs (llama, qwen2, mistral, ...)"
    )


def adapter_for(model_or_config: Any, tokenizer, **adapter_kwargs: Any) -> VLMAdapter:
    """Build the family's adapter for ``tokenizer``; ``adapter_kwargs`` go to its constructor."""
    config = _config_of(model_or_config)
    return adapter_class_for(config)(tokenizer, config, **adapter_kwargs)


def tiny_policy_config(tiny_config: dict[str, Any]):
    """(config, tokenizer) for ``{"model_type": family, **overrides}``, family one of ``TINY_FAMILIES``.

    The tokenizer is the shipped SmolLM2 one with the family's special tokens added; the config is the
    family adapter's ``tiny_config(tokenizer, **overrides)``, whose vocab and special ids match it.
    """
    family, overrides = split_tiny_config(tiny_config, TINY_FAMILIES)
    tokenizer = load_smollm2_tokenizer()
    return TINY_FAMILIES[family].tiny_config(tokenizer, **overrides), tokenizer
