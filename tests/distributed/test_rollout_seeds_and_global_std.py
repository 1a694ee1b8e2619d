"""Rollout seeds (per rank / per prompt) and the std of rewards pooled over 2 real gloo processes."""

from __future__ import annotations

from pathlib import Path

import torch
from dist_workers import spawn_gloo
from PIL import Image

from prismrl.policy.seeding import derive_seed, prompt_key, prompt_seeds, seeded
from prismrl.rl.advantages import (
    AdvantageScaling,
    global_std,
    group_normalized_advantages,
)

REWARDS = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.2, 0.3, 0.1, 0.2, 5.0, 4.0, 6.0, 5.0])  # 3 groups of 4


def test_seeds_differ_per_rank_and_step_and_repeat_exactly():
    seeds = {(rank, step): derive_seed(0, step, "rank", rank) for rank in range(4) for step in range(3)}
    assert len(set(seeds.values())) == len(seeds)
    assert derive_seed(0, 2, "rank", 1) == seeds[(1, 2)]
    assert derive_seed(1, 2, "rank", 1) != seeds[(1, 2)]  # another run seed, other samples


def test_seeded_draws_repeat_and_leave_the_global_stream_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    with seeded(11):
        first = torch.rand(5)
    after = torch.rand(3)
    with seeded(11):
        second = torch.rand(5)
    assert torch.equal(first, second) and torch.equal(after, expected)


def test_prompt_seeds_follow_content_not_position_and_split_duplicates():
    black, white = Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 255)
    a, b = prompt_key("<image> digit?", [black]), prompt_key("<image> digit?", [white])
    assert a != b  # the image is part of the key
    assert prompt_seeds(0, 5, [a, b]) == prompt_seeds(0, 5, [b, a])[::-1]
    dup = prompt_seeds(0, 5, [a, a])
    assert dup[0] != dup[1] and dup[0] == prompt_seeds(0, 5, [a])[0]


def _worker(rank: int, out_dir: str) -> None:
    local = REWARDS[:8] if rank == 0 else REWARDS[8:]  # uneven shares: 8 and 4 rewards
    std = global_std(local)
    adv = group_normalized_advantages(local, 4, AdvantageScaling.BATCH_STD, batch_std=std)
    torch.save({"std": std, "adv": adv, "local_adv": group_normalized_advantages(local, 4, AdvantageScaling.BATCH_STD)},
               Path(out_dir) / f"rank{rank}.pt")


def test_global_std_pools_every_rank_and_batch_std_advantages_match_one_process(tmp_path):
    spawn_gloo(_worker, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    expected = group_normalized_advantages(REWARDS, 4, AdvantageScaling.BATCH_STD)
    for r in ranks:
        torch.testing.assert_close(r["std"], REWARDS.std())
    torch.testing.assert_close(torch.cat([r["adv"] for r in ranks]), expected)
    local = torch.cat([r["local_adv"] for r in ranks])
    assert (local - expected).abs().max() > 0.1  # the per-rank std would scale differently
    assert global_std(REWARDS) == REWARDS.std()  # one process: the plain std
