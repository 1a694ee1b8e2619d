"""Every family adapter on a tiny real transformers model: hand-checked token layout and loss mask,
generate, forward, multi-image + greyscale inputs, select() equal to the full batch rows."""

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from prismrl.policy.adapters import CausalLMAdapter, adapter_for, split_completions, tiny_policy_config

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
PROMPTS = ["Compare <image> with <image>.", "Say hi.", "<image> What is it?"]
COMPLETIONS = [[1000, 1001, 2], [], [1002]]  # 2 = <|im_end|> (EOS); sample 1 answers nothing


def chat(user: str) -> str:
    return f"{SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def images():
    """Sample 0: RGB float 40x60 + greyscale PIL 30x30; sample 1: none; sample 2: greyscale tensor 56x112."""
    torch.manual_seed(0)
    grey = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 30), dtype=np.uint8), mode="L")
    return [[torch.rand(3, 40, 60), grey], None, [torch.rand(1, 56, 112)]]


# Image tokens per image, by hand:
# Qwen (patch 14, merge 2 -> resize to multiples of 28, 784 <= h*w <= 3136): 40x60 -> 28x56, grid (1, 2, 4),
#   8 patches / 4 = 2 tokens; 30x30 -> 28x28, grid (1, 2, 2) -> 1; 56x112 is over 3136 -> scaled by 1/sqrt(2),
#   floored to 28x56 -> 2.
# LLaVA (CLIP 28 px, patch 14): 4 patches + CLS - 1 (strategy "default") = 4 per image.
# InternVL (56 px tiles, patch 14, shuffle 0.5): 16 * 0.25 = 4 per tile; 40x60 and 30x30 -> 1 tile;
#   56x112 -> 2 tiles + thumbnail = 3 tiles -> 12.
FAMILIES = {
    "qwen2_vl": dict(kwargs=dict(min_pixels=28 * 28, max_pixels=56 * 56), tokens=[2, 1, 2], rows=[8, 4, 8],
                     text=lambda n: "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"),
    "qwen2_5_vl": dict(kwargs=dict(min_pixels=28 * 28, max_pixels=56 * 56), tokens=[2, 1, 2], rows=[8, 4, 8],
                       text=lambda n: "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"),
    "llava": dict(kwargs={}, tokens=[4, 4, 4], rows=[1, 1, 1], text=lambda n: "<image>" * n),
    "internvl": dict(kwargs=dict(max_tiles=2), tokens=[4, 4, 12], rows=[1, 1, 3],
                     text=lambda n: "<img>" + "<IMG_CONTEXT>" * n + "</img>"),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    name = request.param
    config, tokenizer = tiny_policy_config({"model_type": name})
    torch.manual_seed(0)
    model = tf.AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa").eval()
    adapter = adapter_for(model, tokenizer, **FAMILIES[name]["kwargs"])
    return name, tokenizer, model, adapter


def expected_rows(name, tokenizer):
    spec = FAMILIES[name]
    counts = iter(spec["tokens"])
    users = []
    for prompt in PROMPTS:
        pieces = prompt.split("<image>")
        users.append(pieces[0] + "".join(spec["text"](next(counts)) + piece for piece in pieces[1:]))
    return [tokenizer(chat(u), add_special_tokens=False)["input_ids"] for u in users]


def test_training_batch_layout_and_loss_mask_by_hand(family):
    name, tokenizer, model, adapter = family
    batch = adapter.build_training_batch(PROMPTS, images(), COMPLETIONS)
    prompts = expected_rows(name, tokenizer)
    assert batch.input_ids.shape == (3, max(len(p) + len(c) for p, c in zip(prompts, COMPLETIONS)))
    for b, (prompt, completion) in enumerate(zip(prompts, COMPLETIONS)):
        n = len(prompt) + len(completion)
        assert batch.input_ids[b, :n].tolist() == prompt + completion
        assert batch.attention_mask[b].tolist() == [1] * n + [0] * (batch.seq_len - n)  # right padding
        assert batch.loss_mask[b].nonzero().flatten().tolist() == list(range(len(prompt), n))
    assert batch.loss_mask[1].sum() == 0  # empty completion
    image_id = model.config.image_token_id
    spec = FAMILIES[name]
    assert (batch.input_ids == image_id).sum(1).tolist() == [spec["tokens"][0] + spec["tokens"][1], 0, spec["tokens"][2]]
    assert batch.images_per_sample.tolist() == [2, 0, 1]
    assert batch.pixel_rows_per_image.tolist() == spec["rows"]
    if name.startswith("qwen"):
        assert torch.equal(batch.extra_model_kwargs["mm_token_type_ids"], (batch.input_ids == image_id).int())
        assert batch.extra_model_kwargs["image_grid_thw"].tolist() == [[1, 2, 4], [1, 2, 2], [1, 2, 4]]
    with torch.no_grad():
        logits = model(**batch.model_inputs()).logits
    assert logits.shape == (*batch.input_ids.shape, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_prompt_batch_generates_and_completions_round_trip(family):
    name, tokenizer, model, adapter = family
    prompt_batch = adapter.build_prompts(PROMPTS, images())
    assert prompt_batch.attention_mask[:, -1].tolist() == [1, 1, 1]  # left padding
    assert prompt_batch.loss_mask.sum() == 0
    with torch.no_grad():
        out = model.generate(**prompt_batch.model_inputs(), max_new_tokens=3, do_sample=False, **adapter.generate_kwargs())
    assert out.shape == (3, prompt_batch.seq_len + 3)
    completions = split_completions(out, prompt_batch.seq_len, tokenizer.eos_token_id)
    assert not set(adapter.image_token_ids).intersection(t for c in completions for t in c)
    batch = adapter.append_completions(prompt_batch, completions)
    assert batch.loss_mask.sum(1).tolist() == [len(c) for c in completions]
    for b, completion in enumerate(completions):
        assert batch.input_ids[b][batch.loss_mask[b].bool()].tolist() == completion
    with torch.no_grad():
        model(**batch.model_inputs())


def test_select_minibatch_gives_the_full_batch_rows(family):
    _, _, model, adapter = family
    batch = adapter.build_training_batch(PROMPTS, images(), COMPLETIONS)
    with torch.no_grad():
        full = model(**batch.model_inputs()).logits
        for indices in ([2, 0], [1]):
            sub = model(**batch.select(indices).model_inputs()).logits
            real = batch.attention_mask[indices].bool()  # logits at padding are not used
            torch.testing.assert_close(sub[real], full[indices][real], atol=1e-5, rtol=1e-5)


def test_text_only_causal_lm_adapter():
    config, tokenizer = tiny_policy_config({"model_type": "llama"})
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    adapter = adapter_for(model, tokenizer)
    assert isinstance(adapter, CausalLMAdapter)
    prompts = ["Say hi.", "A <image> is only text here."]
    batch = adapter.build_training_batch(prompts, None, [[5, 6, 2], []])
    first = tokenizer(chat(prompts[0]), add_special_tokens=False)["input_ids"]
    assert batch.input_ids[0, : len(first) + 3].tolist() == first + [5, 6, 2]
    assert batch.loss_mask[0].nonzero().flatten().tolist() == [len(first), len(first) + 1, len(first) + 2]
    assert batch.loss_mask[1].sum() == 0 and batch.pixel_values is None
    prompt_batch = adapter.build_prompts(prompts)
    with torch.no_grad():
        out = model.generate(**prompt_batch.model_inputs(), max_new_tokens=3, do_sample=False, **adapter.generate_kwargs())
        model(**batch.model_inputs())
    assert out.shape == (2, prompt_batch.seq_len + 3)
    with pytest.raises(ValueError, match=r"images\[0\]: CausalLMAdapter is text-only, received 1 image"):
        adapter.build_prompts(["x"], [torch.rand(3, 8, 8)])


def test_qwen2_vl_needs_mm_token_type_ids_which_the_adapter_always_builds():
    config, tokenizer = tiny_policy_config({"model_type": "qwen2_vl"})
    model = tf.Qwen2VLForConditionalGeneration(config).eval()
    adapter = adapter_for(model, tokenizer, **FAMILIES["qwen2_vl"]["kwargs"])
    inputs = adapter.build_training_batch(PROMPTS, images(), COMPLETIONS).model_inputs()
    with torch.no_grad():
        model(**inputs)
        inputs.pop("mm_token_type_ids")
        with pytest.raises(ValueError, match="mm_token_type_ids"):
            model(**inputs)


def test_split_completions_cuts_after_the_first_eos():
    sequences = torch.tensor([[9, 9, 5, 2, 2, 2], [9, 9, 6, 7, 8, 3], [9, 9, 4, 4, 3, 2]])
    assert split_completions(sequences, 2, 2) == [[5, 2], [6, 7, 8, 3], [4, 4, 3, 2]]
    assert split_completions(sequences, 2, [3, 2]) == [[5, 2], [6, 7, 8, 3], [4, 4, 3]]
    with pytest.raises(ValueError, match="sequences: expected a"):
        split_completions(sequences, 7, 2)


@pytest.mark.parametrize(
    "overrides, tokens",
    [
        (dict(vision_feature_select_strategy="full"), 5),  # 4 patches + CLS
        (dict(vision_config={"model_type": "siglip_vision_model"}), 3),  # no CLS; "default" drops one
    ],
)
def test_llava_token_count_follows_tower_and_strategy(overrides, tokens):
    config, tokenizer = tiny_policy_config({"model_type": "llava", **overrides})
    model = tf.LlavaForConditionalGeneration(config).eval()
    adapter = adapter_for(model, tokenizer)
    batch = adapter.build_training_batch(["<image> hi"], [[torch.rand(3, 20, 20)]], [[5]])
    assert (batch.input_ids == config.image_token_id).sum() == tokens
    with torch.no_grad():
        model(**batch.model_inputs())  # raises if tokens and image features disagree
