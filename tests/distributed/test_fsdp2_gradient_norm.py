"""The numerical guard's gradient norm of FSDP2-sharded (DTensor) gradients on 2 gloo processes: the norm of the
full gradients, the same on every rank (a per-shard norm would differ between ranks and skip steps on one only)."""

from __future__ import annotations

from pathlib import Path

import torch
from dist_workers import spawn_gloo
from torch import nn


def _worker(rank: int, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from prismrl.callbacks.numerical_guard import gradient_norm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))
    reference = [p.detach().clone() for p in model.parameters()]
    mesh = init_device_mesh("cpu", (2,))
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(rank))
    model(x).square().sum().backward()
    torch.save({"norm": gradient_norm(model), "x": x, "reference": reference}, Path(out_dir) / f"rank{rank}.pt")


def test_gradient_norm_of_fsdp2_sharded_gradients_is_the_full_tensor_norm(tmp_path):
    spawn_gloo(_worker, tmp_path, str(tmp_path))
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
