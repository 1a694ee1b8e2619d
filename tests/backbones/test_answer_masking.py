"""Answer-only labels: hand-checked token positions for each decoder, truncation and the never-all--100 rule."""

from __future__ import annotations

import pytest
import torch

from prismrl.backbones.answer_masking import (
    IGNORE_INDEX,
    left_padded_prompts,
    positions_from_mask,
    prefix_lm_inputs,
    slot_labels,
)

I = IGNORE_INDEX
# SmolLM2 ids: "Question: What digit is shown?\nAnswer:" (10 tokens), "Question: Is the digit even or odd?\nAnswer:" (12)
PROMPT_DIGIT = [17872, 42, 1812, 11403, 314, 3057, 47, 198, 21350, 42]
PROMPT_PARITY = [17872, 42, 1431, 260, 11403, 908, 355, 12365, 47, 198, 21350, 42]
SEVEN, ODD, EOS = 4962, 12365, 2  # " seven", " odd", <|im_end|> (= pad)


def test_prefix_lm_labels_by_hand():
    out = prefix_lm_inputs([PROMPT_DIGIT, PROMPT_PARITY], [[SEVEN, EOS], [ODD, EOS]], prefix_length=3, max_length=32, pad_id=EOS)
    # row 0: 3 prefix + 10 prompt + 2 answer = 15 real positions, then 2 padding; row 1: 3 + 12 + 2 = 17
    assert out.input_ids.tolist() == [PROMPT_DIGIT + [SEVEN, EOS, EOS, EOS], PROMPT_PARITY + [ODD, EOS]]
    assert out.attention_mask.tolist() == [[1] * 15 + [0, 0], [1] * 17]
    assert out.labels.tolist() == [[I] * 13 + [SEVEN, EOS] + [I, I], [I] * 15 + [ODD, EOS]]


def test_prefix_lm_truncates_a_long_answer_with_a_warning_and_refuses_an_empty_one():
    with pytest.warns(UserWarning, match="sample 0 has 2 answer tokens, more than the 1 that fit"):
        out = prefix_lm_inputs([PROMPT_DIGIT], [[SEVEN, EOS]], prefix_length=2, max_length=11, pad_id=EOS)
    assert out.labels.tolist() == [[I] * 12 + [SEVEN]] and out.attention_mask.tolist() == [[1] * 13]
    with pytest.raises(ValueError, match="max_length=10 minus 10 prompt tokens: sample 0 leaves no room"):
        prefix_lm_inputs([PROMPT_DIGIT], [[SEVEN, EOS]], prefix_length=2, max_length=10, pad_id=EOS)
    with pytest.raises(ValueError, match="sample 1 has no answer token; its labels would be all -100"):
        prefix_lm_inputs([[5], [6]], [[7], []], prefix_length=0, max_length=8, pad_id=0)
    with pytest.raises(ValueError, match="same non-zero number of samples"):
        prefix_lm_inputs([[5]], [[7], [8]], prefix_length=0, max_length=8, pad_id=0)


def test_slot_labels_by_hand():
    assert slot_labels([[27867, EOS], [16114, EOS]], answer_length=3).tolist() == [[27867, EOS, I], [16114, EOS, I]]
    with pytest.warns(UserWarning, match="answer_length=1"):
        assert slot_labels([[27867, EOS]], answer_length=1).tolist() == [[27867]]
    with pytest.raises(ValueError, match="sample 0 has no answer token"):
        slot_labels([[]], answer_length=3)


def test_left_padded_prompts_pad_between_prefix_and_prompt():
    ids, mask = left_padded_prompts([[5, 6], [7]], prefix_length=2, pad_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 1]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2, 3], [0, 1, 1, 2]]  # the prompt continues at 2 in both
    assert positions_from_mask(torch.tensor([[1, 1, 1, 0, 0]])).tolist() == [[0, 1, 2, 2, 2]]


def test_prefix_lm_decoder_scores_exactly_the_answer_positions():
    """The decoder's logits are the full LM's logits at the positions just before each answer token."""
    from prismrl.backbones.prefix_lm import PrefixLMDecoder

    torch.manual_seed(0)
    decoder = PrefixLMDecoder(tiny_config={"model_type": "llama"}, max_length=32).eval()
    prefix = torch.randn(2, 3, decoder.hidden_size)
    questions, answers = ["What digit is shown?", "Is the digit even or odd?"], ["seven", "odd"]
    out = decoder(prefix, questions, answers)
    assert out.labels.tolist() == [SEVEN, EOS, ODD, EOS]
    inputs = prefix_lm_inputs([PROMPT_DIGIT, PROMPT_PARITY], [[SEVEN, EOS], [ODD, EOS]], 3, 32, EOS)
    embeds = torch.cat([prefix, decoder.model.get_input_embeddings()(inputs.input_ids)], dim=1)
    full = decoder.model(inputs_embeds=embeds, attention_mask=inputs.attention_mask,
                         position_ids=positions_from_mask(inputs.attention_mask)).logits  # [2, 17, V]
    expected = torch.stack([full[0, 12], full[0, 13], full[1, 14], full[1, 15]])  # one before each label position
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-5)
    reference = torch.nn.functional.cross_entropy(expected, torch.tensor([SEVEN, EOS, ODD, EOS]))
    torch.testing.assert_close(out.loss, reference, rtol=1e-4, atol=1e-5)


def test_recursive_decoder_labels_are_answer_slots():
    from prismrl.backbones.recursive_decoder import RecursiveDecoder

    decoder = RecursiveDecoder(dim=16, answer_length=3, num_heads=2, depth=1)
    assert decoder.labels(["seven", "odd"], 2).tolist() == [[27867, EOS, I], [16114, EOS, I]]
    out = decoder(torch.randn(2, 4, 16), ["What digit is shown?", "Is the digit even or odd?"], ["seven", "odd"])
    assert out.logits.shape == (2, 3, len(decoder.tokenizer)) and out.labels.tolist() == [[27867, EOS, I], [16114, EOS, I]]
    with pytest.raises(ValueError, match="answers: expected 2 strings"):
        decoder(torch.randn(2, 4, 16), ["a", "b"], ["seven"])
