"""Sequence packing: bin packing, layout and maps by hand, block mask, and packed log-probs equal to
unpacked ones for a tiny Llama and a tiny Qwen2-VL with images (M-RoPE per segment)."""

import pytest
import torch
import transformers as tf

from prismrl.policy.adapters import adapter_for, tiny_policy_config
from prismrl.policy.multimodal import MultimodalBatch
from prismrl.policy.packing import first_fit_decreasing, pack_sequences


def test_first_fit_decreasing_by_hand():
    # sorted: 6 (item 4), 5 (0), 4 (2), 3 (1), 2 (3); 6 -> bin 0 (room 2), 5 -> bin 1 (room 3), 4 -> bin 2,
    # 3 -> bin 1 (room 0), 2 -> bin 0 (room 0); the empty item 5 goes nowhere
    assert first_fit_decreasing([5, 3, 4, 2, 6, 0], 8) == [[4, 3], [0, 1], [2]]
    assert first_fit_decreasing([3, 3, 3], 3) == [[0], [1], [2]]


def small_batch(left: bool) -> MultimodalBatch:
    """Samples of 4, 2 and 3 tokens in a [3, 5] batch, right or left padded."""
    rows = [[11, 12, 13, 14], [21, 22], [31, 32, 33]]
    ids = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.zeros(3, 5, dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(5 - len(row), 5) if left else slice(0, len(row))
        ids[b, cols] = torch.tensor(row)
        mask[b, cols] = 1
    return MultimodalBatch(ids, mask, mask * (ids % 2), extra_model_kwargs={"token_type_ids": (ids == 22).int()})


@pytest.mark.parametrize("left", [False, True])
def test_layout_positions_and_round_trip_by_hand(left):
    batch = small_batch(left)
    packed = pack_sequences(batch, max_tokens_per_row=6, pad_token_id=-7)
    assert packed.rows == [[0, 1], [2]]  # lengths 4, 2, 3: 4 -> row 0, 3 -> row 1, 2 -> row 0
    assert packed.input_ids.tolist() == [[11, 12, 13, 14, 21, 22], [31, 32, 33, -7, -7, -7]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 1, 2]]
    assert packed.segment_ids.tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]]
    assert packed.sample_index.tolist() == [[0, 0, 0, 0, 1, 1], [2, 2, 2, -1, -1, -1]]
    off = 1 if left else 0  # left padding puts sample 0 at columns 1..4
    assert packed.token_index[0, :4].tolist() == [off, off + 1, off + 2, off + 3]
    assert packed.extra_model_kwargs["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 1], [0] * 6]
    values = torch.randn(3, 5, 2)
    real = batch.attention_mask.bool()
    assert torch.equal(packed.unpack(packed.pack(values)), values * real[..., None])
    assert torch.equal(packed.unpack(packed.pack(batch.loss_mask)), batch.loss_mask)
    assert torch.equal(packed.loss_mask, packed.pack(batch.loss_mask))


def test_block_mask_and_shifted_unpack_by_hand():
    packed = pack_sequences(small_batch(left=False), max_tokens_per_row=6)
    allowed = packed.block_attention_mask()[1, 0] == 0  # row 1: segment of 3 tokens, then 3 pads
    block = torch.ones(3, 3).tril().bool()
    expected = torch.block_diag(block, block)
    assert torch.equal(allowed, expected)
    assert packed.block_attention_mask(torch.float16).dtype == torch.float16
    # value of target j = 100 * row + j; segment starts (row 0: cols 0, 4) get the fill value
    shifted = torch.arange(1, 6).expand(2, 5) + 100 * torch.arange(2)[:, None]
    out = packed.unpack_shifted(shifted.float(), fill_value=-1)
    assert out.tolist() == [[1, 2, 3, -1], [5, -1, -1, -1], [101, 102, -1, -1]]


def test_pixel_rows_follow_packed_sample_order():
    ids = torch.tensor([[1, 9, 9, 0], [1, 1, 1, 1], [1, 9, 0, 0]])
    batch = MultimodalBatch(
        ids, (ids > 0).long(), torch.zeros_like(ids),
        pixel_values=torch.tensor([[0.0], [0.0], [2.0]]),  # sample 0: one image of 2 rows; sample 2: 1 row
        extra_model_kwargs={"image_grid_thw": torch.tensor([[1, 1, 2], [1, 1, 1]])},
        images_per_sample=torch.tensor([1, 0, 1]), pixel_rows_per_image=torch.tensor([2, 1]),
    )
    packed = pack_sequences(batch, max_tokens_per_row=5)
    assert packed.rows == [[1], [0, 2]]
    assert packed.pixel_values.flatten().tolist() == [0.0, 0.0, 2.0]
    assert packed.extra_model_kwargs["image_grid_thw"].tolist() == [[1, 1, 2], [1, 1, 1]]
    assert pack_sequences(batch, max_tokens_per_row=10).rows == [[1, 0, 2]]


def test_bad_inputs():
    batch = small_batch(left=False)
    with pytest.raises(ValueError, match="max_tokens_per_row: sample 0 has 4 tokens, more than max_tokens_per_row=3"):
        pack_sequences(batch, 3)
    with pytest.raises(ValueError, match="max_tokens_per_row: expected a positive int, got 0"):
        pack_sequences(batch, 0)
    empty = MultimodalBatch(batch.input_ids, torch.zeros_like(batch.attention_mask), batch.loss_mask)
    with pytest.raises(ValueError, match="every sample is empty"):
        pack_sequences(empty, 8)
    per_sample = MultimodalBatch(batch.input_ids, batch.attention_mask, batch.loss_mask,
                                 extra_model_kwargs={"image_sizes_like": torch.ones(3, 2)})
    with pytest.raises(ValueError, match=r"extra_model_kwargs\['image_sizes_like'\]: only per-token"):
        pack_sequences(per_sample, 8)
    packed = pack_sequences(batch, 8)
    with pytest.raises(ValueError, match=r"values: expected shape \[R, L, \.\.\.\]"):
        packed.unpack(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="attention: expected 'block_mask' or 'position_ids'"):
        packed.model_inputs("flash")


def naive_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, j] | ids[:, < j]) for j >= 1: [B, T - 1]."""
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


PROMPTS = ["Compare <image> and <image>.", "What is in <image>?", "No image here, just a longer question.", "a <image>"]
COMPLETIONS = [[500, 501, 502], [600, 601, 602, 603, 2], [], [700]]


def family_batch(family: str, attn: str = "sdpa"):
    # weights at std 0.2 (not 0.02) make logits depend strongly on positions and attention pattern,
    # so any packing mistake shows up far above the 1e-4 tolerance (see the controls below)
    init = {"initializer_range": 0.2}
    config, tokenizer = tiny_policy_config({"model_type": family, **init, **({} if family == "llama" else {"text_config": init})})
    torch.manual_seed(0)
    if family == "llama":
        model = tf.AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()
        adapter = adapter_for(model, tokenizer)
        prompts, images = [p.replace("<image>", "picture") for p in PROMPTS], None
    else:
        model = tf.AutoModelForImageTextToText.from_config(config, attn_implementation=attn).eval()
        kwargs = dict(min_pixels=28 * 28, max_pixels=56 * 56) if family.startswith("qwen") else {}
        adapter = adapter_for(model, tokenizer, **kwargs)
        prompts = PROMPTS
        images = [[torch.rand(3, 40, 60), torch.rand(1, 30, 30)], [torch.rand(3, 60, 30)], None, [torch.rand(3, 56, 56)]]
    return model, adapter, adapter.build_training_batch(prompts, images, COMPLETIONS)


@pytest.mark.parametrize(
    "family, attn",
    [("llama", "sdpa"), ("llama", "eager"), ("qwen2_vl", "sdpa"), ("qwen2_vl", "eager"), ("qwen2_5_vl", "sdpa"),
     ("llava", "sdpa")],
)
def test_packed_logprobs_equal_unpacked(family, attn):
    model, adapter, batch = family_batch(family, attn)
    targets = batch.attention_mask[:, 1:].bool()  # every real target token (right padding)
    with torch.no_grad():
        reference = naive_logprobs(model(**batch.model_inputs()).logits, batch.input_ids)  # [B, T - 1]
        packed = pack_sequences(batch, max_tokens_per_row=100, rope_index=adapter.rope_index_fn(model))
        assert len(packed.rows) < batch.batch_size  # something was actually packed together
        for attention in ("block_mask", "position_ids"):
            logits = model(**packed.model_inputs(attention)).logits
            lp = packed.unpack_shifted(naive_logprobs(logits, packed.input_ids))
            torch.testing.assert_close(lp[targets], reference[targets], atol=1e-4, rtol=0)


def test_packing_without_mrope_or_without_segment_mask_is_wrong():
    """Controls: the equality above needs both per-segment M-RoPE positions and segment-local attention."""
    model, adapter, batch = family_batch("qwen2_vl")
    targets = batch.attention_mask[:, 1:].bool()
    with torch.no_grad():
        reference = naive_logprobs(model(**batch.model_inputs()).logits, batch.input_ids)
        with pytest.raises(ValueError, match="rope_index: this batch has mm_token_type_ids"):
            pack_sequences(batch, max_tokens_per_row=100)

        def plain_positions(b: MultimodalBatch) -> torch.Tensor:  # 1-D positions copied to the 3 axes
            return (b.attention_mask.cumsum(-1) - 1).clamp(min=0).expand(3, -1, -1)

        flat = pack_sequences(batch, max_tokens_per_row=100, rope_index=plain_positions)
        lp = flat.unpack_shifted(naive_logprobs(model(**flat.model_inputs()).logits, flat.input_ids))
        assert (lp - reference)[targets].abs().max() > 0.1
        packed = pack_sequences(batch, max_tokens_per_row=100, rope_index=adapter.rope_index_fn(model))
        inputs = packed.model_inputs("block_mask")
        inputs.pop("attention_mask")  # plain causal attention over the whole row crosses segments
        lp = packed.unpack_shifted(naive_logprobs(model(**inputs).logits, packed.input_ids))
        assert (lp - reference)[targets].abs().max() > 0.1
