"""No-grad log-probs of a group rollout with the prompt prefix run once per group, not once per completion.

A GRPO batch holds G completions of each prompt, G consecutive rows per group, right-padded prompt +
completion (``VLMAdapter.append_completions``); the prompt is usually most of each row. With L0 = the first
completion position of the batch (every row's first L0 tokens are prompt tokens, identical within a group):

    prefix  (h, cache) = model(x[g, :L0])                 for one row g of each group      [P, L0]
    rest    h'         = model(x[:, L0:] | cache repeated G times)                        [B, T - L0]
    logp[b, t]         = log softmax(head(h[b, t]) / temperature)[x[b, t + 1]],  t >= L0 - 1, at loss_mask only

which is the full forward's result (the same causal attention over the same keys) at about
(L0 / G + T - L0) / T of its decoder work. Only for text batches the hidden-state path supports
(``prismrl.policy.token_logprobs``), in eval mode, without grad; ``shared_prefix_logprobs`` returns None otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prismrl.policy.token_logprobs import hidden_logprobs_checked, output_head
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


@torch.no_grad()
def shared_prefix_logprobs(model, batch, group_size: int, temperature: float = 1.0,
                           chunk_size: int | None = None) -> Tensor | None:
    """[B, T-1] log-probs at ``batch.loss_mask[:, 1:]`` (0 elsewhere), the shared prefix run once per group;
    None where the batch or model does not qualify (see the module docstring)."""
    if model.training or not hidden_logprobs_checked(model):  # a model not yet checked takes the plain path once
        return None
    first = _prefix_length(batch, group_size)
    if not first:
        return None
    head = output_head(model)
    ids, mask = batch.input_ids, batch.attention_mask  # [B, T]
    prefix = model(input_ids=ids[::group_size, :first], attention_mask=mask[::group_size, :first], use_cache=True,
                   output_hidden_states=True, logits_to_keep=1)
    cache = prefix.past_key_values
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(group_size)
    rest = model(input_ids=ids[:, first:], attention_mask=mask, past_key_values=cache, use_cache=True,
                 output_hidden_states=True, logits_to_keep=1)
    last = prefix.hidden_states[-1][:, -1:].repeat_interleave(group_size, dim=0)  # [B, 1, H]: position L0 - 1
    hidden = torch.cat([last, rest.hidden_states[-1][:, :-1]], dim=1)  # [B, T - L0, H]: positions L0-1 .. T-2
    positions = batch.loss_mask[:, first:].bool()  # [B, T - L0]: targets x[:, L0:]
    kept, _ = hidden_token_logprobs(hidden[positions].unsqueeze(0), head.head, ids[:, first:][positions].unsqueeze(0),
                                    head.vocab_size, temperature, chunk_size, False, head.logit_scale, head.softcap)
    out = kept.new_zeros(ids.shape[0], ids.shape[1] - 1)  # [B, T-1]
    out[:, first - 1:] = out[:, first - 1:].masked_scatter(positions, kept[0])
    return out
