"""PPO pieces for a token-level language policy with a value head, pure torch.

Per rollout of B sequences (completion tokens marked by ``mask`` [B, T], T = next-token positions):

    r_t = -kl_coef * KL_t                      for every completion token
    r_T_last += R                              the sequence-level reward R at the last completion token
    (A, G) = GAE(r, V_old, mask, gamma, lam)   (``prismrl.rl.advantages.gae``)
    L = PPO-clip(logp, logp_old, A) + value_coef * clipped value loss(V, V_old, G)

KL_t compares the policy's log-prob of the sampled token with the reference model's (``prismrl.rl.kl``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prismrl.rl.advantages import check_shape, masked_mean
from prismrl.rl.logprobs import token_logprobs
from prismrl.rl.policy_loss import LossAggregation, aggregate_loss, clipped_surrogate
from prismrl.rl.value_loss import clipped_value_loss, value_clip_fraction


class ValueHead(nn.Module):
    """V(h_t) = w . h_t + b on the policy's last hidden states [B, T, H] -> [B, T] (float32)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def logprobs_and_values(
    model: nn.Module,
    value_head: ValueHead | None,
    model_inputs: dict,
    loss_mask: Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One forward: next-token log-probs [B, T-1] of ``input_ids[:, 1:]`` (logits / temperature) and, with a
    value head, the values [B, T-1] of the states that produced them (position t predicts token t + 1).

    Only the positions from the batch's first completion token on (``loss_mask`` [B, T], 1 on completion
    tokens) get logits (``logits_to_keep``), so long prompts never materialize [B, T, V] logits; the
    log-probs of earlier positions are 0 (they are masked out anyway).
    """
    input_ids = model_inputs["input_ids"]  # [B, T]
    rows = loss_mask.bool().any(1)
    first = int(loss_mask.bool().float().argmax(1)[rows].min()) if bool(rows.any()) else input_ids.shape[1] - 1
    start = max(first - 1, 0)  # the logits at position first - 1 predict the first completion token
    out = model(**model_inputs, output_hidden_states=value_head is not None, use_cache=False,
                logits_to_keep=input_ids.shape[1] - start)
    logits = out.logits[:, :-1]  # [B, T-1-start, V] predicting input_ids[:, start+1:]
    if temperature != 1.0:
        logits = logits / temperature
    kept = token_logprobs(logits, input_ids[:, start + 1:], chunk_size)  # [B, T-1-start]
    logprobs = torch.cat([kept.new_zeros(kept.shape[0], start), kept], dim=1)  # [B, T-1]
    values = value_head(out.hidden_states[-1][:, :-1]) if value_head is not None else None  # [B, T-1]
    return logprobs, values


def sequence_end_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards [B, T]: -kl_coef * kl on the masked tokens, plus ``scores`` [B] at each row's last
    masked token (a row without tokens gets nothing)."""
    check_shape("kl", kl, mask.shape)
    check_shape("scores", scores, mask.shape[:1])
    m = mask.to(kl.dtype)
    rewards = -kl_coef * kl * m  # [B, T]
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # [B, T]
    last = torch.where(mask.bool(), positions, -1).amax(dim=1)  # [B], -1 = no token
    rows = (last >= 0).nonzero().flatten()
    rewards[rows, last[rows]] += scores[rows].to(rewards.dtype)
    return rewards


def ppo_loss(
    logprobs: Tensor,
    values: Tensor,
    old_logprobs: Tensor,
    old_values: Tensor,
    advantages: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float = 0.2,
    value_clip_range: float = 0.2,
    value_coef: float = 0.5,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = token-mean PPO-clip policy loss + value_coef * clipped value loss; all inputs [B, T].

    Returns (loss, detached stats: policy_loss, value_loss, clip_frac, value_clip_frac, approx_kl, ratio_mean)
    with approx_kl = masked mean of 0.5 * (logp - logp_old)^2.
    """
    per_token, surrogate = clipped_surrogate(logprobs, old_logprobs, advantages, clip_range, mask=mask)  # [B, T]
    policy = aggregate_loss(per_token, mask, LossAggregation.BNPO)
    value = clipped_value_loss(values, old_values, returns, mask, value_clip_range)
    m = mask.to(logprobs.dtype)
    with torch.no_grad():
        stats = {
            "policy_loss": policy.detach(),
            "value_loss": value.detach(),
            "clip_frac": surrogate.clip_frac,
            "value_clip_frac": value_clip_fraction(values, old_values, m, value_clip_range),
            "approx_kl": masked_mean(0.5 * (logprobs - old_logprobs) ** 2, m),
            "ratio_mean": surrogate.ratio_mean,
        }
    return policy + value_coef * value, stats
