"""Masked-LM models for domain-adaptive pre-training (DAP): building, domain tokens, exported encoders.

- ``load_domain_tokenizer``: a tokenizer with the domain tokens appended as new special tokens;
- ``build_masked_lm``: an ``AutoModelForMaskedLM`` from a name/path or a tiny config;
- ``init_domain_embeddings``: domain rows start at the mean of the existing rows;
- ``MLM_HEADS``: the head that maps hidden [N, H] -> logits [N, V] on selected positions only;
- ``load_dap_encoder_into``: copy an exported DAP encoder into a text encoder of another stage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prismrl.backbones.shipped import (
    check_exactly_one,
    pretrained_kwargs,
    resolve_model_path,
    tiny_hf_config,
)
from prismrl.backbones.text import HFTextEncoder

log = logging.getLogger(__name__)

# hidden [N, H] -> logits [N, V] for families whose head can run on selected positions only; any other
# AutoModelForMaskedLM family computes logits at every position and then selects.
MLM_HEADS: dict[str, Callable[[nn.Module], Callable[[Tensor], Tensor]]] = {
    "bert": lambda model: model.cls,  # BERT, MiniLM
    "roberta": lambda model: model.lm_head,
    "xlm-roberta": lambda model: model.lm_head,
    "modernbert": lambda model: (lambda hidden: model.decoder(model.head(hidden))),
}


def build_masked_lm(model_name_or_path: str | None, tiny_config: dict | None, tokenizer: Any, attn_implementation: str = "sdpa"):
    """An ``AutoModelForMaskedLM`` from a name/path (pretrained) or a tiny config (random init).

    A tiny config takes ``vocab_size = len(tokenizer)`` and the tokenizer's pad/cls/sep (bos/eos) ids unless it
    sets them.
    """
    from transformers import MODEL_FOR_MASKED_LM_MAPPING, AutoConfig

    check_exactly_one(model_name_or_path, tiny_config)
    if tiny_config is not None:
        config = tiny_hf_config(tiny_config)
        config.vocab_size = tiny_config.get("vocab_size", len(tokenizer))
        special = {"pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id,
                   "sep_token_id": tokenizer.sep_token_id, "bos_token_id": tokenizer.bos_token_id or tokenizer.cls_token_id,
                   "eos_token_id": tokenizer.eos_token_id or tokenizer.sep_token_id}
        for key, value in special.items():
            if key not in tiny_config and (key == "pad_token_id" or hasattr(config, key)):
                setattr(config, key, value)
    else:
        path = resolve_model_path(model_name_or_path)
        config = AutoConfig.from_pretrained(path, **pretrained_kwargs(path))
    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
        raise ValueError(f"model_type: transformers has no masked-LM model for {config.model_type!r}")
    model_cls = MODEL_FOR_MASKED_LM_MAPPING[type(config)]
    if attn_implementation == "sdpa" and not getattr(model_cls, "_supports_sdpa", False):
        attn_implementation = "eager"
    if tiny_config is not None:
        return model_cls._from_config(config, attn_implementation=attn_implementation)
    model, info = model_cls.from_pretrained(
        path, attn_implementation=attn_implementation, output_loading_info=True, **pretrained_kwargs(path)
    )
    model.train()  # from_pretrained returns eval mode; Lightning keeps per-module modes, so dropout would stay off
    missing = sorted(info.get("missing_keys", []))
    if missing:
        log.warning("MaskedLMModule: %s has no weights for %s; they are newly initialized (e.g. a missing MLM head)",
                    model_name_or_path, ", ".join(missing))
    return model


def init_domain_embeddings(model: nn.Module, tokenizer: Any, domain_tokens: list[str]) -> list[int]:
    """Grow the embeddings to ``len(tokenizer)`` rows if needed; domain rows := mean of the base rows.

    The domain tokens are the last ``k`` ids of the tokenizer; base rows are ids ``< len(tokenizer) - k``.
    Returns the domain token ids.
    """
    size = len(tokenizer)
    if model.get_input_embeddings().num_embeddings < size:
        model.resize_token_embeddings(size, mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(domain_tokens)
    base = size - len(domain_tokens)
    if ids != list(range(base, size)):
        raise ValueError(f"domain_tokens: expected ids {list(range(base, size))} at the end of the vocabulary, received {ids}")
    if not ids:
        return ids
    output = model.get_output_embeddings()
    with torch.no_grad():
        matrices = [model.get_input_embeddings().weight]
        if output is not None and output.weight is not matrices[0]:
            matrices.append(output.weight)
        for weight in matrices:
            weight[ids] = weight[:base].mean(dim=0)  # [k, H] <- [H]
        bias = getattr(output, "bias", None) if output is not None else None
        if isinstance(bias, Tensor) and bias.shape[0] >= size:
            bias[ids] = bias[:base].mean()
    return ids


def validate_domain_tokens(domain_tokens: Sequence[str] | None) -> list[str]:
    """A list of distinct, non-empty, whitespace-free strings (else ValueError/TypeError)."""
    if domain_tokens is None:
        return []
    if isinstance(domain_tokens, str) or not all(isinstance(t, str) for t in domain_tokens):
        raise TypeError(f"domain_tokens: expected a list of str, received {domain_tokens!r}")
    tokens = list(domain_tokens)
    for token in tokens:
        if not token or token != "".join(token.split()):
            raise ValueError(f"domain_tokens: expected non-empty tokens without whitespace, received {token!r}")
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"domain_tokens: expected distinct tokens, received {tokens}")
    return tokens


def load_domain_tokenizer(tokenizer_name_or_path: str, domain_tokens: Sequence[str] = ()):
    """A transformers tokenizer with ``domain_tokens`` appended as additional special tokens.

    New tokens get ids ``len(base) .. len(base) + k - 1`` in the given order, are never split, lower-cased
    or masked. A token already in the vocabulary (a word piece, a special token, or a domain token the
    saved tokenizer already carries) raises a ValueError that names it.
    """
    from transformers import AutoTokenizer

    tokens = validate_domain_tokens(domain_tokens)
    path = resolve_model_path(tokenizer_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, **pretrained_kwargs(path))
    vocab = tokenizer.get_vocab()
    for token in tokens:
        if token in vocab:
            raise ValueError(
                f"domain_tokens: {token!r} already exists in the vocabulary of tokenizer {tokenizer_name_or_path!r} "
                f"(id {vocab[token]}); expected new tokens (drop it from domain_tokens if that tokenizer was saved with it)"
            )
    if tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    return tokenizer


def load_dap_encoder_into(text_encoder: HFTextEncoder, folder: str | os.PathLike) -> HFTextEncoder:
    """Copy an exported DAP encoder's weights and tokenizer into ``text_encoder`` (in place; returned).

    Raises ValueError when the model type, vocabulary size (embedding rows) or hidden width differ,
    naming both values; TypeError when ``text_encoder`` carries LoRA adapters (build it with
    ``HFTextEncoder(model_name_or_path=folder, lora=...)`` instead).
    """
    from transformers import AutoConfig

    if not isinstance(text_encoder, HFTextEncoder):
        raise TypeError(f"text_encoder: expected an HFTextEncoder, received {type(text_encoder).__name__}")
    if hasattr(text_encoder.model, "peft_config"):
        raise TypeError("text_encoder: carries LoRA adapters; build it with HFTextEncoder(model_name_or_path=folder, lora=...)")
    folder = str(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    target = text_encoder.model
    rows = target.get_input_embeddings().num_embeddings
    checks = [("model_type", config.model_type, target.config.model_type), ("vocab_size", config.vocab_size, rows),
              ("hidden_size", config.hidden_size, text_encoder.hidden_size)]
    for field, exported, current in checks:
        if exported != current:
            raise ValueError(f"{field}: the DAP encoder in {folder} has {exported!r}, the text encoder has {current!r}")
    source = HFTextEncoder(model_name_or_path=folder, max_length=text_encoder.max_length)
    target.load_state_dict(source.model.state_dict(), strict=True)
    text_encoder.tokenizer = source.tokenizer
    return text_encoder
