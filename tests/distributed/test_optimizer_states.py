"""``fill_optimizer_states``: the optimizer state a sharded checkpoint needs for every parameter, without changing
the run (one process; the 2-process resume it enables is in test_fsdp2_checkpoints.py)."""

from __future__ import annotations

import torch
from torch import nn

from prismrl.backbones.sharding import fill_optimizer_states


def _train(model: nn.Sequential, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model[0](torch.ones(2, 3)).square().sum().backward()  # model[1] never gets a gradient
        optimizer.step()


def test_filled_states_leave_weights_and_later_steps_unchanged():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    filled = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    filled.load_state_dict(plain.state_dict())
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=0.1, weight_decay=0.1)
    opt_filled = torch.optim.AdamW(filled.parameters(), lr=0.1, weight_decay=0.1)
    _train(plain, opt_plain, 2)
    _train(filled, opt_filled, 1)
    assert len(opt_filled.state) == 2  # the second layer has no state: a sharded checkpoint would lack its keys
    fill_optimizer_states(opt_filled)
    assert len(opt_filled.state) == 4
    assert all(float(opt_filled.state[p]["step"]) == 0 and not opt_filled.state[p]["exp_avg"].any()
               for p in filled[1].parameters())
    assert float(opt_filled.state[filled[0].weight]["step"]) == 1  # existing states untouched
    assert opt_filled.param_groups[0]["lr"] == 0.1 and all(p.grad is None for p in filled[1].parameters())
    _train(filled, opt_filled, 1)
    for a, b in zip(plain.parameters(), filled.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for group in (opt_plain, opt_filled):  # a later first gradient of the second layer: the same step
        group.zero_grad()
    for model, optimizer in ((plain, opt_plain), (filled, opt_filled)):
        model(torch.ones(2, 3)).square().sum().backward()
        optimizer.step()
    for a, b in zip(plain.parameters(), filled.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
