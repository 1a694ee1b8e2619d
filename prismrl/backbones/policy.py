"""An RL policy: a (vision-)language model with LoRA or full fine-tuning, and its reference model.

- LoRA ``target_modules="all-linear"`` adapts every linear layer of the language model; the vision
  tower and the multimodal projector are left out unless ``lora_on_vision=True``.
- Without LoRA the whole language model trains; the vision tower stays frozen unless ``train_vision``.
- 4-bit / 8-bit base weights (bitsandbytes, GPU) are prepared with peft's k-bit recipe (QLoRA).
- The reference model for the KL term: the same weights with the adapters switched off when LoRA is
  on (no second copy), else a frozen copy made on request.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator

from torch import nn

from prismrl.backbones.causal_lm import load_causal_lm
from prismrl.backbones.freezing import freeze
from prismrl.backbones.lora import ALL_LINEAR, LoraSettings, all_linear_names, apply_lora, enable_gradient_checkpointing

# Path components that name a VLM's vision side (Qwen2-VL "visual", LLaVA "vision_tower" +
# "multi_modal_projector", InternVL "vision_tower" + "multi_modal_projector", SigLIP/CLIP "vision_model").
VISION_MODULE_NAMES = frozenset({"visual", "vision_tower", "vision_model", "multi_modal_projector", "vision_embed_tokens"})


def is_vision_module(name: str) -> bool:
    """Whether the dotted module ``name`` lies inside a vision tower or projector."""
    return any(part in VISION_MODULE_NAMES for part in name.split("."))


def language_model_linear_names(model: nn.Module, include_vision: bool = False) -> list[str]:
    """Full names of the linear layers LoRA "all-linear" adapts: the language model's (+ vision's if asked)."""
    names = [n for n in all_linear_names(model) if include_vision or not is_vision_module(n)]
    if not names:
        raise ValueError(f"lora.target_modules: {type(model).__name__} has no language-model linear layer to adapt")
    return names


def build_policy(
    model_name_or_path: str | None = None,
    tiny_config: dict[str, Any] | None = None,
    *,
    torch_dtype: str | None = None,
    attn_implementation: str = "sdpa",
    quantization: str | None = None,
    lora: LoraSettings | dict | None = None,
    lora_on_vision: bool = False,
    train_vision: bool = False,
    gradient_checkpointing: bool = False,
):
    """(policy model, tokenizer); see the module docstring."""
    if isinstance(lora, dict):
        lora = LoraSettings(**lora)
    if quantization is not None and lora is None:
        raise ValueError(f"quantization: {quantization!r} base weights cannot be trained directly; set lora (QLoRA)")
    model, tokenizer = load_causal_lm(
        model_name_or_path, tiny_config, torch_dtype=torch_dtype,
        attn_implementation=attn_implementation, quantization=quantization,
    )
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if lora is not None:
        if lora.target_modules == ALL_LINEAR:
            lora = replace(lora, target_modules=language_model_linear_names(model, lora_on_vision))
        model = apply_lora(model, lora)
    elif not train_vision:
        for name, module in model.named_modules():
            if name and is_vision_module(name) and not is_vision_module(name.rsplit(".", 1)[0]):
                freeze(module)
    return model, tokenizer


def uses_adapters(model: nn.Module) -> bool:
    """True for a peft model whose adapters can be switched off to recover the base model."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with no trainable parameter (the reference of a fully fine-tuned policy)."""
    reference = copy.deepcopy(model)
    freeze(reference)
    return reference.eval()


@contextmanager
def reference_of(policy: nn.Module, reference: nn.Module | None) -> Iterator[nn.Module]:
    """Yield the reference model: ``policy`` with adapters disabled, or the separate frozen ``reference``."""
    if reference is not None:
        yield reference
    elif uses_adapters(policy):
        with policy.disable_adapter():
            yield policy
    else:
        raise ValueError("reference: the policy has no LoRA adapters and no frozen reference copy was made")
