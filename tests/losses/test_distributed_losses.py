"""Two gloo processes with half a batch each vs one process on the whole batch.

Each rank builds the same tiny model (two linear projections + a loss), runs the local loss on its
half, backpropagates, then all-reduce-averages the parameter gradients as DDP does. Expected:
mean over ranks of the losses == single-process loss and averaged gradients == single-process gradients.
Float64 keeps the comparison about the math, not about the summation order of float32 matmuls.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from prismrl.losses import (
    ClipLoss,
    MatryoshkaContrastiveLoss,
    SigLipLoss,
    gather_features,
)

WORLD = 2
BATCH = 8  # global batch; 4 per rank
MASK = torch.tensor([True, False, True, True, False, True, False, True])  # 3 valid on rank 0, 2 on rank 1
CASES = ["clip", "siglip", "clip_masked", "siglip_masked", "matryoshka_clip"]


class Tower(nn.Module):
    """Two projections into a shared 8-d space followed by the loss under test."""

    def __init__(self, case: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_proj = nn.Linear(5, 8)
        self.text_proj = nn.Linear(6, 8)
        self.case = case
        if case.startswith("clip"):
            self.loss = ClipLoss(init_temperature=0.3)
        elif case.startswith("siglip"):
            self.loss = SigLipLoss(init_temperature=0.3, init_bias=-1.0)
        else:
            self.loss = MatryoshkaContrastiveLoss(ClipLoss(init_temperature=0.3), [2, 4], dim_weights=[1.0, 3.0])
        self.double()

    def forward(self, x_image: torch.Tensor, x_text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        image, text = self.image_proj(x_image), self.text_proj(x_text)  # [B, 8]
        if self.case.startswith("matryoshka"):
            return self.loss(image, text).total  # unnormalized features in
        pair_mask = mask if self.case.endswith("masked") else None
        return self.loss(F.normalize(image, dim=-1), F.normalize(text, dim=-1), pair_mask)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return (
        torch.randn(BATCH, 5, generator=g, dtype=torch.float64),
        torch.randn(BATCH, 6, generator=g, dtype=torch.float64),
    )


def _run_case(case: str, rows: slice) -> tuple[float, dict[str, torch.Tensor]]:
    model = Tower(case)
    x_image, x_text = _data()
    loss = model(x_image[rows], x_text[rows], MASK[rows])
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad.clone()
        if dist.is_initialized():
            dist.all_reduce(grad)  # what DDP does: average parameter gradients over ranks
            grad /= dist.get_world_size()
        grads[name] = grad
    return loss.item(), grads


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        local = BATCH // WORLD
        rows = slice(rank * local, (rank + 1) * local)
        results: dict[str, object] = {case: _run_case(case, rows) for case in CASES}
        # gather order, and which rank's loss reaches the local features with / without grad
        x = torch.full((2, 3), float(rank), requires_grad=True)
        weight = torch.arange(12.0).reshape(4, 3) * (rank + 1)  # differs per rank
        (gather_features(x) * weight).sum().backward()
        results["gathered"] = gather_features(x.detach()).clone()
        results["grad_with"] = x.grad.clone()
        x.grad = None
        (gather_features(x, gather_with_grad=False) * weight).sum().backward()
        results["grad_without"] = x.grad.clone()
        # single-dim sampling: ranks seeded differently must still score the same dim
        mrl = MatryoshkaContrastiveLoss(ClipLoss(), [2, 4, 8], sample_single_dim=True).train()
        image, text = torch.randn(4, 8), torch.randn(4, 8)
        torch.manual_seed(100 + rank)
        results["sampled"] = [next(iter(mrl(image, text).per_dim)) for _ in range(6)]
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without interpreter teardown: gloo's background threads can abort a worker at exit
    # ("terminate called without an active exception") after all of its work is done and saved.
    os._exit(0)


def test_local_loss_with_gather_matches_single_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for case in CASES:
        ref_loss, ref_grads = _run_case(case, slice(0, BATCH))
        mean_loss = sum(r[case][0] for r in ranks) / WORLD
        assert abs(mean_loss - ref_loss) < 1e-6, (case, mean_loss, ref_loss)
        for r in ranks:
            for name, grad in ref_grads.items():
                torch.testing.assert_close(r[case][1][name], grad, atol=1e-6, rtol=1e-5, msg=f"{case} {name}")
    # rank order: rank 0's rows first
    expected = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)])
    assert all(torch.equal(r["gathered"], expected) for r in ranks)
    weight = torch.arange(12.0).reshape(4, 3)
    for rank, r in enumerate(ranks):
        slot = weight[2 * rank : 2 * rank + 2]
        torch.testing.assert_close(r["grad_with"], slot * (1 + 2))  # summed over both ranks' losses
        torch.testing.assert_close(r["grad_without"], slot * (rank + 1))  # this rank's loss only
    assert ranks[0]["sampled"] == ranks[1]["sampled"]
    torch.manual_seed(100)  # rank 0's draws are the ones broadcast
    assert ranks[0]["sampled"] == [[2, 4, 8][int(torch.randint(3, (1,)).item())] for _ in range(6)]
