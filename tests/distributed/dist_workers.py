"""Spawned gloo workers for the distributed unit tests: one process group per test, torn down the same way."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, work: Callable[..., None], init_file: str, world: int, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        work(rank, *args)
        dist.barrier()  # every rank done before the group goes away
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: gloo threads can abort a finished worker at exit


def spawn_gloo(work: Callable[..., None], folder: Path, *args, world: int = 2) -> None:
    """Run ``work(rank, *args)`` in ``world`` spawned processes joined in a gloo group (rendezvous through a file
    in ``folder``); an exception in any rank fails the call. ``work`` must be a module-level function."""
    mp.start_processes(_entry, args=(work, str(Path(folder) / "init"), world, args), nprocs=world,
                       start_method="spawn")
