import pytest
import torch

from prismrl.backbones.lora import LoraSettings
from prismrl.policy.build import (
    PolicySettings,
    build_policy,
    is_vision_module,
    language_model_linear_names,
    reference_of,
)


@pytest.fixture(scope="module")
def lora_policy():
    torch.manual_seed(0)
    return build_policy(PolicySettings(tiny_config={"model_type": "qwen2_vl"}, lora=LoraSettings(r=4, alpha=8)))


def test_vision_modules_are_recognised():
    assert is_vision_module("model.visual.blocks.0.attn.qkv")
    assert is_vision_module("model.multi_modal_projector.linear_1")
    assert not is_vision_module("model.language_model.layers.0.self_attn.q_proj")


def test_all_linear_lora_targets_only_the_language_model(lora_policy):
    model, _ = lora_policy
    lora_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora_names and all("lora_" in n for n in lora_names)
    assert not any(is_vision_module(n) for n in lora_names)
    assert any("language_model" in n and "q_proj" in n for n in lora_names)
    base = model.get_base_model()
    with_vision = language_model_linear_names(base, include_vision=True)
    assert any(is_vision_module(n) for n in with_vision)


def test_disabled_adapters_reproduce_the_base_model(lora_policy):
    model, tokenizer = lora_policy
    ids = torch.tensor([tokenizer("The answer is 7.")["input_ids"]])
    model.eval()
    with torch.no_grad():
        base_logits = model(input_ids=ids).logits.clone()  # B = 0 at init: policy == base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        adapted = model(input_ids=ids).logits
        with reference_of(model, None) as reference:
            ref_logits = reference(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert (adapted - base_logits).abs().max() > 1e-3  # the adapters change the policy
    torch.testing.assert_close(ref_logits, base_logits, rtol=0, atol=1e-6)  # reference = base weights
    torch.testing.assert_close(after, adapted)  # adapters switched back on afterwards


def test_full_finetuning_freezes_the_vision_tower_only():
    model, _ = build_policy(PolicySettings(tiny_config={"model_type": "qwen2_vl"}))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(is_vision_module(n) for n in trainable)
    assert any(is_vision_module(n) for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="no LoRA adapters"):
        with reference_of(model, None):
            pass


def test_quantization_needs_lora():
    with pytest.raises(ValueError, match="quantization"):
        build_policy(PolicySettings(tiny_config={"model_type": "llama"}, quantization="8bit"))


def test_gradient_checkpointing_keeps_gradients_flowing():
    model, tokenizer = build_policy(PolicySettings(tiny_config={"model_type": "llama"}, lora={"r": 2}, gradient_checkpointing=True))
    model.train()
    ids = torch.tensor([tokenizer("a b c d")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # lora_A's gradient is 0 while B = 0
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
