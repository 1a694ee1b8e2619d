"""Exact-resume, rank-aware data order for map-style datasets.

``ResumableSampler`` subclasses ``torch.utils.data.DistributedSampler``: its order is a pure function of
(seed, epoch) and it shards by (rank, world). Because it *is* a ``DistributedSampler``, Lightning leaves it
in place whether or not ``Trainer(use_distributed_sampler=...)`` is set (Lightning only injects its own
sampler when ``dataloader.sampler`` is not a ``DistributedSampler``); the DataModules build it from
``trainer.world_size`` / ``trainer.global_rank`` themselves.

``ResumableDataLoader`` adds the stateful protocol Lightning 2.6 looks for (``state_dict`` /
``load_state_dict``): the fit loop stores ``{"epoch", "batches_done"}`` in every checkpoint
(``loops.fit_loop.combined_loader``) and restores it before it creates the epoch's iterator. On a
mid-epoch resume the consumed batches are skipped by slicing the sampler's index list, so no skipped
sample is read or decoded.

``LoaderSettings`` groups what every DataModule takes about loading (YAML: ``data.init_args.loader.batch_size``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from prismrl.choices import check_positive_int, checkpoint_safe


@checkpoint_safe
@dataclass(frozen=True)
class LoaderSettings:
    """How a DataModule loads batches, shared by every DataModule.

    Workers are never persistent: the loaders hand each epoch's number to fresh workers (sampler order, masking
    and request seeds depend on it).

    Args:
        batch_size: samples per training batch (per rank).
        val_batch_size: samples per validation / test / predict batch (None = batch_size).
        num_workers: DataLoader worker processes (0 = load in the main process).
        pin_memory: page-locked host batches, for faster copies to a GPU.
    """

    batch_size: int = 32
    val_batch_size: int | None = None
    num_workers: int = 0
    pin_memory: bool = False

    def __post_init__(self) -> None:
        check_positive_int("loader.batch_size", self.batch_size)
        if self.val_batch_size is not None:
            check_positive_int("loader.val_batch_size", self.val_batch_size)
        check_positive_int("loader.num_workers", self.num_workers, minimum=0)
        if not isinstance(self.pin_memory, bool):
            raise ValueError(f"loader.pin_memory: expected a bool, received {self.pin_memory!r}")

    @property
    def eval_batch_size(self) -> int:
        """``val_batch_size``, or ``batch_size`` when it is None."""
        return self.batch_size if self.val_batch_size is None else self.val_batch_size

    def worker_kwargs(self) -> dict[str, Any]:
        """The ``DataLoader`` keyword arguments besides the batch size: ``num_workers`` and ``pin_memory``."""
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory}


def resolve_rank_world(trainer: Any | None = None) -> tuple[int, int]:
    """(global rank, world size) from a Lightning trainer, else torch.distributed, else (0, 1)."""
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def block_shuffle(block_sizes: Sequence[int], window: int, generator: torch.Generator) -> torch.Tensor:
    """Permutation of ``sum(block_sizes)`` positions that keeps reads local to a few blocks.

    Blocks (e.g. Parquet row groups, laid out contiguously) are permuted; then the positions inside each
    run of ``window`` consecutive permuted blocks are permuted together. A reader that caches ``window``
    blocks then reads every block once per epoch.
    """
    sizes = torch.as_tensor(list(block_sizes), dtype=torch.long)  # [G]
    starts = torch.cumsum(sizes, 0) - sizes  # [G]
    order = torch.randperm(len(sizes), generator=generator)  # [G]
    pieces = []
    for w in range(0, len(order), window):
        group = order[w : w + window]
        idx = torch.cat([torch.arange(int(starts[b]), int(starts[b] + sizes[b])) for b in group])
        pieces.append(idx[torch.randperm(len(idx), generator=generator)])
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)


class ResumableSampler(DistributedSampler):
    """Index order = f(seed, epoch), sharded by rank, with a one-shot start offset for resumes.

    Epoch order: ``randperm(N)`` seeded with ``seed + epoch`` (or ``block_shuffle`` when ``block_sizes``
    is given, or ``arange(N)`` when ``shuffle=False``); padded by wrapping around (``drop_last=False``) or
    trimmed (``drop_last=True``) to ``world * num_samples``; rank r takes the contiguous slice
    ``[r * num_samples, (r + 1) * num_samples)``. ``start_index`` positions of that slice are skipped by
    the next ``__iter__`` only, then reset to 0.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        block_sizes: Sequence[int] | None = None,
        blocks_per_window: int = 1,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        if block_sizes is not None and sum(block_sizes) != len(dataset):
            raise ValueError(f"block_sizes: expected sizes summing to {len(dataset)}, got sum {sum(block_sizes)}")
        if blocks_per_window < 1:
            raise ValueError(f"blocks_per_window: expected >= 1, got {blocks_per_window}")
        self.block_sizes = list(block_sizes) if block_sizes is not None else None
        self.blocks_per_window = blocks_per_window
        self.start_index = 0

    def epoch_order(self, epoch: int) -> list[int]:
        """All N dataset positions in this epoch's order (before padding and rank slicing)."""
        n = len(self.dataset)
        if not self.shuffle:
            return list(range(n))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if self.block_sizes is not None:
            return block_shuffle(self.block_sizes, self.blocks_per_window, generator).tolist()
        return torch.randperm(n, generator=generator).tolist()

    def rank_indices(self, epoch: int) -> list[int]:
        """This rank's ``num_samples`` positions for ``epoch``."""
        indices = self.epoch_order(epoch)
        if self.drop_last:
            indices = indices[: self.total_size]
        elif len(indices) < self.total_size:
            repeats = math.ceil((self.total_size - len(indices)) / max(len(indices), 1))
            indices = indices + (indices * repeats)[: self.total_size - len(indices)]
        return indices[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        start, self.start_index = self.start_index, 0
        return iter(self.rank_indices(self.epoch)[start:])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a ``ResumableSampler`` that Lightning checkpoints and resumes mid-epoch.

    State: ``{"epoch": e, "batches_done": k}``: k batches of epoch e were yielded. After
    ``load_state_dict``, an iteration over epoch e starts at batch k (the sampler skips ``k * batch_size``
    indices); an iteration over any other epoch (e.g. Lightning moved on to e + 1) starts at 0. The
    underlying iterator (and its worker processes) is created at the first ``next()``, after Lightning's
    ``set_epoch``, so prefetching workers never see a stale epoch.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        block_sizes: Sequence[int] | None = None,
        blocks_per_window: int = 1,
        **kwargs: Any,
    ) -> None:
        sampler = kwargs.pop("sampler", None)  # Lightning re-creates loaders with its own sampler (overfit_batches)
        if sampler is None:
            sampler = ResumableSampler(
                dataset,
                num_replicas=num_replicas,
                rank=rank,
                shuffle=shuffle,
                seed=seed,
                drop_last=drop_last,
                block_sizes=block_sizes,
                blocks_per_window=blocks_per_window,
            )
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs)
        self._batches_done = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches to skip)
        self._seed, self._rank = seed, rank

    @property
    def resumable(self) -> bool:
        return isinstance(self.sampler, ResumableSampler)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        skip = 0
        if self.resumable:
            if self._resume is not None and self._resume[0] == self.sampler.epoch:
                skip = self._resume[1]
            self.sampler.start_index = skip * self.batch_size
        self._resume = None
        self._batches_done = skip
        # The iterator draws its workers' base seed from ``self.generator``; a generator seeded by
        # (seed, epoch, rank) keeps that draw off the global RNG, so a run resumed mid-epoch (which creates
        # one more iterator than the uninterrupted run) consumes exactly the same global random numbers.
        epoch = int(getattr(self.sampler, "epoch", 0))
        self.generator = torch.Generator().manual_seed(self._seed * 1_000_003 + epoch * 1_009 + self._rank)
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches_done": int(self._batches_done)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        for key in ("epoch", "batches_done"):
            if key not in state_dict:
                raise ValueError(f"ResumableDataLoader state: missing key '{key}', got keys {sorted(state_dict)}")
        epoch, done = int(state_dict["epoch"]), int(state_dict["batches_done"])
        if done >= len(self):  # the epoch was finished: the next one starts from its first batch
            epoch, done = epoch + 1, 0
        self.set_epoch(epoch)
        self._batches_done = done
        self._resume = (epoch, done)
