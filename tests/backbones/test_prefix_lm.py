"""The prefix LM decoder: LoRA set-up, cached greedy generation against a naive loop, padding independence."""

from __future__ import annotations

import pytest
import torch

from prismrl.backbones.answer_masking import positions_from_mask
from prismrl.backbones.lora import LoraSettings
from prismrl.backbones.prefix_lm import PrefixLMDecoder


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return PrefixLMDecoder(tiny_config={"model_type": "llama"}, lora=LoraSettings(r=4, alpha=8), max_new_tokens=5).eval()


def _naive_greedy(decoder: PrefixLMDecoder, prefix: torch.Tensor, question: str, steps: int) -> list[int]:
    """One sample, no padding, no cache: recompute the whole sequence for every new token."""
    prompt = decoder.tokenizer(decoder.prompt_template.format(question=question), add_special_tokens=False)["input_ids"]
    ids = list(prompt)
    out = []
    for _ in range(steps):
        embeds = torch.cat([prefix[None], decoder.model.get_input_embeddings()(torch.tensor([ids]))], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        token = int(decoder.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask)).logits[0, -1].argmax())
        out.append(token)
        if token == decoder.tokenizer.eos_token_id:
            break
        ids.append(token)
    return out


def test_only_lora_weights_train(decoder):
    trainable = [n for n, p in decoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert decoder.hidden_size == 64


def test_cached_batched_generation_matches_a_naive_loop(decoder):
    torch.manual_seed(1)
    prefix = torch.randn(3, 4, decoder.hidden_size)
    questions = ["What digit is shown?", "Is it odd?", "Is the digit greater than five, or is it five or less?"]
    with torch.no_grad():
        answers = decoder.generate(prefix, questions)
        expected = [decoder.tokenizer.decode(_naive_greedy(decoder, prefix[i], q, 5), skip_special_tokens=True).strip()
                    for i, q in enumerate(questions)]
        alone = [decoder.generate(prefix[i : i + 1], [q])[0] for i, q in enumerate(questions)]
    assert answers == expected == alone  # left padding between prefix and prompt changes nothing
    assert all(answers)  # random weights rarely pick EOS first; the strings are non-empty


def test_bad_inputs_are_refused(decoder):
    with pytest.raises(ValueError, match=r"prefix: expected shape \[B, P, 64\]"):
        decoder.generate(torch.randn(1, 4, 32), ["q"])
    with pytest.raises(ValueError, match="answers: expected 1 strings"):
        decoder(torch.randn(1, 4, 64), ["q"], ["a", "b"])
    with pytest.raises(ValueError, match="prompt_template: expected a template containing {question}"):
        PrefixLMDecoder(tiny_config={"model_type": "llama"}, prompt_template="Answer:")
