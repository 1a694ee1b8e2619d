"""Text encoder over any transformers encoder (BERT/MiniLM, RoBERTa, ModernBERT, ...)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum
from typing import Any

from torch import Tensor, nn

from prismrl.backbones.causal_lm import check_quantization, quantization_config
from prismrl.backbones.lora import LoraSettings, prepare_hf_backbone
from prismrl.backbones.pooling import EncoderOutput, masked_mean
from prismrl.backbones.shipped import (
    build_hf_model,
    check_exactly_one,
    pretrained_kwargs,
    resolve_model_path,
)
from prismrl.choices import check_positive_int

DEFAULT_TINY_TOKENIZER = "shipped:all-minilm-l6-v2"


class TextPooling(str, Enum):
    """How token features become one vector per text."""

    CLS = "cls"  # first token's feature
    MEAN = "mean"  # masked mean over real tokens


def _cls_pool(tokens: Tensor, mask: Tensor | None) -> Tensor:
    return tokens[:, 0]  # [B, H]


TEXT_POOLERS: dict[TextPooling, Callable[[Tensor, Tensor | None], Tensor]] = {
    TextPooling.CLS: _cls_pool,
    TextPooling.MEAN: masked_mean,
}


def parse_pooling(pooling: str) -> TextPooling:
    """Turn a config string into a TextPooling, with a clear error."""
    try:
        return TextPooling(pooling)
    except ValueError:
        choices = [p.value for p in TextPooling]
        raise ValueError(f"pooling: expected one of {choices}, received {pooling!r}") from None


def base_model_class(config: Any) -> type:
    """The transformers base-model class (no task head) for `config`."""
    from transformers import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)]
    except KeyError:
        raise ValueError(f"model_type: transformers has no base model for {config.model_type!r}") from None


def _without_pooler(model_cls: type) -> dict[str, Any]:
    """BERT-style models carry a pooler we never use; dropping it keeps every parameter in the graph."""
    takes_flag = "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters
    return {"add_pooling_layer": False} if takes_flag else {}


def _check_quantized_setup(quantization: str | None, tiny_config: dict | None, lora: Any) -> None:
    """Refuse an unknown value, "4bit" without CUDA, quantized random-init weights and a quantized base without LoRA."""
    check_quantization(quantization)
    if quantization is None:
        return
    if tiny_config is not None:
        raise ValueError(f"quantization: expected None with tiny_config (random-init weights are not quantized; "
                         f"transformers quantizes pretrained weights while loading them), received {quantization!r}; "
                         "give model_name_or_path instead")
    if lora is None:
        raise ValueError(f"quantization: {quantization!r} base weights cannot be trained; expected lora (QLoRA: "
                         "adapters over the frozen quantized base), received lora=None")


class HFTextEncoder(nn.Module):
    """Encode texts with a transformers encoder.

    tokens = last_hidden_state `[B, T, H]`, mask = attention_mask `[B, T]` (True = real token),
    pooled `[B, H]` by `pooling` ("mean": masked mean over real tokens, "cls": first token).
    Build from exactly one of `model_name_or_path` (HF id, folder or "shipped:<alias>") or
    `tiny_config` (random init; the tokenizer defaults to the shipped MiniLM one, and the config's
    pad_token_id to the tokenizer's unless given).
    `quantization` ("8bit" | "4bit" | None) loads the pretrained base weights through bitsandbytes (QLoRA):
    "8bit" (`Linear8bitLt`) runs on CPU and GPU, "4bit" (NF4) needs CUDA. It needs `lora` (the int8/NF4 base
    stays frozen; only the adapters train) and `model_name_or_path` (a random-init tiny_config has no
    pretrained weights to quantize; transformers quantizes while loading them).
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        tiny_config: dict | None = None,
        tokenizer_name_or_path: str | None = None,
        pooling: str = "mean",
        max_length: int = 64,
        lora: LoraSettings | None = None,
        freeze: bool = False,
        gradient_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
        quantization: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        check_exactly_one(model_name_or_path, tiny_config)
        _check_quantized_setup(quantization, tiny_config, lora)
        self.quantization = quantization
        self.pooling = parse_pooling(pooling)
        check_positive_int("max_length", max_length, minimum=2)
        self.max_length = max_length
        if tokenizer_name_or_path is None:
            tokenizer_name_or_path = model_name_or_path or DEFAULT_TINY_TOKENIZER
        tokenizer_path = resolve_model_path(tokenizer_name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, **pretrained_kwargs(tokenizer_path))
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer_name_or_path: tokenizer {tokenizer_name_or_path!r} has no pad token")

        bnb_config = quantization_config(quantization, None)
        quantized = {} if bnb_config is None else {"quantization_config": bnb_config}

        def match_tokenizer(config: Any) -> None:
            if "pad_token_id" not in tiny_config:
                config.pad_token_id = self.tokenizer.pad_token_id

        model = build_hf_model(
            model_name_or_path,
            tiny_config,
            attn_implementation,
            model_class_for=base_model_class,
            config_hook=match_tokenizer,
            model_kwargs_for=lambda model_cls: {**_without_pooler(model_cls), **quantized},
        )
        if quantization is not None:
            from peft import prepare_model_for_kbit_training

            # Freezes the base and upcasts half-precision norms; gradient checkpointing stays the project's own (below).
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        self._check_sizes(model.config, tokenizer_name_or_path, tiny_config is not None)
        self.hidden_size: int = int(model.config.hidden_size)
        self.model = prepare_hf_backbone(
            model, lora=lora, freeze=freeze, gradient_checkpointing=gradient_checkpointing
        )

    def _check_sizes(self, config: Any, tokenizer_name: str, tiny: bool) -> None:
        vocab_field = "tiny_config.vocab_size" if tiny else "vocab_size"
        if config.vocab_size < len(self.tokenizer):
            raise ValueError(
                f"{vocab_field}: expected >= {len(self.tokenizer)} (tokens in tokenizer {tokenizer_name!r}), "
                f"received {config.vocab_size}"
            )
        max_positions = getattr(config, "max_position_embeddings", None)
        if max_positions is not None and self.max_length > max_positions:
            raise ValueError(f"max_length: expected <= max_position_embeddings={max_positions}, received {self.max_length}")

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """Pad and truncate to max_length; returns input_ids and attention_mask `[B, T]`."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts: expected a list of str, received {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError("texts: expected at least one text, received an empty list")
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> EncoderOutput:
        """`[B, T]` ids (+ mask, 1 = real) -> tokens `[B, T, H]`, mask `[B, T]`, pooled `[B, H]`."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape [B, T], received {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = input_ids.new_ones(input_ids.shape)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        tokens = out.last_hidden_state  # [B, T, H]
        mask = attention_mask.bool()  # [B, T]
        return EncoderOutput(tokens=tokens, mask=mask, pooled=TEXT_POOLERS[self.pooling](tokens, mask))

    def encode(self, texts: list[str]) -> EncoderOutput:
        """Tokenize, move to this module's device, forward."""
        device = next(self.parameters()).device
        batch = {k: v.to(device) for k, v in self.tokenize(texts).items()}
        return self(**batch)

    def save_pretrained(self, folder: str) -> None:
        """Write the model (or only its LoRA adapters) and the tokenizer to `folder`."""
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
