"""Policy log-probs from the last hidden states, through the LM head in blocks (no [B, T, V] logits).

``policy_logprobs`` (GRPO) and ``policy_logprobs_and_values`` (generator PPO) run the model once with
``output_hidden_states=True`` and ``logits_to_keep=1`` (logits for the last position only), then
score the next tokens with ``prismrl.rl.hidden_logprobs.hidden_token_logprobs``: blocks of rows go
through the output head one at a time, in forward and (checkpointed) backward alike.

``output_head(model)`` finds the head of an HF causal LM / VLM, also inside a peft model (a LoRA on
``lm_head`` is part of the head; a tied embedding is just the head's weight) and the family's logit
post-processing: ``final_logit_softcapping`` (Gemma-2/3), ``logit_scale`` (Cohere, multiplies),
``logits_scaling`` (Granite, divides). The first call on a model checks that the head applied to the
last hidden state reproduces the model's own last-position logits; models where it does not (or with
no ``get_output_embeddings``, that refuse ``logits_to_keep``, or FSDP2-sharded ones) are reported
unsupported, and the two entry points then fall back to the full-logits path (``sequence_logprobs`` /
``logprobs_and_values``).
"""

from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prismrl.backbones.sharding import is_sharded
from prismrl.policy.rollout import PackingSettings, sequence_logprobs
from prismrl.rl.hidden_logprobs import hidden_token_logprobs
from prismrl.rl.ppo import ValueHead, logprobs_and_values


@dataclass(frozen=True)
class OutputHead:
    """The output head [c, H] -> [c, V] of a causal LM and its logit post-processing."""

    head: Callable[[Tensor], Tensor]
    vocab_size: int
    logit_scale: float = 1.0
    softcap: float | None = None


_VERIFIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> unsupported reason ("" = ok)


def output_head(model: nn.Module) -> OutputHead:
    """The head of ``model`` (HF causal LM / VLM, peft-wrapped or not); TypeError / ValueError naming what is
    missing."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module):
        raise TypeError(f"model: expected an HF causal LM with get_output_embeddings() returning a module, "
                         f"received {type(model).__name__} with {type(head).__name__}")
    weight = getattr(head, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"model.lm_head: expected a module with a 2-D weight [V, H], received {type(head).__name__}")
    config = getattr(model, "config", None)
    configs = [c for c in (config, getattr(config, "get_text_config", lambda: None)()) if c is not None]

    def setting(name: str) -> float | None:
        values = [getattr(c, name, None) for c in configs]
        return next((float(v) for v in values if v is not None), None)

    scale = setting("logit_scale") or 1.0
    if setting("logits_scaling") is not None:
        scale = scale / setting("logits_scaling")
    return OutputHead(head, int(weight.shape[0]), scale, setting("final_logit_softcapping"))


def _unsupported(model: nn.Module) -> str:
    """Why ``model`` cannot take the hidden-state path ("" when it can, as far as known before a forward)."""
    try:
        output_head(model)
    except (TypeError, ValueError) as error:
        return str(error)
    if is_sharded(model):  # FSDP2 reshards the head's weight after the forward: calling it again needs a gather
        return f"model: {type(model).__name__} is FSDP2-sharded"
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return f"model: {type(base).__name__}.forward takes no logits_to_keep"
    try:
        return _VERIFIED.get(model, "")
    except TypeError:  # not weak-referenceable
        return f"model: {type(model).__name__} cannot be weak-referenced"


def hidden_logprobs_supported(model: nn.Module) -> bool:
    """False where ``output_head`` refuses ``model``, its forward takes no ``logits_to_keep``, or the first
    forward found the head on the last hidden state differs from the model's own logits."""
    return not _unsupported(model)


def hidden_logprobs_checked(model: nn.Module) -> bool:
    """True once a forward on ``model`` found its head reproduces the model's own logits (and it is supported)."""
    return hidden_logprobs_supported(model) and model in _VERIFIED


def _last_hidden(model: nn.Module, inputs: dict, head: OutputHead) -> Tensor | None:
    """Last hidden states [B, T, H] of one forward; the first call on a model checks the head against the
    model's own last-position logits and returns None (with a warning) when they differ."""
    out = model(**inputs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
    hidden = out.hidden_states[-1]  # [B, T, H]
    return hidden if verify_head(model, head, hidden[:, -1], out.logits[:, -1]) else None


def verify_head(model: nn.Module, head: OutputHead, last_hidden: Tensor, last_logits: Tensor) -> bool:
    """Whether ``head`` on the last hidden states [B, H] reproduces the model's own last-position logits [B, V];
    checked on the first forward of ``model`` only (later calls return the recorded answer; a mismatch warns once)."""
    if model not in _VERIFIED:
        with torch.no_grad():
            mine = head.head(last_hidden).float() * head.logit_scale  # [B, V]
            if head.softcap is not None:
                mine = torch.tanh(mine / head.softcap) * head.softcap
            theirs = last_logits.float()  # [B, V]
            same_shape = theirs.shape == mine.shape
            gap = float((mine - theirs).abs().max()) if same_shape and theirs.numel() else 0.0
            tolerance = 1e-3 + 2e-2 * float(theirs.abs().max()) if theirs.numel() else 0.0
        _VERIFIED[model] = "" if same_shape and gap <= tolerance else (
            f"model: the output head on the last hidden state differs from {type(model).__name__}'s own "
            f"logits (max gap {gap:.3g}, shapes {tuple(mine.shape)} vs {tuple(theirs.shape)})")
        if _VERIFIED[model]:
            warnings.warn(f"{_VERIFIED[model]}; computing log-probs from full logits instead", stacklevel=4)
    return not _VERIFIED[model]


def policy_logprobs(
    model, batch, temperature: float = 1.0, chunk_size: int | None = None, with_entropy: bool = False,
    packing: PackingSettings | None = None, rope_index=None, positions: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``sequence_logprobs`` (same arguments and results: [B, T-1] log-probs, detached entropies) from the
    last hidden states through the output head in blocks; the full-logits path where unsupported.

    ``positions`` [B, T-1] bool (e.g. ``loss_mask[:, 1:]``; unpacked batches only): the head runs on these
    positions alone (a GRPO batch's prompt positions are most of the rows) and the others get 0."""
    if _unsupported(model):
        return sequence_logprobs(model, batch, temperature, chunk_size, with_entropy, packing, rope_index)
    head = output_head(model)
    packed = None
    if packing is None:
        inputs, input_ids = batch.model_inputs(), batch.input_ids  # input_ids [B, T]
    else:
        from prismrl.policy.packing import pack_sequences

        packed = pack_sequences(batch, packing.max_tokens_per_row, rope_index=rope_index)
        dtype = next(model.parameters()).dtype
        inputs = packed.model_inputs(packing.attention, dtype=dtype if dtype.is_floating_point else torch.float32)
        inputs.pop("use_cache", None)
        input_ids = packed.input_ids  # [R, L]
    hidden = _last_hidden(model, inputs, head)  # [*, T, H]
    if hidden is None:
        return sequence_logprobs(model, batch, temperature, chunk_size, with_entropy, packing, rope_index)
    if positions is not None and packed is None:
        return _at_positions(hidden[:, :-1], head, input_ids[:, 1:], positions.bool(), temperature, chunk_size,
                             with_entropy)
    logprobs, entropy = hidden_token_logprobs(hidden[:, :-1], head.head, input_ids[:, 1:], head.vocab_size,
                                              temperature, chunk_size, with_entropy, head.logit_scale, head.softcap)
    if packed is not None:
        logprobs = packed.unpack_shifted(logprobs)
        entropy = packed.unpack_shifted(entropy) if entropy is not None else None
    return logprobs, entropy


def _at_positions(hidden: Tensor, head: OutputHead, targets: Tensor, positions: Tensor, temperature: float,
                  chunk_size: int | None, with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropies) [B, T-1] of ``targets`` at ``positions`` [B, T-1] only, 0 elsewhere."""
    if positions.shape != targets.shape:
        raise ValueError(f"positions: expected shape {tuple(targets.shape)}, received {tuple(positions.shape)}")
    rows, tokens = hidden[positions].unsqueeze(0), targets[positions].unsqueeze(0)  # [1, n, H], [1, n]
    kept, entropy = hidden_token_logprobs(rows, head.head, tokens, head.vocab_size, temperature, chunk_size,
                                          with_entropy, head.logit_scale, head.softcap)  # [1, n]
    logprobs = kept.new_zeros(targets.shape).masked_scatter(positions, kept[0])  # [B, T-1]
    if entropy is not None:
        entropy = entropy.new_zeros(targets.shape).masked_scatter(positions, entropy[0])
    return logprobs, entropy


def policy_logprobs_and_values(
    model: nn.Module, value_head: ValueHead | None, model_inputs: dict, loss_mask: Tensor,
    temperature: float = 1.0, chunk_size: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``prismrl.rl.ppo.logprobs_and_values`` (log-probs [B, T-1], values [B, T-1] or None) from the last
    hidden states through the output head in blocks; the full-logits path where unsupported."""
    if _unsupported(model):
        return logprobs_and_values(model, value_head, model_inputs, loss_mask, temperature, chunk_size)
    head = output_head(model)
    input_ids = model_inputs["input_ids"]  # [B, T]
    rows = loss_mask.bool().any(1)
    first = int(loss_mask.bool().float().argmax(1)[rows].min()) if bool(rows.any()) else input_ids.shape[1] - 1
    start = max(first - 1, 0)  # position first - 1 predicts the first completion token; earlier ones are masked
    hidden = _last_hidden(model, model_inputs, head)  # [B, T, H]
    if hidden is None:
        return logprobs_and_values(model, value_head, model_inputs, loss_mask, temperature, chunk_size)
    kept, _ = hidden_token_logprobs(hidden[:, start:-1], head.head, input_ids[:, start + 1:], head.vocab_size,
                                    temperature, chunk_size, False, head.logit_scale, head.softcap)  # [B, T-1-start]
    logprobs = torch.cat([kept.new_zeros(kept.shape[0], start), kept], dim=1)  # [B, T-1]
    values = value_head(hidden[:, :-1]) if value_head is not None else None  # [B, T-1]
    return logprobs, values
