import pytest
import torch
from peft import PeftModel

from prismrl.backbones import (
    HFTextEncoder,
    HFVisionEncoder,
    LoraSettings,
    count_parameters,
)
from prismrl.backbones.lora import all_linear_names

from .conftest import tiny_text_config, tiny_vision_config

TEXTS = ["a dog", "a puppy runs across the park"]


def only_lora_trainable(module) -> bool:
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    return bool(names) and all("lora_" in n for n in names)


def test_minilm_lora_starts_equal_to_base_and_saves(minilm, tmp_path):
    enc = HFTextEncoder("shipped:all-minilm-l6-v2", lora=LoraSettings(r=4)).eval()
    assert isinstance(enc.model, PeftModel)
    assert only_lora_trainable(enc)
    # r=4 on q, k, v, attention-output and both FFN linears of 6 layers: r * (in + out) each
    per_layer = 4 * (4 * (384 + 384) + (384 + 1536) + (1536 + 384))
    assert count_parameters(enc, trainable_only=True) == 6 * per_layer
    with torch.no_grad():
        torch.testing.assert_close(enc.encode(TEXTS).pooled, minilm.encode(TEXTS).pooled)
    enc.save_pretrained(str(tmp_path))
    files = {p.name for p in tmp_path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "model.safetensors" not in files  # only the adapters, not the base weights


def tiny_clip(**kwargs) -> HFVisionEncoder:
    torch.manual_seed(0)
    return HFVisionEncoder(tiny_config=tiny_vision_config("clip_vision_model"), **kwargs)


def test_clip_vision_lora_trains_and_round_trips(tmp_path):
    base, enc = tiny_clip().eval(), tiny_clip(lora=LoraSettings(r=2)).eval()
    assert only_lora_trainable(enc)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x).pooled, base(x).pooled)
    frozen_before = {n: p.clone() for n, p in enc.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.5)
    enc.train()
    enc(x).pooled.pow(2).sum().backward()
    opt.step()
    enc.eval()
    with torch.no_grad():
        tuned = enc(x).pooled
    assert not torch.allclose(tuned, base(x).pooled)  # adapters are in the forward path
    for n, p in enc.named_parameters():
        if n in frozen_before:
            torch.testing.assert_close(p, frozen_before[n], msg=n)
    enc.model.save_pretrained(str(tmp_path))
    reloaded = PeftModel.from_pretrained(tiny_clip().model, str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).pooler_output, tuned)


def test_all_linear_skips_multihead_attention_internals():
    enc = HFVisionEncoder(tiny_config=tiny_vision_config("siglip_vision_model"))
    names = all_linear_names(enc.model)
    assert "head.attention.out_proj" not in names
    assert {"head.mlp.fc1", "encoder.layers.0.self_attn.q_proj"} <= set(names)
    lora = HFVisionEncoder(tiny_config=tiny_vision_config("siglip_vision_model"), lora=LoraSettings())
    lora(torch.randn(1, 3, 32, 32)).pooled.sum().backward()


def test_explicit_targets_and_modules_to_save():
    settings = {"r": 2, "target_modules": ["query", "value"], "modules_to_save": ["embeddings"]}
    enc = HFTextEncoder(tiny_config=tiny_text_config("bert"), lora=settings)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert any("query.lora_A" in n for n in trainable) and not any("key.lora_A" in n for n in trainable)
    assert any("embeddings" in n and "word_embeddings" in n for n in trainable)


def test_lora_settings_errors():
    with pytest.raises(ValueError, match="lora.r"):
        LoraSettings(r=0)
    with pytest.raises(ValueError, match="lora.bias"):
        LoraSettings(bias="some")
    with pytest.raises(ValueError, match="lora.target_modules"):
        LoraSettings(target_modules=[])
    with pytest.raises(ValueError, match="freeze"):
        HFTextEncoder(tiny_config=tiny_text_config("bert"), lora=LoraSettings(), freeze=True)


def test_freeze_without_lora():
    enc = HFTextEncoder(tiny_config=tiny_text_config("bert"), freeze=True)
    assert count_parameters(enc, trainable_only=True) == 0 and count_parameters(enc) > 0
