"""Reproducible rollout sampling across ranks: a seed per (run seed, step, rank) or per (run seed, step, prompt).

HF ``generate`` samples from torch's global generator, so every rank of a DDP/FSDP run started with the same
``seed_everything`` value would draw the same noise. A rollout instead samples inside ``seeded(seed)``, which
forks the global RNG state (restored afterwards, so training's own randomness is untouched) and seeds it with

    per_rank:   seed = H(run_seed, step, "rank", global_rank)        one generate call for the rank's prompts
    per_prompt: seed = H(run_seed, step, "prompt", key(prompt), k)   one generate call per prompt's group

(H = blake2b, k = the prompt's occurrence within the rank's batch). Both are the same after a resume at the same
step. ``per_prompt`` makes a prompt's completions independent of how prompts are split across ranks, so a run on
2 processes samples exactly what 1 process with the doubled batch samples (the equivalence the distributed tests
check); ``per_rank`` batches all groups into one call (faster).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Any

import torch


class RolloutSeeding(str, Enum):
    PER_RANK = "per_rank"
    PER_PROMPT = "per_prompt"


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from ``parts`` (ints / strings), the same on every machine and Python process."""
    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def prompt_key(prompt: str, images: Sequence[Any] = ()) -> str:
    """Content hash of a prompt and its images (PIL-like: ``mode``, ``size``, ``tobytes()``)."""
    h = hashlib.blake2b(prompt.encode(), digest_size=16)
    for image in images:
        h.update(f"|{image.mode}|{image.size}|".encode())
        h.update(image.tobytes())
    return h.hexdigest()


def prompt_seeds(run_seed: int, step: int, keys: Sequence[str]) -> list[int]:
    """Per prompt, ``derive_seed(run_seed, step, "prompt", key, k)``; k counts earlier equal keys (duplicates in
    one batch still sample different completions)."""
    seen: dict[str, int] = {}
    seeds = []
    for key in keys:
        k = seen.get(key, 0)
        seen[key] = k + 1
        seeds.append(derive_seed(run_seed, step, "prompt", key, k))
    return seeds


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with torch's global RNG (CPU, and ``device`` when it is CUDA) seeded with ``seed``;
    the previous RNG states are restored on exit."""
    device = torch.device(device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
