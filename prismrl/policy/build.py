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
from dataclasses import dataclass, replace
from typing import Any, Iterator

from torch import nn

from prismrl.backbones.causal_lm import load_causal_lm
from prismrl.backbones.freezing import freeze
from prismrl.backbones.lora import (
    ALL_LINEAR,
    LoraSettings,
    all_linear_names,
    apply_lora,
    enable_gradient_checkpointing,
)
from prismrl.choices import checkpoint_safe
from prismrl.policy.adapters.registry import tiny_policy_config
from prismrl.policy.visual_prefix_policy import build_visual_prefix_policy

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


@checkpoint_safe
@dataclass(frozen=True)
class PolicySettings:
    """The (vision-)language policy of an RL stage (YAML: ``model.init_args.policy``). Exactly one of
    model_name_or_path, tiny_config and vl_sft_checkpoint names the model.

    Args:
        model_name_or_path: an HF id, a folder or ``shipped:smollm2-135m-instruct``.
        tiny_config: a random-init config of a real transformers class (``{model_type: qwen2_vl, ...}``).
        torch_dtype: "float32", "bfloat16", "float16" or None (the checkpoint's).
        attn_implementation: "sdpa", "eager" or "flash_attention_2" (falls back to sdpa without flash-attn).
        quantization: "8bit" (CPU or GPU) or "4bit" (CUDA only) base weights; needs lora (QLoRA).
        lora: adapters on the language model's linear layers (None = full fine-tuning).
        lora_on_vision: adapt the vision tower too.
        train_vision: without LoRA, train the vision tower as well.
        gradient_checkpointing: recompute activations in backward (non-reentrant).
        vl_sft_checkpoint: a VisionLanguageSFTModule checkpoint: prismrl's own visual-prefix LM
            (``prismrl.policy.visual_prefix_policy``), its SFT LoRA merged; ``lora`` is then the RL LoRA.
        train_visual_prefix: with vl_sft_checkpoint, train the resampler and projector too (the vision encoder
            stays frozen).
    """

    model_name_or_path: str | None = None
    tiny_config: dict[str, Any] | None = None
    torch_dtype: str | None = None
    attn_implementation: str = "sdpa"
    quantization: str | None = None
    lora: LoraSettings | None = None
    lora_on_vision: bool = False
    train_vision: bool = False
    gradient_checkpointing: bool = False
    vl_sft_checkpoint: str | None = None
    train_visual_prefix: bool = False

    def __post_init__(self) -> None:
        sources = {"model_name_or_path": self.model_name_or_path, "tiny_config": self.tiny_config,
                   "vl_sft_checkpoint": self.vl_sft_checkpoint}
        if sum(v is not None for v in sources.values()) != 1:
            raise ValueError("policy: expected exactly one of model_name_or_path, tiny_config or vl_sft_checkpoint, "
                             f"received {', '.join(f'{k}={v!r}' for k, v in sources.items())}")
        if self.vl_sft_checkpoint is not None:
            unsupported = {k: getattr(self, k) for k in ("quantization", "lora_on_vision", "train_vision")
                           if getattr(self, k) not in (None, False)}
            if unsupported:
                raise ValueError(f"policy.vl_sft_checkpoint: {', '.join(unsupported)} not supported with it, received "
                                 f"{unsupported}; use policy.train_visual_prefix to train the resampler and projector")
        elif self.train_visual_prefix:
            raise ValueError("policy.train_visual_prefix: expected only with policy.vl_sft_checkpoint, received "
                             f"train_visual_prefix=True with model_name_or_path={self.model_name_or_path!r}")
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraSettings(**self.lora))
        if self.quantization is not None and self.lora is None:
            raise ValueError(f"policy.quantization: {self.quantization!r} base weights cannot be trained directly; "
                             "set policy.lora (QLoRA)")


def load_policy_model(settings: PolicySettings):
    """(model, tokenizer) as loaded, before LoRA / freezing: pretrained weights, or a random-init model of
    ``tiny_config`` (``prismrl.policy.adapters.tiny_policy_config``: its family's tiny recipe)."""
    kwargs = {"torch_dtype": settings.torch_dtype, "attn_implementation": settings.attn_implementation,
              "quantization": settings.quantization}
    if settings.tiny_config is None:
        return load_causal_lm(settings.model_name_or_path, **kwargs)
    config, tokenizer = tiny_policy_config(settings.tiny_config)
    return load_causal_lm(config=config, tokenizer=tokenizer, **kwargs)


def build_policy(settings: PolicySettings):
    """(policy model, tokenizer); see the module docstring."""
    if settings.vl_sft_checkpoint is not None:
        return build_visual_prefix_policy(settings.vl_sft_checkpoint, settings.lora, settings.train_visual_prefix,
                                          settings.torch_dtype, settings.gradient_checkpointing)
    model, tokenizer = load_policy_model(settings)
    lora = settings.lora
    if settings.quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=settings.gradient_checkpointing)
    elif settings.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if lora is not None:
        if lora.target_modules == ALL_LINEAR:
            lora = replace(lora, target_modules=language_model_linear_names(model, settings.lora_on_vision))
        model = apply_lora(model, lora)
    elif not settings.train_vision:
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
