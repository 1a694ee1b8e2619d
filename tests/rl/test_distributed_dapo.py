"""DAPO's global-token normalization under two real gloo processes vs one process on the whole batch.

Each rank holds half of the rollouts with a different number of completion tokens, counts the tokens
of the whole step with ``count_global_tokens`` (an all-reduce) and averages parameter gradients as
DDP does. Expected: mean of the rank losses and the averaged gradients equal the single-process
token mean (BNPO on the concatenated batch), which the per-rank BNPO mean does not.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prismrl.rl.policy_loss import LossAggregation, count_global_tokens, grpo_loss

WORLD = 2
LENGTHS = torch.tensor([6, 5, 1, 2])  # rank 0: 11 tokens, rank 1: 3 tokens


def _batch():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.1
    old = base + torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.2
    ref = base + torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.2
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    mask = torch.arange(6).unsqueeze(0) < LENGTHS.unsqueeze(1)  # [4, 6] right padding
    return base, old, ref, adv, mask


def _loss_and_grad(rows: slice, mode: LossAggregation, **agg) -> tuple[float, torch.Tensor]:
    base, old, ref, adv, mask = _batch()
    shift = torch.zeros(6, dtype=torch.float64, requires_grad=True)  # a "parameter" shared by all rows
    loss, _ = grpo_loss(base[rows] + shift, adv[rows], mask[rows], old[rows], ref[rows], beta=0.1,
                        eps_low=0.2, eps_high=0.28, aggregation=mode, **agg)
    loss.backward()
    grad = shift.grad.clone()
    if dist.is_initialized():
        dist.all_reduce(grad)
        grad /= dist.get_world_size()
    return loss.item(), grad


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        rows = slice(2 * rank, 2 * rank + 2)
        count = count_global_tokens(_batch()[-1][rows])
        dapo = _loss_and_grad(rows, LossAggregation.DAPO, global_token_count=count, world_size=WORLD)
        bnpo = _loss_and_grad(rows, LossAggregation.BNPO)
        torch.save({"count": count, "dapo": dapo, "bnpo": bnpo}, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: gloo threads can abort a finished worker at exit


def test_dapo_global_normalization_matches_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    ref_loss, ref_grad = _loss_and_grad(slice(0, 4), LossAggregation.BNPO)
    assert all(r["count"].item() == 14 for r in ranks)
    assert abs(sum(r["dapo"][0] for r in ranks) / WORLD - ref_loss) < 1e-12
    for r in ranks:
        torch.testing.assert_close(r["dapo"][1], ref_grad)
    assert abs(sum(r["bnpo"][0] for r in ranks) / WORLD - ref_loss) > 1e-3
