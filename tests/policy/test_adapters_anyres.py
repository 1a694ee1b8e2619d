"""LLaVA-NeXT (anyres tiles + image_sizes) and Pixtral (native resolution, [IMG_BREAK] rows) adapters on tiny
real transformers models: the adapter's inputs and log-probs against the family's own processor and a naive
forward, greedy rollouts, select() with repeated rows, packing, and bad input."""

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from prismrl.policy.adapters import (
    LlavaNextAdapter,
    PixtralAdapter,
    adapter_for,
    tiny_policy_config,
)
from prismrl.policy.adapters.llava_next import anyres_tokens
from prismrl.policy.packing import pack_sequences
from prismrl.policy.rollout import (
    HFRolloutEngine,
    SamplingSettings,
    eos_token_ids,
    sample_completions,
    sequence_logprobs,
)
from prismrl.policy.token_logprobs import hidden_logprobs_checked, policy_logprobs

PROMPTS = ["Compare <image> with <image>.", "Say hi.", "<image> What is it?"]
COMPLETIONS = [[1000, 1001, 2], [], [1002, 1003]]
SIZES = [[(40, 60), (30, 30)], [], [(56, 112)]]  # (h, w) per image of each sample


def images() -> list[list[Image.Image]]:
    rng = np.random.default_rng(0)
    return [[Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes] for sizes in SIZES]


@pytest.fixture(scope="module", params=["llava_next", "pixtral"])
def family(request):
    # weights at std 0.2 make logits depend strongly on which image features land where
    config, tokenizer = tiny_policy_config({"model_type": request.param, "text_config": {"initializer_range": 0.2}})
    torch.manual_seed(0)
    model = tf.AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa").eval()
    return request.param, tokenizer, model, adapter_for(model, tokenizer)


def reference_inputs(name, tokenizer, adapter, prompts, imgs):
    """The family's own processor on the rendered prompts (right padding): input_ids, pixel_values, image_sizes."""
    texts = [adapter.render_prompt(p) for p in prompts]
    flat = [img for sample in imgs for img in sample]
    if name == "llava_next":  # LlavaNextProcessor itself (it runs without torchvision)
        processor = tf.LlavaNextProcessor(image_processor=adapter.image_processor, tokenizer=tokenizer, patch_size=14,
                                          vision_feature_select_strategy="default", num_additional_image_tokens=1)
        out = processor(text=texts, images=flat, return_tensors="pt", padding=True, add_special_tokens=False)
        assert out["pixel_values"].dim() == 5  # [N, max tiles, 3, S, S]: the processor's padded layout
        return [ids[m.bool()].tolist() for ids, m in zip(out["input_ids"], out["attention_mask"])], out
    # PixtralProcessor does not import without torchvision: its replace_image_token, restated, writes each image
    pixels = tf.PixtralImageProcessorPil(size={"longest_edge": 56}, patch_size={"height": 14, "width": 14})(
        flat, return_tensors="pt")
    index, rows = iter(range(len(flat))), []
    for text in texts:
        pieces = text.split("<image>")
        text = pieces[0] + "".join(pixtral_image_tokens(*pixels["image_sizes"][next(index)].tolist()) + piece
                                   for piece in pieces[1:])
        rows.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return rows, pixels


def pixtral_image_tokens(height: int, width: int, patch: int = 14) -> str:
    """PixtralProcessor.replace_image_token: rows of [IMG] x cols + [IMG_BREAK], the last break -> [IMG_END]."""
    tokens = [["[IMG]"] * (width // patch) + ["[IMG_BREAK]"]] * (height // patch)
    tokens = [t for row in tokens for t in row]
    tokens[-1] = "[IMG_END]"
    return "".join(tokens)


def naive_completion_logprobs(model, rows, completions, pixels):
    """Per row: log p(completion token | everything before), from one padded forward on the processor's tensors."""
    full = [r + c for r, c in zip(rows, completions)]
    width = max(map(len, full))
    input_ids = torch.tensor([f + [0] * (width - len(f)) for f in full])
    attention_mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in full])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels["pixel_values"],
                       image_sizes=pixels["image_sizes"]).logits
    logprobs = torch.log_softmax(logits.double(), -1)
    return [[float(logprobs[b, len(r) + i - 1, t]) for i, t in enumerate(c)] for b, (r, c) in enumerate(zip(rows, completions))]


def test_inputs_match_the_family_processor_and_logprobs_a_naive_forward(family):
    name, tokenizer, model, adapter = family
    batch = adapter.build_training_batch(PROMPTS, images(), COMPLETIONS)
    rows, pixels = reference_inputs(name, tokenizer, adapter, PROMPTS, images())
    prompt_lengths = [len(r) for r in rows]
    for b, (row, completion) in enumerate(zip(rows, COMPLETIONS)):
        n = len(row) + len(completion)
        assert batch.input_ids[b, :n].tolist() == row + completion
        assert batch.loss_mask[b].nonzero().flatten().tolist() == list(range(len(row), n))
    assert torch.equal(batch.extra_model_kwargs["image_sizes"], pixels["image_sizes"])
    if name == "llava_next":  # flat tiles = the processor's tiles without its padding tiles
        tiles = batch.pixel_rows_per_image.tolist()
        assert tiles == [5, 5, 3]  # 40x60 and 30x30 -> the 56x56 pinpoint (4 tiles), 56x112 -> 28x56 (2); + base
        expected = torch.cat([pixels["pixel_values"][i, :t] for i, t in enumerate(tiles)])
    else:
        expected = pixels["pixel_values"]
        assert batch.extra_model_kwargs["image_sizes"].tolist() == [[42, 56], [42, 42], [28, 56]]
    torch.testing.assert_close(batch.pixel_values, expected, atol=0, rtol=0)
    reference = naive_completion_logprobs(model, rows, COMPLETIONS, pixels)
    with torch.no_grad():
        full, _ = sequence_logprobs(model, batch)  # [B, T - 1]
        hidden, _ = policy_logprobs(model, batch)  # the hidden-state path
    assert hidden_logprobs_checked(model)
    for logprobs in (full, hidden):
        for b, (n, completion) in enumerate(zip(prompt_lengths, COMPLETIONS)):
            got = logprobs[b, n - 1 : n - 1 + len(completion)].tolist()
            np.testing.assert_allclose(got, reference[b], atol=1e-4)


@pytest.mark.parametrize("size", [(40, 60), (30, 30), (56, 112), (112, 56), (17, 90), (90, 17), (28, 28), (200, 201)])
def test_llava_next_token_count_equals_the_processor_count(size):
    config, tokenizer = tiny_policy_config({"model_type": "llava_next"})
    adapter = adapter_for(config, tokenizer)
    processor = tf.LlavaNextProcessor(image_processor=adapter.image_processor, tokenizer=tokenizer, patch_size=14,
                                      vision_feature_select_strategy="default", num_additional_image_tokens=1)
    h, w = size
    expected = processor._get_num_multimodal_tokens(image_sizes=[size])["num_image_tokens"][0]
    tiles, tokens = anyres_tokens(h, w, 28, 14, config.image_grid_pinpoints, adapter.base_tokens)
    assert tokens == expected
    batch = adapter.build_training_batch(["<image>"], [[Image.new("RGB", (w, h))]], [[5]])
    assert batch.pixel_rows_per_image.tolist() == [tiles]
    with torch.no_grad():  # the model raises if tokens and features disagree
        tf.LlavaNextForConditionalGeneration(config).eval()(**batch.model_inputs())


def test_greedy_rollout_through_the_hf_engine(family):
    _, tokenizer, model, adapter = family
    prompt_batch = adapter.build_prompts(PROMPTS, images()).select([0, 0, 1, 2, 2])  # groups of 2 and 1
    eos = eos_token_ids(model, tokenizer)
    engine = HFRolloutEngine(model, adapter, eos)
    settings = SamplingSettings(max_new_tokens=4)
    completions = engine.generate(prompt_batch, settings, greedy=True)
    assert completions == sample_completions(model, prompt_batch, adapter, settings, eos, greedy=True)
    assert completions[0] == completions[1] and completions[3] == completions[4]  # same prompt, greedy
    assert not set(adapter.image_token_ids).intersection(t for c in completions for t in c)
    batch = adapter.append_completions(prompt_batch, completions)
    assert batch.loss_mask.sum(1).tolist() == [len(c) for c in completions]
    with torch.no_grad():
        model(**batch.model_inputs())


def test_select_with_repeated_rows_keeps_images_aligned(family):
    _, _, model, adapter = family
    batch = adapter.build_training_batch(PROMPTS, images(), COMPLETIONS)
    picked = [2, 0, 0, 1]
    sub = batch.select(picked)
    _, row_ranges = batch.image_ranges()
    rows = [r for b in picked for r in range(*row_ranges[b])]
    assert torch.equal(sub.pixel_values, batch.pixel_values[rows])
    assert sub.extra_model_kwargs["image_sizes"].tolist() == [batch.extra_model_kwargs["image_sizes"][i].tolist()
                                                               for i in (2, 0, 1, 0, 1)]
    with torch.no_grad():
        full = model(**batch.model_inputs()).logits
        got = model(**sub.model_inputs()).logits
    real = batch.attention_mask[picked].bool()
    torch.testing.assert_close(got[real], full[picked][real], atol=1e-5, rtol=1e-5)


def test_packed_logprobs_equal_unpacked(family):
    _, _, model, adapter = family
    batch = adapter.build_training_batch(PROMPTS, images(), COMPLETIONS)
    targets = batch.attention_mask[:, 1:].bool()
    with torch.no_grad():
        reference, _ = sequence_logprobs(model, batch)
        packed = pack_sequences(batch, max_tokens_per_row=batch.seq_len + 40)
        assert len(packed.rows) < batch.batch_size
        for attention in ("block_mask", "position_ids"):
            logits = model(**packed.model_inputs(attention)).logits
            lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, packed.input_ids[:, 1:, None]).squeeze(-1)
            torch.testing.assert_close(packed.unpack_shifted(lp)[targets], reference[targets], atol=1e-4, rtol=0)


def test_bad_input_names_the_field(family):
    _, _, _, adapter = family
    with pytest.raises(ValueError, match=r"prompts\[0\]: found 1 '<image>' placeholder\(s\) but images\[0\] has 2"):
        adapter.build_prompts(["<image> two?"], [[Image.new("RGB", (30, 30))] * 2])
    with pytest.raises((TypeError, ValueError), match=r"images\[0\]"):
        adapter.build_prompts(["<image> what?"], [["not an image"]])
    image_id = adapter.image_token_ids[-1]
    with pytest.raises(ValueError, match=r"completions_token_ids\[0\]: holds vision special token ids"):
        adapter.build_training_batch(["<image> x"], [[Image.new("RGB", (30, 30))]], [[image_id]])


def test_family_specific_errors():
    config, tokenizer = tiny_policy_config({"model_type": "llava_next", "vision_feature_select_strategy": "full"})
    with pytest.raises(ValueError, match=r"config.vision_feature_select_strategy: .* use default, received 'full'"):
        LlavaNextAdapter(tokenizer, config)
    llava, tokenizer = tiny_policy_config({"model_type": "llava"})
    with pytest.raises(ValueError, match=r"config: expected a llava config with a pixtral vision tower"):
        PixtralAdapter(tokenizer, llava)
    pixtral, tokenizer = tiny_policy_config({"model_type": "pixtral"})
    with pytest.raises(ValueError, match=r"image_break_token: '\[BRK\]' is not a token"):
        PixtralAdapter(tokenizer, pixtral, image_break_token="[BRK]")
    with pytest.raises(TypeError, match=r"num_tokens: PixtralAdapter needs the ImageGrid"):
        PixtralAdapter(tokenizer, pixtral).image_text(4)


def test_tiny_configs_and_dispatch():
    for name, cls, model_type in (("llava_next", LlavaNextAdapter, "llava_next"), ("pixtral", PixtralAdapter, "llava")):
        config, tokenizer = tiny_policy_config({"model_type": name})
        assert config.model_type == model_type and type(adapter_for(config, tokenizer)) is cls
        assert config.text_config.vocab_size == len(tokenizer)
        assert config.image_token_id == tokenizer.convert_tokens_to_ids(cls.special_tokens["image_token_id"])


@pytest.mark.parametrize("name", ["llava_next", "pixtral"])
def test_processor_settings_reach_the_image_processor(name):
    from prismrl.policy.adapters import ProcessorSettings

    config, tokenizer = tiny_policy_config({"model_type": name})
    adapter = adapter_for(config, tokenizer, processor=ProcessorSettings(image_mean=(0.5, 0.5, 0.5),
                                                                         image_std=(0.25, 0.25, 0.25)))
    assert list(adapter.image_processor.image_mean) == [0.5] * 3 and list(adapter.image_processor.image_std) == [0.25] * 3
    white = adapter.build_prompts(["<image>"], [[Image.new("RGB", (28, 28), "white")]]).pixel_values[0]  # (base) tile
    torch.testing.assert_close(white, torch.full_like(white, 2.0))  # (1 - 0.5) / 0.25
    with pytest.raises(ValueError, match=rf"processor.max_tiles: {type(adapter).__name__} has no such image setting"):
        adapter_for(config, tokenizer, processor=ProcessorSettings(max_tiles=2))
