"""The numerical guard's gradient norm of FSDP2-sharded (DTensor) gradients on 2 gloo processes: the norm of the
full gradients, the same on every rank (a per-shard norm would differ between ranks and skip steps on one only)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from prismrl.callbacks.numerical_guard import gradient_norm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
        reference = [p.detach().clone() for p in model.parameters()]
        mesh = init_device_mesh("cpu", (2,))
        fully_shard(model[0], mesh=mesh)
        fully_shard(model, mesh=mesh)
        x = torch.randn(4, 5, generator=torch.Generator().manual_seed(rank))
        model(x).square().sum().backward()
        torch.save({"norm": gradient_norm(model), "x": x, "reference": reference}, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while the other still has a collective in flight
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: gloo threads can abort a finished worker at exit


def test_gradient_norm_of_fsdp2_sharded_gradients_is_the_full_tensor_norm(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    with torch.no_grad():
        for p, ref in zip(model.parameters(), ranks[0]["reference"]):
            p.copy_(ref)
    for r in ranks:  # FSDP averages the gradients of the ranks' batches
        (model(r["x"]).square().sum() / 2).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    for r in ranks:
        torch.testing.assert_close(r["norm"], expected, rtol=1e-5, atol=1e-6)
