"""Log-probs of a group rollout with the prompt prefix run once per group, not once per completion.

A GRPO batch holds G completions of each prompt, G consecutive rows per group, right-padded prompt +
completion (``VLMAdapter.append_completions``); the prompt is usually most of each row. With L0 = the first
completion position of the batch (every row's first L0 tokens are prompt tokens, identical within a group):

    prefix  (h, cache) = model(x[g, :L0])                 for one row g of each group      [P, L0]
    rest    h'         = model(x[:, L0:] | cache repeated G times)                        [B, T - L0]
    logp[b, t]         = log softmax(head(h[b, t]) / temperature)[x[b, t + 1]],  t >= L0 - 1, at loss_mask only

which is the full forward's result (the same causal attention over the same keys) at about
(L0 / G + T - L0) / T of its decoder work, in the training forward and backward too: the prefix's keys and
values are repeated G times with autograd, so each group's prefix gets the sum of its G rows' gradients.
Under gradient checkpointing a decoder layer's forward is replayed in backward; the prefix pass's cache then
records the replayed states again (``_RecordingLayer``) and the completion pass's cache only reads (``_ReadingLayer``),
so a replay sees what the first forward saw. Only for text batches the hidden-state path supports
(``prismrl.policy.token_logprobs``); ``shared_prefix_logprobs`` returns None otherwise.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from prismrl.policy.token_logprobs import hidden_logprobs_supported, output_head, verify_head
from prismrl.rl.hidden_logprobs import hidden_token_logprobs


def _prefix_length(batch, group_size: int) -> int:
    """L0 when ``batch`` qualifies (text only, groups of equal prefixes), else 0."""
    if batch.pixel_values is not None or batch.position_ids is not None or batch.extra_model_kwargs:
        return 0
    rows, width = batch.input_ids.shape
    if rows % group_size or not bool(batch.loss_mask.any()):
        return 0
    first = int(batch.loss_mask.bool().float().argmax(1)[batch.loss_mask.bool().any(1)].min())
    ids = batch.input_ids[:, :first].view(rows // group_size, group_size, first)  # [P, G, L0]
    same = bool((ids == ids[:, :1]).all()) and bool(batch.attention_mask[:, :first].bool().all())
    return first if same and 1 < first < width else 0


class _RecordingLayer(DynamicLayer):
    """The prefix pass: keeps the states it is given (a checkpointed replay replaces them), returns them as they are."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _ReadingLayer(DynamicLayer):
    """The completion pass: prefix + new states, stored nowhere (a checkpointed replay gets the same keys)."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.reads = keys, values, 0

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self.reads += 1
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


@contextlib.contextmanager
def _cache_through_checkpointing(model):
    """Let checkpointed decoder layers keep the cache argument (transformers drops it unless a layer only reads,
    ``_can_checkpoint_with_cache``; both caches here replay safely). Yields False where a checkpointed layer has no
    such switch (an older transformers): the caller then takes the full forward."""
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    if not (model.training and torch.is_grad_enabled()) or not layers:
        yield True
        return
    if not hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache"):
        yield False
        return
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield True
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache  # back to the class's False


def shared_prefix_logprobs(model, batch, group_size: int, temperature: float = 1.0, chunk_size: int | None = None,
                           with_entropy: bool = False) -> tuple[Tensor, Tensor | None] | None:
    """([B, T-1] log-probs, entropies or None) at ``batch.loss_mask[:, 1:]`` (0 elsewhere), the shared prefix run
    once per group, with or without grad; None where the batch or model does not qualify (see the module docstring)."""
    if not hidden_logprobs_supported(model):
        return None
    first = _prefix_length(batch, group_size)
    if not first:
        return None
    head = output_head(model)
    ids, mask = batch.input_ids, batch.attention_mask  # [B, T]
    with _cache_through_checkpointing(model) as supported:
        if not supported:
            return None
        recorded = DynamicCache()
        recorded.layer_class_to_replicate = _RecordingLayer
        prefix = model(input_ids=ids[::group_size, :first], attention_mask=mask[::group_size, :first],
                       past_key_values=recorded, use_cache=True, output_hidden_states=True, logits_to_keep=1)
        if len(recorded.layers) == 0 or not all(isinstance(layer, _RecordingLayer) for layer in recorded.layers):
            return None  # a model that keeps its own cache type
        if not verify_head(model, head, prefix.hidden_states[-1][:, -1], prefix.logits[:, -1]):
            return None  # the first forward of a model checks its head here, so a run's path never depends on it
        reading = DynamicCache()
        reading.layer_class_to_replicate = None
        reading.layers = [_ReadingLayer(layer.keys.repeat_interleave(group_size, dim=0),
                                        layer.values.repeat_interleave(group_size, dim=0)) for layer in recorded.layers]
        rest = model(input_ids=ids[:, first:], attention_mask=mask, past_key_values=reading, use_cache=True,
                     output_hidden_states=True, logits_to_keep=1)
        if not all(layer.reads for layer in reading.layers):
            return None  # some layer ran without the prefix (a model that drops the cache somewhere)
    last = prefix.hidden_states[-1][:, -1:].repeat_interleave(group_size, dim=0)  # [B, 1, H]: position L0 - 1
    hidden = torch.cat([last, rest.hidden_states[-1][:, :-1]], dim=1)  # [B, T - L0, H]: positions L0-1 .. T-2
    positions = batch.loss_mask[:, first:].bool()  # [B, T - L0]: targets x[:, L0:]
    kept, entropy = hidden_token_logprobs(hidden[positions].unsqueeze(0), head.head,
                                          ids[:, first:][positions].unsqueeze(0), head.vocab_size, temperature,
                                          chunk_size, with_entropy, head.logit_scale, head.softcap)  # [1, n]

    def scatter(values: Tensor) -> Tensor:  # [1, n] -> [B, T-1], 0 before L0 - 1 and off the completion
        out = values.new_zeros(ids.shape[0], ids.shape[1] - 1)
        return torch.cat([out[:, :first - 1], out[:, first - 1:].masked_scatter(positions, values[0])], dim=1)

    return scatter(kept), scatter(entropy) if entropy is not None else None
