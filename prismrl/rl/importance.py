"""Rollout-engine / trainer log-prob mismatch and truncated importance sampling (TIS), pure torch.

A rollout engine (vLLM) samples with its own kernels and precision, so the log-probs it assigns to the tokens it
drew differ from the trainer's for the same weights. The policy gradient assumes samples from the trainer's
pi_old; truncated importance sampling reweights each completion token by

    w_t = min(exp(logp_trainer_t - logp_engine_t), C)

(the token's trainer / engine probability ratio, clipped at C; TRL's ``vllm_importance_sampling_correction``,
verl's TIS). The weight carries no gradient and multiplies the per-token policy loss (not the KL term).
"""

from __future__ import annotations

from torch import Tensor

from prismrl.choices import check_positive_float
from prismrl.rl.advantages import as_float_mask, check_shape


def truncated_importance_weights(trainer_logprobs: Tensor, engine_logprobs: Tensor, cap: float) -> Tensor:
    """w = min(exp(trainer - engine), cap) per token [B, T], without gradient (log-ratio clamped at +-20)."""
    check_positive_float("cap", cap)
    check_shape("engine_logprobs", engine_logprobs, trainer_logprobs.shape)
    log_ratio = (trainer_logprobs.detach() - engine_logprobs.to(trainer_logprobs.dtype)).clamp(-20.0, 20.0)
    return log_ratio.exp().clamp(max=cap)


def logprob_mismatch(trainer_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Mean and max |trainer - engine| log-prob over the ``mask``ed tokens (0 when the mask is empty)."""
    check_shape("engine_logprobs", engine_logprobs, trainer_logprobs.shape)
    m = as_float_mask(mask, trainer_logprobs)
    diff = (trainer_logprobs.detach() - engine_logprobs.to(trainer_logprobs.dtype)).abs() * m
    count = m.sum()
    mean = diff.sum() / count.clamp(min=1.0)
    return {"engine_logprob_diff_mean": mean, "engine_logprob_diff_max": diff.max() if diff.numel() else mean}
