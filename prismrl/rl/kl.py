"""Per-token estimators of KL(pi || pi_ref) from the log-probs of sampled tokens, pure torch.

With tokens sampled from pi and d = log pi_ref(y) - log pi(y) (Schulman, "Approximating KL divergence"):

    K1 = -d                     = logp - ref        unbiased, high variance, can be negative
    K2 = 0.5 * d^2              = 0.5 (logp - ref)^2 biased, low variance, >= 0
    K3 = exp(d) - d - 1                              unbiased, low variance, >= 0 ("low_var_kl", GRPO)
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
from torch import Tensor

from prismrl.rl.advantages import check_shape


class KLEstimator(Enum):
    """Which per-token KL estimator ``kl_penalty`` computes."""

    K1 = "k1"
    K2 = "k2"
    K3 = "k3"


def _k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return logprobs - ref_logprobs


def _k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return 0.5 * (logprobs - ref_logprobs) ** 2


def _k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1.0


KL_ESTIMATORS: dict[KLEstimator, Callable[[Tensor, Tensor], Tensor]] = {
    KLEstimator.K1: _k1,
    KLEstimator.K2: _k2,
    KLEstimator.K3: _k3,
}


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    estimator: KLEstimator = KLEstimator.K3,
    clamp: float | None = None,
) -> Tensor:
    """Per-token KL estimate [B, T] of the policy ``logprobs`` [B, T] against ``ref_logprobs`` [B, T].

    See the module docstring for K1/K2/K3. ``clamp`` (e.g. 10.0, what verl applies to K3) bounds the
    estimate to [-clamp, clamp]; beyond it the gradient is zero, which guards training against the
    exp(d) blow-up of K3 when the policy drifts far from the reference. None (default) leaves it exact.
    Gradients flow into ``logprobs`` (and ``ref_logprobs`` if it requires grad).
    """
    if not isinstance(estimator, KLEstimator):
        raise TypeError(f"estimator: expected a KLEstimator, received {estimator!r}")
    check_shape("ref_logprobs", ref_logprobs, logprobs.shape)
    if clamp is not None and not clamp > 0:
        raise ValueError(f"clamp: expected a positive float or None, received {clamp!r}")
    kl = KL_ESTIMATORS[estimator](logprobs, ref_logprobs)  # [B, T]
    return kl if clamp is None else kl.clamp(min=-clamp, max=clamp)
