"""What the answer decoders of the vision-language stage share: their output type, tokenizer loading,
answer tokenization (answer ++ EOS) and decoding of generated ids back to strings.

A decoder takes the visual prefix ``[B, P, hidden_size]`` plus the question strings and
  * ``forward(prefix, questions, answers)`` -> ``AnswerDecoderOutput`` (loss on answer tokens only; logits and
    labels aligned so that ``logits[:, t]`` predicts ``labels[:, t]``, -100 = no target);
  * ``generate(prefix, questions)`` -> the answer strings (greedy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor


@dataclass
class AnswerDecoderOutput:
    """loss: scalar; logits: [B, T, V]; labels: [B, T] long, -100 where nothing is predicted."""

    loss: Tensor
    logits: Tensor
    labels: Tensor


def load_text_tokenizer(name_or_path: str | None):
    """The shipped SmolLM2 tokenizer when ``name_or_path`` is None, else ``AutoTokenizer`` from an HF id/folder."""
    if name_or_path is None:
        from prismrl.backbones.tokenizers import load_smollm2_tokenizer

        tokenizer = load_smollm2_tokenizer()
    else:
        from transformers import AutoTokenizer

        from prismrl.backbones.shipped import pretrained_kwargs, resolve_model_path

        path = resolve_model_path(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(path, **pretrained_kwargs(path))
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer_name_or_path: tokenizer {name_or_path!r} has no EOS token to end answers with")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_texts(texts: Sequence[str], field: str, size: int | None = None) -> list[str]:
    """A list of B strings (B = ``size`` when given), else a ValueError naming ``field``."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{field}: expected a list of str, received {type(texts).__name__}")
    if size is not None and len(texts) != size:
        raise ValueError(f"{field}: expected {size} strings (one per image), received {len(texts)}")
    return list(texts)


def text_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens added by the tokenizer."""
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def answer_ids(tokenizer, answers: Sequence[str], template: str = "{answer}") -> list[list[int]]:
    """``tokenize(template.format(answer=a)) ++ [eos]`` per answer."""
    return [ids + [tokenizer.eos_token_id] for ids in text_ids(tokenizer, [template.format(answer=a) for a in answers])]


def decode_answers(tokenizer, generated: Sequence[Sequence[int]]) -> list[str]:
    """Generated ids -> strings, cut at the first EOS, special tokens dropped, whitespace stripped."""
    out = []
    for ids in generated:
        ids = [int(t) for t in ids]
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        out.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return out


__all__ = ["AnswerDecoderOutput", "answer_ids", "check_texts", "decode_answers", "load_text_tokenizer", "text_ids"]
