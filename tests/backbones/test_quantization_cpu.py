"""bitsandbytes base weights on CPU: 8-bit ``Linear8bitLt`` loads and trains LoRA, 4-bit is refused early, and the
converted SmolLM2 folder carries no GGUF ``quantization_config`` (which makes bitsandbytes refuse the model)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from prismrl.backbones.causal_lm import (
    SMOLLM2_ALIAS,
    load_causal_lm,
    smollm2_cache_path,
    smollm2_folder,
)
from prismrl.cache import MANIFEST, cache_damage, cache_dir, record_contents

bnb = pytest.importorskip("bitsandbytes")
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")


def int8_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear8bitLt)}


@pytest.fixture(scope="module")
def smollm2_8bit():
    return load_causal_lm(SMOLLM2_ALIAS, quantization="8bit", torch_dtype="float32")


def test_8bit_base_weights_are_linear8bitlt_on_cpu_and_answer_like_float32(smollm2_8bit):
    model, tokenizer = smollm2_8bit
    layers = int8_layers(model)
    assert len(layers) == 30 * 7  # q, k, v, o, gate, up, down in each of the 30 decoder layers
    assert all(m.weight.dtype == torch.int8 and m.weight.device.type == "cpu" for m in layers.values())
    assert not isinstance(model.lm_head, bnb.nn.Linear8bitLt)  # the (tied) output head stays float32
    int8_bytes = sum(m.weight.numel() for m in layers.values())
    assert int8_bytes == pytest.approx(106.2e6, rel=0.01)  # one byte per weight, a quarter of float32
    full, _ = load_causal_lm(SMOLLM2_ALIAS, torch_dtype="float32")
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        quantized, reference = model(**ids).logits[0, -1], full(**ids).logits[0, -1]
    assert torch.isfinite(quantized).all()
    assert quantized.argmax() == reference.argmax()
    assert torch.corrcoef(torch.stack([quantized, reference]))[0, 1] > 0.98


@cpu_only
def test_4bit_on_cpu_is_refused_before_any_conversion_or_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISMRL_CACHE", str(tmp_path))  # an empty cache: converting would write a folder here
    with pytest.raises(ValueError, match=r"quantization: expected '8bit' or None .* received '4bit'.*CUDA GPU"):
        load_causal_lm(SMOLLM2_ALIAS, quantization="4bit")
    assert list(tmp_path.iterdir()) == []


def test_converted_folder_has_no_gguf_quantization_config():
    config = json.loads((smollm2_folder() / "config.json").read_text())
    assert "quantization_config" not in config
    import transformers

    from prismrl.backbones.tokenizers import SMOLLM2_GGUF, shipped_smollm2_folder

    # The key of folders converted before the GGUF key was dropped differs: such a folder is never picked up.
    gguf_bytes = os.path.getsize(os.path.join(shipped_smollm2_folder(), SMOLLM2_GGUF))
    old = cache_dir("models", source="smollm2-gguf", gguf_bytes=gguf_bytes, transformers=transformers.__version__)
    assert old != smollm2_cache_path()


def test_a_cached_folder_that_kept_the_gguf_key_is_repaired_in_place(tmp_path, monkeypatch):
    real = smollm2_folder()
    monkeypatch.setenv("PRISMRL_CACHE", str(tmp_path))
    folder = smollm2_cache_path()
    assert str(folder).startswith(str(tmp_path))
    folder.mkdir(parents=True)
    for item in real.iterdir():
        if item.name not in ("config.json", ".contents.json"):
            (folder / item.name).symlink_to(item)  # the 517 MB of weights are shared, not copied
    config = json.loads((real / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gguf"}  # what a GGUF-loaded model's save_pretrained writes
    (folder / "config.json").write_text(json.dumps(config))
    record_contents(folder)
    assert (folder / MANIFEST).is_symlink() and cache_damage(folder) is None

    assert smollm2_folder() == folder
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert (folder / "model.safetensors").is_symlink()  # repaired, not rebuilt
    assert cache_damage(folder) is None  # the inventory matches the repaired config
    from transformers import AutoConfig

    assert getattr(AutoConfig.from_pretrained(folder), "quantization_config", None) is None  # what bitsandbytes reads


def test_prefix_lm_8bit_needs_lora_or_freeze():
    from prismrl.backbones.prefix_lm import PrefixLMDecoder

    with pytest.raises(ValueError, match=r"quantization: '8bit' base weights cannot be trained directly.*received lora=None"):
        PrefixLMDecoder(SMOLLM2_ALIAS, quantization="8bit")


@pytest.mark.slow
def test_prefix_lm_8bit_lora_is_prepared_for_kbit_training_and_trains():
    from prismrl.backbones.prefix_lm import PrefixLMDecoder

    torch.manual_seed(0)
    decoder = PrefixLMDecoder(SMOLLM2_ALIAS, quantization="8bit", torch_dtype="bfloat16", lora={"r": 4, "alpha": 8},
                              max_length=16)
    lm = decoder._causal_lm()
    assert len(int8_layers(lm)) == 210
    # peft's k-bit recipe: the bfloat16 norms, embeddings and head are float32 now, and only LoRA trains.
    assert {p.dtype for p in lm.parameters()} == {torch.int8, torch.float32}
    assert all(("lora_" in n) == p.requires_grad for n, p in decoder.model.named_parameters())
    prefix = torch.randn(2, 3, decoder.hidden_size, requires_grad=True)
    out = decoder(prefix, ["What digit is this?", "How many?"], ["7", "3"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    lora_b = [p.grad for n, p in decoder.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None and torch.isfinite(g).all() for g in lora_b) and any(g.abs().sum() > 0 for g in lora_b)
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0  # the resampler / projector below get a gradient
    assert all(p.grad is None for n, p in decoder.model.named_parameters() if "lora_" not in n)
