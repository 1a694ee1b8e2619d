"""Rollouts of a (vision-)language policy: sampling settings, group sampling and sequence log-probs.

Works with any model that has HF's ``generate`` / ``forward(...).logits`` and a batch adapter from
``prismrl.data.adapters`` (duck-typed: nothing here imports transformers or Lightning).

Log-probs are those of the sampling distribution: logits / temperature (as the samples were drawn),
so the importance ratio pi_theta / pi_old compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prismrl.rl.logprobs import entropy_from_logits, shift_for_causal_lm, token_logprobs


@dataclass
class SamplingSettings:
    """How completions are sampled: temperature / top-p / top-k (0 = off) and the completion budget."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise ValueError(f"sampling.max_new_tokens: expected an int > 0, received {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"sampling.temperature: expected a float > 0, received {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p: expected a float in (0, 1], received {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"sampling.top_k: expected an int >= 0 (0 = off), received {self.top_k!r}")

    def generate_kwargs(self, greedy: bool = False) -> dict[str, Any]:
        """``generate`` kwargs: sampling (or greedy decoding for evaluation)."""
        if greedy:
            return {"do_sample": False, "max_new_tokens": self.max_new_tokens, "temperature": None, "top_p": None,
                    "top_k": None}
        return {"do_sample": True, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k or None}


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the generation config's eos id(s) and the tokenizer's."""
    ids: set[int] = set()
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("eos_token_id: neither the model's generation config nor the tokenizer defines one")
    return sorted(ids)


def group_indices(num_prompts: int, group_size: int) -> Tensor:
    """[P * G] row -> prompt index, each prompt's G rows consecutive: [0, 0, .., 1, 1, ..]."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size: expected an int >= 2 (GRPO compares completions within a group), "
                         f"received {group_size!r}")
    return torch.arange(num_prompts).repeat_interleave(group_size)


@torch.no_grad()
def sample_completions(model, prompt_batch, adapter, sampling: SamplingSettings, eos_ids: list[int],
                       greedy: bool = False) -> list[list[int]]:
    """Per prompt row the sampled completion token ids, up to and including the first EOS."""
    from prismrl.data.adapters.base import split_completions

    inputs = prompt_batch.model_inputs()
    out = model.generate(**inputs, **sampling.generate_kwargs(greedy), **adapter.generate_kwargs())  # [B, P + C]
    return split_completions(out, prompt_batch.seq_len, eos_ids)


@dataclass
class PackingSettings:
    """Pack the rollout's sequences into rows of ``max_tokens_per_row`` for the training forward passes.

    attention: "block_mask" (4-D segment mask; SDPA/eager, CPU-safe) or "position_ids" (segments from
    restarting positions: flash-attention varlen on GPU). ``rope_index`` is the adapter's M-RoPE function.
    """

    max_tokens_per_row: int = 2048
    attention: str = "block_mask"

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens_per_row, bool) or not isinstance(self.max_tokens_per_row, int) \
                or self.max_tokens_per_row < 1:
            raise ValueError(f"packing.max_tokens_per_row: expected an int >= 1, received {self.max_tokens_per_row!r}")
        if self.attention not in ("block_mask", "position_ids"):
            raise ValueError(f"packing.attention: expected 'block_mask' or 'position_ids', received {self.attention!r}")


def sequence_logprobs(
    model, batch, temperature: float = 1.0, chunk_size: int | None = None, with_entropy: bool = False,
    packing: PackingSettings | None = None, rope_index=None,
) -> tuple[Tensor, Tensor | None]:
    """Next-token log-probs [B, T-1] of ``batch.input_ids[:, 1:]`` under ``model`` (and entropies [B, T-1]).

    logp[b, t] = log softmax(logits[b, t] / temperature)[input_ids[b, t + 1]]; align masks with
    ``batch.loss_mask[:, 1:]``. Entropy is computed without gradient (it is only logged). With
    ``packing`` the forward runs on packed rows (``prismrl.data.packing``) and the values are unpacked
    to the same [B, T-1] layout (a sequence's first token, never a completion token, gets 0).
    """
    packed = None
    if packing is None:
        logits = model(**batch.model_inputs(), use_cache=False).logits  # [B, T, V]
        input_ids = batch.input_ids
    else:
        from prismrl.data.packing import pack_sequences

        packed = pack_sequences(batch, packing.max_tokens_per_row, rope_index=rope_index)
        dtype = next(model.parameters()).dtype
        inputs = packed.model_inputs(packing.attention, dtype=dtype if dtype.is_floating_point else torch.float32)
        logits = model(**inputs).logits  # [R, L, V]
        input_ids = packed.input_ids
    if temperature != 1.0:
        logits = logits / temperature
    shifted, targets = shift_for_causal_lm(logits, input_ids)  # [*, T-1, V], [*, T-1]
    logprobs = token_logprobs(shifted, targets, chunk_size)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(shifted.detach(), chunk_size)
    if packed is not None:
        logprobs = packed.unpack_shifted(logprobs)
        entropy = packed.unpack_shifted(entropy) if entropy is not None else None
    return logprobs, entropy


def minibatches(num_rows: int, minibatch_size: int | None, generator: torch.Generator | None = None) -> list[Tensor]:
    """A shuffled split of range(num_rows) into minibatches (one batch of all rows when size is None)."""
    if minibatch_size is None or minibatch_size >= num_rows:
        return [torch.arange(num_rows)]
    order = torch.randperm(num_rows, generator=generator)
    return list(order.split(minibatch_size))
