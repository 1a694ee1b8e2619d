"""LoRA adapters through peft: `W x + (alpha / r) B A x`, with B zero-initialised.

Afterwards only the LoRA matrices (plus `modules_to_save`, and biases if `bias` asks for them) are
trainable; the returned `PeftModel` exports adapters with `save_pretrained(folder)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from prismrl.choices import check_positive_int, checkpoint_safe

ALL_LINEAR = "all-linear"
# Leaf names of output heads that "all-linear" leaves alone.
OUTPUT_HEAD_NAMES = frozenset({"lm_head", "classifier", "score", "qa_outputs", "decoder", "fc", "_fc"})
BIAS_MODES = ("none", "all", "lora_only")


@checkpoint_safe
@dataclass
class LoraSettings:
    """LoRA hyper-parameters: W x + (alpha / r) B A x with A [r, in], B [out, r], B zero at the start.

    Args:
        r: the adapters' rank.
        alpha: the scale numerator (the update is scaled by alpha / r).
        dropout: dropout on the adapters' input, in [0, 1).
        target_modules: "all-linear" (every nn.Linear except output heads and the projections that
            nn.MultiheadAttention uses internally), a regex matched against full module names, or a list of
            module-name suffixes.
        bias: which biases train: "none", "all" or "lora_only".
        modules_to_save: modules trained in full and saved beside the adapters.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = ALL_LINEAR
    bias: str = "none"
    modules_to_save: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        check_positive_int("lora.r", self.r)
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha: expected a positive number, received {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout: expected a float in [0, 1), received {self.dropout!r}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"lora.bias: expected one of {BIAS_MODES}, received {self.bias!r}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("lora.target_modules: expected 'all-linear', a regex or a non-empty list, received []")


def all_linear_names(model: nn.Module) -> list[str]:
    """Full names of the nn.Linear leaves LoRA should wrap (output heads and MHA internals excluded)."""
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inside_mha = {
        id(child)
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention)
        for child in module.children()
    }
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and id(module) not in inside_mha
        and module is not output_embeddings
        and name.split(".")[-1] not in OUTPUT_HEAD_NAMES
    ]
    if not names:
        raise ValueError(f"lora.target_modules='all-linear': {type(model).__name__} has no nn.Linear layer to adapt")
    return names


def apply_lora(model: nn.Module, settings: LoraSettings):
    """Wrap `model` in a peft `PeftModel` with LoRA adapters; base weights become frozen."""
    from peft import LoraConfig, get_peft_model

    if not isinstance(settings, LoraSettings):
        raise TypeError(f"settings: expected LoraSettings, received {type(settings).__name__}")
    targets = settings.target_modules
    if targets == ALL_LINEAR:
        targets = all_linear_names(model)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias=settings.bias,
        modules_to_save=settings.modules_to_save,
    )
    return get_peft_model(model, config)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing of a transformers model (works with frozen inputs and LoRA)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_hf_backbone(
    model: nn.Module, *, lora: LoraSettings | dict | None, freeze: bool, gradient_checkpointing: bool
) -> nn.Module:
    """Shared encoder set-up: gradient checkpointing, then LoRA or freezing.

    freeze=True with LoRA is refused: LoRA already freezes the base weights, and freezing the
    adapters too would leave nothing to train. ``from_pretrained`` returns models in eval mode and
    Lightning keeps each submodule's mode, so a trainable encoder is put in train mode here (dropout on)
    and a frozen one in eval mode (deterministic features).
    """
    from prismrl.backbones.freezing import freeze as freeze_module

    if isinstance(lora, dict):
        lora = LoraSettings(**lora)
    if lora is not None and freeze:
        raise ValueError(
            "freeze / lora: freeze=True with lora set leaves nothing to train; LoRA already freezes the base"
        )
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if lora is not None:
        return apply_lora(model, lora).train()
    if freeze:
        freeze_module(model)
    return model.train(not freeze)
