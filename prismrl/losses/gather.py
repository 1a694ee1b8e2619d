"""Gather per-rank feature batches into one global batch (pure torch).

Every rank must pass a tensor of the same shape: collectives need equal sizes, so DDP data loaders
must give every rank the same local batch size (``drop_last=True`` or padding plus a pair mask).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    """(rank, world_size) of the default process group; (0, 1) when torch.distributed is unused."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: Tensor, gather_with_grad: bool = True) -> Tensor:
    """Concatenate ``features`` from all ranks in rank order: [B_local, ...] -> [B_local * world, ...].

    With one process (or torch.distributed not initialized) the input is returned unchanged.

    gather_with_grad=True uses ``torch.distributed.nn.functional.all_gather``: its backward sums the
    gradient every rank computed for slot r and hands it to rank r, so a rank's local features receive
    the gradient of *all* ranks' losses.
    gather_with_grad=False gathers without autograd and puts the local tensor (still attached to the
    graph) back into its own slot: gradients flow only from this rank's loss into its own features.
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"features: expected a torch.Tensor, received {type(features).__name__}")
    if features.dim() < 1:
        raise ValueError(f"features: expected at least one (batch) dimension, received shape {tuple(features.shape)}")
    rank, world = rank_and_world()
    if world == 1:
        return features
    if gather_with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(features), dim=0)  # [B_local * world, ...]
    parts = [torch.empty_like(features) for _ in range(world)]
    dist.all_gather(parts, features.detach().contiguous())
    parts[rank] = features  # keep the local slot differentiable
    return torch.cat(parts, dim=0)  # [B_local * world, ...]
