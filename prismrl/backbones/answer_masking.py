"""Answer-only label masking for vision-language instruction tuning (pure functions over token id lists).

Causal LM with a visual prefix of P embeddings, text = prompt ++ answer (the answer ends with EOS):
    position  0 .. P-1 | P .. P+m-1 | P+m .. P+m+a-1 | P+m+a .. P+T-1
    input     prefix   | prompt     | answer         | padding
    labels    -100     | -100       | answer ids     | -100
    attention 1        | 1          | 1              | 0
(labels sit at the token they name; the LM loss shifts them: logits[t] predicts labels[t + 1]).
Slot decoder (non-autoregressive, ``answer_length`` slots): labels = answer ids then -100 in the unused slots.

An answer that does not fit (``max_length - prompt length`` text tokens, or ``answer_length`` slots) is cut to
what fits and a warning names the sample; a sample left with no answer token raises ValueError, so no row is
silently all -100.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100


@dataclass
class PrefixLMInputs:
    """input_ids [B, T] (text only, right-padded); attention_mask and labels [B, P + T] (prefix included)."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor


def fit_answer(answer: Sequence[int], budget: int, sample: int, field: str) -> list[int]:
    """``answer`` cut to ``budget`` tokens (with a warning when cut); ValueError when nothing would remain."""
    answer = [int(t) for t in answer]
    if not answer:
        raise ValueError(f"answers: sample {sample} has no answer token; its labels would be all {IGNORE_INDEX}")
    if budget < 1:
        raise ValueError(f"{field}: sample {sample} leaves no room for its answer (budget {budget} tokens)")
    if len(answer) > budget:
        warnings.warn(f"answers: sample {sample} has {len(answer)} answer tokens, more than the {budget} that fit "
                      f"({field}); truncated to {budget}", stacklevel=3)
        return answer[:budget]
    return answer


def _check_pairs(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]]) -> None:
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"prompts / answers: expected the same non-zero number of samples, "
                         f"received {len(prompts)} prompts and {len(answers)} answers")


def prefix_lm_inputs(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], prefix_length: int,
                     max_length: int, pad_id: int) -> PrefixLMInputs:
    """Right-padded ``prompt ++ answer`` ids with answer-only labels (see the module docstring).

    ``max_length`` bounds the text tokens per sample (prompt + answer); T = the longest kept text.
    """
    _check_pairs(prompts, answers)
    if prefix_length < 0:
        raise ValueError(f"prefix_length: expected an int >= 0, received {prefix_length!r}")
    texts, answer_spans = [], []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        kept = fit_answer(answer, max_length - len(prompt), i, f"max_length={max_length} minus {len(prompt)} prompt tokens")
        texts.append([int(t) for t in prompt] + kept)
        answer_spans.append((len(prompt), len(prompt) + len(kept)))
    batch, width = len(texts), max(len(t) for t in texts)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros(batch, prefix_length + width, dtype=torch.long)  # [B, P + T]
    labels = torch.full((batch, prefix_length + width), IGNORE_INDEX, dtype=torch.long)  # [B, P + T]
    for i, (text, (start, end)) in enumerate(zip(texts, answer_spans)):
        input_ids[i, : len(text)] = torch.tensor(text)
        attention_mask[i, : prefix_length + len(text)] = 1
        labels[i, prefix_length + start : prefix_length + end] = torch.tensor(text[start:end])
    return PrefixLMInputs(input_ids, attention_mask, labels)


def left_padded_prompts(prompts: Sequence[Sequence[int]], prefix_length: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Prompts for generation: (input_ids [B, T] left-padded, attention_mask [B, P + T]).

    The padding sits between the prefix and the prompt, so every row's last token is at the same position.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: expected at least one sample and a non-empty prompt per sample")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.ones(len(prompts), prefix_length + width, dtype=torch.long)  # [B, P + T]
    for i, prompt in enumerate(prompts):
        input_ids[i, width - len(prompt):] = torch.tensor([int(t) for t in prompt])
        attention_mask[i, prefix_length : prefix_length + width - len(prompt)] = 0
    return input_ids, attention_mask


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """position = (number of attended tokens before it), i.e. ``cumsum(mask) - 1`` clamped at 0: [B, T] long."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def slot_labels(answers: Sequence[Sequence[int]], answer_length: int) -> Tensor:
    """Labels of a slot decoder: [B, answer_length], answer ids then -100."""
    if not answers:
        raise ValueError("answers: expected at least one sample")
    labels = torch.full((len(answers), answer_length), IGNORE_INDEX, dtype=torch.long)  # [B, La]
    for i, answer in enumerate(answers):
        kept = fit_answer(answer, answer_length, i, f"answer_length={answer_length}")
        labels[i, : len(kept)] = torch.tensor(kept)
    return labels


__all__ = [
    "IGNORE_INDEX",
    "PrefixLMInputs",
    "fit_answer",
    "left_padded_prompts",
    "positions_from_mask",
    "prefix_lm_inputs",
    "slot_labels",
]
