"""Generator PPO over several ranks: one classifier reward for the global batch, global advantage statistics.

With W ranks each holding B_r generations (rank r's rows at offset o_r = sum_{q<r} B_q of the global batch):

    (texts, labels, valid) of every rank  --all_gather-->  the global batch of N = sum_r B_r rows (rank order)
    R = ClassifierReward(global batch, normalizer)          on every rank
    rank r keeps R[o_r : o_r + B_r]

The classifier is reset, trained and evaluated on the same N examples on every rank (the caller seeds the RNG
with the same seed on every rank, for the classifier's minibatches and dropout), and each rank's normalizer takes
the same update, so every rank holds the same classifier and normalizer state (one state to checkpoint) and the
rewards equal those of one process holding the whole batch. ``whiten_global`` and ``token_share`` make the
advantage whitening and the token-mean PPO loss those of the global batch too.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from prismrl.rewards.classifier import ClassifierReward, RewardResult
from prismrl.rewards.normalizer import RewardNormalizer


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def run_seed() -> int:
    """The run's seed (``seed_everything``'s PL_GLOBAL_SEED, the same on every rank)."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))


def global_classifier_reward(reward_fn: ClassifierReward, texts: Sequence[str], labels: Sequence[int],
                             valid: Sequence[bool], normalizer: RewardNormalizer) -> RewardResult:
    """This rank's rewards [B_r] from ``reward_fn`` applied to every rank's generations (see the module
    docstring). The other fields of the result (golden metrics, raw / normalized means, num_valid) describe the global batch."""
    if not len(texts) == len(labels) == len(valid):
        raise ValueError(f"texts / labels / valid: expected equal lengths, received {len(texts)} / {len(labels)} / {len(valid)}")
    local = (list(texts), [int(y) for y in labels], [bool(v) for v in valid])
    parts = [local]
    if _world() > 1:
        parts = [None] * _world()
        dist.all_gather_object(parts, local)
    start = sum(len(p[0]) for p in parts[:dist.get_rank()]) if len(parts) > 1 else 0
    everything = [[x for p in parts for x in p[i]] for i in range(3)]  # texts, labels, valid in rank order
    result = reward_fn(*everything, normalizer)
    return dataclasses.replace(result, rewards=result.rewards[start:start + len(texts)])


def _all_sum(values: Tensor) -> Tensor:
    if _world() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


@torch.no_grad()
def whiten_global(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - m) / sqrt(v + eps) over the masked entries of every rank; masked-out entries become 0.

    n = sum_ranks sum mask, m = sum_ranks sum mask * x / n, v = sum_ranks sum mask * (x - m)^2 / (n - 1): PPO's
    whitening (``prismrl.rl.advantages.whiten``) of the concatenated batch. Fewer than 2 entries: x unchanged.
    x, mask: [B, T].
    """
    m = mask.to(torch.float64)
    moments = _all_sum(torch.stack([m.sum(), (x.double() * m).sum()]))  # [n, sum x]
    n = moments[0]
    mean = moments[1] / n.clamp(min=1.0)
    var = _all_sum(((x.double() - mean) ** 2 * m).sum()) / (n - 1.0).clamp(min=1.0)
    out = ((x.double() - mean) * torch.rsqrt(var + eps)).to(x.dtype)  # [B, T]
    out = torch.where(n >= 2, out, x)
    return torch.where(mask.bool(), out, torch.zeros((), dtype=x.dtype, device=x.device))


@torch.no_grad()
def token_share(mask: Tensor) -> Tensor:
    """W * n_local / n_global for a [B, T] token mask: a token-mean loss times this factor, averaged over ranks
    (DDP / FSDP2 gradient averaging), has the gradient of the token mean over every rank's tokens. 1 on one rank."""
    world = _world()
    if world == 1:
        return torch.ones((), device=mask.device)
    local = mask.float().sum()
    return world * local / _all_sum(local).clamp(min=1.0)
