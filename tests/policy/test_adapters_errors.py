"""Adapter bad inputs and the model_type registry."""

import pytest
import torch
import transformers as tf

from prismrl.backbones.tokenizers import load_smollm2_tokenizer
from prismrl.policy.adapters import (
    ADAPTERS,
    CausalLMAdapter,
    InternVLAdapter,
    LlavaAdapter,
    Qwen2_5_VLAdapter,
    Qwen2VLAdapter,
    adapter_class_for,
    adapter_for,
    tiny_policy_config,
)


@pytest.fixture(scope="module")
def qwen():
    config, tokenizer = tiny_policy_config({"model_type": "qwen2_vl"})
    return tokenizer, config, adapter_for(config, tokenizer, min_pixels=28 * 28, max_pixels=56 * 56)


def image():
    return torch.rand(3, 28, 28)


@pytest.mark.parametrize(
    "prompts, images, message",
    [
        (["<image> and <image>"], [[image()]], r"prompts\[0\]: found 2 '<image>' placeholder\(s\) but images\[0\] has 1 image"),
        (["no placeholder"], [[image()]], r"prompts\[0\]: found 0 '<image>' placeholder\(s\) but images\[0\] has 1 image"),
        (["ok <image>", "<image>"], [[image()], None], r"prompts\[1\]: found 1 '<image>' placeholder\(s\) but images\[1\] has 0"),
        (["<image>"], [[image()], [image()]], r"images: expected one entry per prompt \(1\), got 2"),
        (["<|image_pad|> <image>"], [[image()]], r"prompts\[0\]: expected 1 image tokens .* has 2"),
        (["<image>"], [[torch.rand(5, 28, 28)]], r"images\[0\]\[0\]: .* got shape \(5, 28, 28\)"),
        (["<image>"], [[torch.rand(28, 28)]], r"got shape \(28, 28\)"),
        ([], None, "prompts: expected a non-empty list of str"),
        ("one string", None, "prompts: expected a non-empty list of str"),
    ],
)
def test_bad_prompts_and_images(qwen, prompts, images, message):
    _, _, adapter = qwen
    with pytest.raises(ValueError, match=message):
        adapter.build_prompts(prompts, images)


def test_bad_completions(qwen):
    _, config, adapter = qwen
    prompts, images = ["<image> hi", "text"], [[image()], None]
    with pytest.raises(ValueError, match=r"completions_token_ids: expected a list of 2 token-id lists, received a list of length 1"):
        adapter.build_training_batch(prompts, images, [[1]])
    with pytest.raises(ValueError, match=r"completions_token_ids\[1\]: expected non-negative int token ids"):
        adapter.build_training_batch(prompts, images, [[1], [-3]])
    with pytest.raises(ValueError, match=r"completions_token_ids\[0\]: holds vision special token ids"):
        adapter.build_training_batch(prompts, images, [[5, config.image_token_id], []])
    with pytest.raises(TypeError, match=r"completions_token_ids\[0\]: expected a list of ints, received str"):
        adapter.build_training_batch(prompts, images, ["abc", []])
    batch = adapter.build_training_batch(prompts, images, [[], torch.tensor([7, 8])])
    assert batch.loss_mask.sum(1).tolist() == [0, 2]


def test_system_prompt_and_no_chat_template(qwen):
    tokenizer, config, _ = qwen
    adapter = Qwen2VLAdapter(tokenizer, config, system_prompt="Be brief.", min_pixels=784, max_pixels=784)
    text = tokenizer.decode(adapter.build_prompts(["hi"]).input_ids[0])
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    raw = Qwen2VLAdapter(tokenizer, config, use_chat_template=False, min_pixels=784, max_pixels=784)
    batch = raw.build_prompts(["look <image>"], [[image()]])
    assert tokenizer.decode(batch.input_ids[0]) == "look <|vision_start|><|image_pad|><|vision_end|>"
    with pytest.raises(ValueError, match="system_prompt: must not contain the image placeholder"):
        Qwen2VLAdapter(tokenizer, config, system_prompt="<image>")


def test_registry_maps_model_types_and_lists_supported_families():
    tokenizer = load_smollm2_tokenizer()
    expected = {"qwen2_vl": Qwen2VLAdapter, "qwen2_5_vl": Qwen2_5_VLAdapter, "llava": LlavaAdapter,
                "internvl": InternVLAdapter, "llama": CausalLMAdapter}
    for family, cls in expected.items():
        config, _ = tiny_policy_config({"model_type": family})
        assert adapter_class_for(config) is cls
    model = tf.Qwen2ForCausalLM(tf.Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    assert isinstance(adapter_for(model, tokenizer), CausalLMAdapter)
    assert set(ADAPTERS) == {"qwen2_vl", "qwen2_5_vl", "llava", "internvl", "llava_next"}
    supported = "supported: internvl, llava, llava_next, qwen2_5_vl, qwen2_vl, pixtral and text-only causal LMs"
    with pytest.raises(ValueError, match=rf"no adapter for model_type 'clip_vision_model'; {supported}"):
        adapter_class_for(tf.CLIPVisionConfig())
    with pytest.raises(TypeError, match="model_or_config: expected a transformers model or config"):
        adapter_for({"model_type": "llava"}, tokenizer)
