"""Clipped policy-gradient objective (PPO / GRPO), loss aggregation variants, and a GRPO convenience loss.

Per token (ratio rho = pi / pi_old of the sampled token):

    L_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)  (+ beta * KL_t for GRPO)

How the [B, T] per-token losses become one scalar (m = mask, L_max = max_completion_length):

    GRPO     mean_b(sum_t m L / max(sum_t m, 1))        per-sequence mean, then batch mean
    BNPO     sum m L / max(sum m, 1)                    token mean over this batch
    DAPO     world_size * sum m L / global_token_count  token mean over every token of the optimizer step
    DR_GRPO  sum m L / (B * L_max)                      constant normalizer, no length bias

(verl's loss_agg_mode names: GRPO = seq-mean-token-mean, BNPO = token-mean, DR_GRPO =
seq-mean-token-sum-norm.)

BNPO and DAPO agree on one process without gradient accumulation. They differ once the step spans
several ranks or micro-batches whose token counts differ: BNPO weights each micro-batch equally,
DAPO weights each token of the whole step equally (``count_global_tokens`` gives the count).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum

import torch
import torch.distributed as dist
from torch import Tensor

from prismrl.choices import check_positive_int
from prismrl.rl.advantages import as_float_mask, check_shape, masked_mean, masked_sum
from prismrl.rl.kl import KLEstimator, kl_penalty
from prismrl.rl.objectives import PolicyObjective, cispo_per_token, importance_log_ratio

MAX_LOG_RATIO = 20.0  # |log rho| is clamped here before exp, so rho never overflows to inf


@dataclass(frozen=True)
class SurrogateStats:
    """Detached 0-dim statistics over the counted tokens of one clipped-surrogate call."""

    ratio_mean: Tensor  # mean of rho
    clip_frac_low: Tensor  # fraction with rho < 1 - eps_low and A < 0 (the lower clip is active)
    clip_frac_high: Tensor  # fraction with rho > 1 + eps_high and A > 0 (the upper clip is active)
    clip_frac: Tensor  # clip_frac_low + clip_frac_high

    def to_dict(self, prefix: str = "") -> dict[str, Tensor]:
        return {f"{prefix}{f.name}": getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class GRPOLossStats:
    """Detached statistics of ``grpo_loss``: aggregated policy term, masked token-mean KL, surrogate stats."""

    policy_loss: Tensor
    kl_mean: Tensor | None  # None when no reference log-probs were given
    surrogate: SurrogateStats

    def to_dict(self, prefix: str = "") -> dict[str, Tensor]:
        out = {f"{prefix}policy_loss": self.policy_loss, **self.surrogate.to_dict(prefix)}
        if self.kl_mean is not None:
            out[f"{prefix}kl_mean"] = self.kl_mean
        return out


def _check_eps(eps_low: float, eps_high: float) -> None:
    if not 0.0 <= eps_low < 1.0:
        raise ValueError(f"eps_low: expected a float in [0, 1), received {eps_low!r}")
    if not eps_high >= 0.0:
        raise ValueError(f"eps_high: expected a float >= 0, received {eps_high!r}")


def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    mask: Tensor | None = None,
    objective: PolicyObjective = PolicyObjective.PPO_CLIP,
) -> tuple[Tensor, SurrogateStats]:
    """Per-token clipped surrogate loss [B, T] and its stats.

        rho = exp(clamp(logp - logp_old, -20, 20))
        L   = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)

    ``objective`` (``prismrl.rl.objectives``): PPO_CLIP uses the token ratio; GSPO / GSPO_TOKEN the sequence ratio
    (length-normalized, clipped per sequence); CISPO the detached clipped ratio as a weight on -A * logp (the
    clip fractions then count clipped weights, whatever the sign of A).

    ``advantages`` is per sequence [B] (broadcast over tokens) or per token [B, T]. ``eps_high``
    defaults to ``eps_low`` (symmetric PPO clip; DAPO's clip-higher uses eps_high > eps_low). The
    log-ratio clamp only matters for |log rho| > 20, where the gradient becomes zero. ``mask`` [B, T]
    only affects the stats; aggregate the loss with ``aggregate_loss``.
    """
    eps_high = eps_low if eps_high is None else eps_high
    _check_eps(eps_low, eps_high)
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs: expected shape (B, T), received {tuple(logprobs.shape)}")
    check_shape("old_logprobs", old_logprobs, logprobs.shape)
    if advantages.dim() == 1:
        check_shape("advantages", advantages, logprobs.shape[:1])
        advantages = advantages.unsqueeze(1)  # [B, 1]
    else:
        check_shape("advantages", advantages, logprobs.shape)
    m = as_float_mask(mask, logprobs)  # [B, T]
    if objective is PolicyObjective.CISPO:
        per_token, ratio, clipped_weight = cispo_per_token(logprobs, old_logprobs, advantages, eps_low, eps_high)
        with torch.no_grad():
            frac_low = masked_mean((ratio < 1.0 - eps_low).to(m.dtype), m)
            frac_high = masked_mean((ratio > 1.0 + eps_high).to(m.dtype), m)
            stats = SurrogateStats(masked_mean(ratio, m), frac_low, frac_high, masked_mean(clipped_weight.to(m.dtype), m))
        return per_token, stats
    ratio = torch.exp(importance_log_ratio(logprobs, old_logprobs, m, objective))  # [B, T]
    unclipped = ratio * advantages  # [B, T]
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages  # [B, T]
    per_token = -torch.minimum(unclipped, clipped)  # [B, T]
    with torch.no_grad():
        low = ((ratio < 1.0 - eps_low) & (advantages < 0)).to(m.dtype)  # [B, T]
        high = ((ratio > 1.0 + eps_high) & (advantages > 0)).to(m.dtype)  # [B, T]
        frac_low, frac_high = masked_mean(low, m), masked_mean(high, m)
        stats = SurrogateStats(masked_mean(ratio, m), frac_low, frac_high, frac_low + frac_high)
    return per_token, stats


class LossAggregation(Enum):
    """How per-token losses reduce to a scalar; formulas in the module docstring."""

    GRPO = "grpo"
    BNPO = "bnpo"
    DAPO = "dapo"
    DR_GRPO = "dr_grpo"


@dataclass(frozen=True)
class _Normalizers:
    max_completion_length: int | None
    global_token_count: float | Tensor | None
    world_size: int


def _grpo(per_token: Tensor, mask: Tensor, _: _Normalizers) -> Tensor:
    per_sequence = masked_sum(per_token, mask, dim=1) / mask.sum(dim=1).clamp(min=1.0)  # [B]
    return per_sequence.mean()


def _bnpo(per_token: Tensor, mask: Tensor, _: _Normalizers) -> Tensor:
    return masked_sum(per_token, mask) / mask.sum().clamp(min=1.0)


def _dapo(per_token: Tensor, mask: Tensor, norm: _Normalizers) -> Tensor:
    if norm.global_token_count is None:
        return _bnpo(per_token, mask, norm)
    count = torch.as_tensor(norm.global_token_count, dtype=per_token.dtype, device=per_token.device)
    return masked_sum(per_token, mask) * norm.world_size / count.clamp(min=1.0)


def _dr_grpo(per_token: Tensor, mask: Tensor, norm: _Normalizers) -> Tensor:
    if norm.max_completion_length is None:
        raise ValueError("max_completion_length: expected a positive int for LossAggregation.DR_GRPO, received None")
    return masked_sum(per_token, mask) / (per_token.shape[0] * norm.max_completion_length)


LOSS_AGGREGATIONS: dict[LossAggregation, Callable[[Tensor, Tensor, _Normalizers], Tensor]] = {
    LossAggregation.GRPO: _grpo,
    LossAggregation.BNPO: _bnpo,
    LossAggregation.DAPO: _dapo,
    LossAggregation.DR_GRPO: _dr_grpo,
}


def aggregate_loss(
    per_token: Tensor,
    mask: Tensor,
    mode: LossAggregation = LossAggregation.GRPO,
    max_completion_length: int | None = None,
    global_token_count: float | Tensor | None = None,
    world_size: int = 1,
) -> Tensor:
    """Reduce a per-token loss [B, T] over the counted tokens of ``mask`` [B, T] to a scalar.

    Formulas per ``mode`` in the module docstring. Masked-out entries are dropped even when they hold
    NaN/inf. Zero-token rows never give NaN (denominators are clamped to >= 1): in GRPO mode such a
    row contributes 0 and still counts in the batch mean over B; a batch without tokens gives 0.
    ``max_completion_length`` is required by DR_GRPO. DAPO divides the local token sum by
    ``global_token_count`` (the counted tokens of the whole optimizer step, see ``count_global_tokens``)
    and multiplies by ``world_size``, the number of such losses the trainer averages (DDP ranks, times
    the gradient-accumulation steps when each micro-batch loss is divided by that number); the average
    is then sum over all tokens / global_token_count. Without ``global_token_count`` DAPO equals BNPO.
    """
    if not isinstance(mode, LossAggregation):
        raise TypeError(f"mode: expected a LossAggregation, received {mode!r}")
    if per_token.dim() != 2:
        raise ValueError(f"per_token: expected shape (B, T), received {tuple(per_token.shape)}")
    if max_completion_length is not None:
        check_positive_int("max_completion_length", max_completion_length)
    check_positive_int("world_size", world_size)
    m = as_float_mask(mask, per_token)  # [B, T]
    return LOSS_AGGREGATIONS[mode](per_token, m, _Normalizers(max_completion_length, global_token_count, world_size))


def count_global_tokens(mask: Tensor) -> Tensor:
    """Number of counted tokens in ``mask`` summed over all ranks (all-reduce when torch.distributed is up)."""
    count = mask.detach().to(torch.float32).sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
    return count


def grpo_loss(
    logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    old_logprobs: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    *,
    beta: float = 0.0,
    kl_estimator: KLEstimator = KLEstimator.K3,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    aggregation: LossAggregation = LossAggregation.GRPO,
    max_completion_length: int | None = None,
    global_token_count: float | Tensor | None = None,
    world_size: int = 1,
    objective: PolicyObjective = PolicyObjective.PPO_CLIP,
) -> tuple[Tensor, GRPOLossStats]:
    """GRPO objective: aggregate(clipped_surrogate + beta * KL(pi || pi_ref)) over ``mask``; returns (loss, stats).

    ``logprobs`` [B, T] carry the gradient; ``old_logprobs`` default to ``logprobs.detach()`` (one
    update per rollout, rho = 1 but the gradient is A * grad log pi). With ``beta > 0``
    ``ref_logprobs`` are required; when given with ``beta == 0`` the KL is only reported in the stats.
    """
    if beta < 0:
        raise ValueError(f"beta: expected a float >= 0, received {beta!r}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("ref_logprobs: expected a (B, T) tensor because beta > 0, received None")
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    per_token, surrogate = clipped_surrogate(logprobs, old, advantages, eps_low, eps_high, mask, objective)  # [B, T]
    m = as_float_mask(mask, logprobs)
    agg = dict(mode=aggregation, max_completion_length=max_completion_length,
               global_token_count=global_token_count, world_size=world_size)
    kl_mean = None
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)  # [B, T]
        kl_mean = masked_mean(kl.detach(), m)
        if beta > 0:
            policy_loss = aggregate_loss(per_token.detach(), m, **agg)
            return aggregate_loss(per_token + beta * kl, m, **agg), GRPOLossStats(policy_loss, kl_mean, surrogate)
    loss = aggregate_loss(per_token, m, **agg)
    return loss, GRPOLossStats(loss.detach(), kl_mean, surrogate)
