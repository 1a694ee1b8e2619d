"""The training stream of WebDataset shards: which (rank, worker) reads which shards, seeded shuffles, exact resume.

``RankSplitter`` and ``WorkerShare`` split the shard list statically; ``EpochShuffle`` reseeds shard order and the
sample buffer from (seed, epoch, pass); ``SkipSamples`` drops the samples a resumed epoch already consumed, before
decoding; ``EpochLoader`` cuts the endless stream into epochs and checkpoints its position.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader


class RankSplitter:
    """Pipeline stage: keep items ``rank, rank + world, ...`` (shards of this rank)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def __call__(self, source: Iterable[Any]) -> Iterator[Any]:
        return islice(source, self.rank, None, self.world_size)


class EpochShuffle(wds.PipelineStage):
    """Buffer shuffle seeded by ``(seed, epoch, pass)``; ``pass`` counts repeats of the stream in an epoch.

    Items fill a buffer of ``bufsize``; each new item replaces a uniformly drawn buffered one, which is
    emitted; the rest is emitted shuffled at the end. With ``bufsize >= len(stream)`` this is a uniform
    permutation (used for the shard list).
    """

    def __init__(self, bufsize: int, seed: int) -> None:
        self.bufsize, self.seed, self.epoch, self.passes = max(1, bufsize), seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.passes = epoch, 0

    def run(self, source: Iterable[Any]) -> Iterator[Any]:
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.passes}")
        self.passes += 1
        buffer: list[Any] = []
        for item in source:
            if len(buffer) < self.bufsize:
                buffer.append(item)
                continue
            k = rng.randrange(self.bufsize)
            yield buffer[k]
            buffer[k] = item
        rng.shuffle(buffer)
        yield from buffer


def worker_role(offset: int) -> tuple[int, int]:
    """(role, number of workers) of the current DataLoader worker: its id shifted by ``offset`` (0 in the main process).

    A resumed epoch starts its round-robin over workers at worker 0, while the batch due next belongs to worker
    ``batches_done mod K``: shifting every worker's role by that offset makes worker 0 produce it.
    """
    _, _, worker, workers = wds.utils.pytorch_worker_info()  # torch's worker info (or WORKER / NUM_WORKERS)
    return (worker + offset) % workers, workers


class WorkerShare(wds.PipelineStage):
    """Keep items ``role, role + K, ...`` of the stream (``worker_role``): each worker's share of the shards."""

    def __init__(self) -> None:
        self.offset = 0

    def run(self, source: Iterable[Any]) -> Iterator[Any]:
        role, workers = worker_role(self.offset)
        return islice(source, role, None, workers)


class SkipSamples(wds.PipelineStage):
    """Drop the first ``counts[role]`` samples of this worker's stream (``worker_role``); the count carries over
    the stream's repeats. ``set_counts`` before each epoch's workers start."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.offset = 0
        self._remaining: int | None = None

    def set_counts(self, counts: dict[int, int], offset: int) -> None:
        self.counts, self.offset, self._remaining = dict(counts), offset, None

    def run(self, source: Iterable[Any]) -> Iterator[Any]:
        if self._remaining is None:
            self._remaining = self.counts.get(worker_role(self.offset)[0], 0)
        for item in source:
            if self._remaining > 0:
                self._remaining -= 1
                continue
            yield item


class EpochLoader(DataLoader):
    """A ``DataLoader`` over an endless batch pipeline that yields ``num_batches`` batches per iteration.

    Before each iteration it sets the epoch on the pipeline's ``EpochShuffle`` stages (workers are
    created afterwards, so they receive it): ``epoch_fn()`` when given (the trainer's ``current_epoch``),
    else the number of earlier iterations. State ``{"epoch": e, "batches_done": k}``: after ``load_state_dict`` an
    iteration over epoch e yields its batches k+1.. only (each worker skips its share of the first k batches'
    ``samples_per_batch`` samples). ``loader_kwargs`` go to ``DataLoader`` (num_workers, pin_memory).
    """

    def __init__(self, dataset: wds.DataPipeline, num_batches: int, epoch_fn: Callable[[], int] | None = None,
                 samples_per_batch: int = 1, seed: int = 0, rank: int = 0, **loader_kwargs: Any) -> None:
        super().__init__(dataset, batch_size=None, **loader_kwargs)
        self.num_batches, self.epoch_fn, self.iterations = num_batches, epoch_fn, 0
        self.samples_per_batch, self._seed, self._rank = samples_per_batch, seed, rank
        self._epoch, self._batches_done = 0, 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches done)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()  # lazy: the epoch and the resume point are read at the first next()

    def _iterate(self) -> Iterator[Any]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.iterations
        self.iterations += 1
        skip = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume, self._epoch, self._batches_done = None, epoch, skip
        workers = max(1, self.num_workers)
        counts = {role: len(range(role, skip, workers)) * self.samples_per_batch for role in range(workers)}
        for stage in self.dataset.pipeline:
            if isinstance(stage, EpochShuffle):
                stage.set_epoch(epoch)
            elif isinstance(stage, SkipSamples):
                stage.set_counts(counts, offset=skip % workers)
            elif isinstance(stage, WorkerShare):
                stage.offset = skip % workers
        # Worker base seeds come from ``self.generator``: seeded by (seed, epoch, rank), a resumed run (one more
        # iterator than an uninterrupted one) draws nothing from the global RNG.
        self.generator = torch.Generator().manual_seed(self._seed * 1_000_003 + epoch * 1_009 + self._rank)
        for batch in islice(super().__iter__(), self.num_batches - skip):
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._epoch), "batches_done": int(self._batches_done)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        missing = [key for key in ("epoch", "batches_done") if key not in state_dict]
        if missing:
            raise ValueError(f"EpochLoader state: expected keys epoch, batches_done, received {sorted(state_dict)}")
        epoch, done = int(state_dict["epoch"]), int(state_dict["batches_done"])
        if done >= self.num_batches:  # the epoch was finished: the next one starts from its first batch
            epoch, done = epoch + 1, 0
        self._resume = (epoch, done)
