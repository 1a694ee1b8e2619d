"""PPO clipped value loss and masked MSE vs hand numbers and a naive loop."""

from __future__ import annotations

import pytest
import torch

from prismrl.rl.value_loss import clipped_value_loss, value_clip_fraction, value_mse


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 2.0, 9.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 2.1, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # t0: V moved +0.5 > 0.2 -> V_clip = 0.7; max((1-2)^2, (0.7-2)^2) = 1.69 (clipped branch binds)
    # t1: V moved -0.5 -> V_clip = 0.3; max((0-1)^2, (0.3-1)^2) = 1.0 (unclipped)
    # t2: inside the range -> (2-2)^2 = 0 ; t3 masked
    loss = clipped_value_loss(values, old, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0 + 0.0) / 3)
    loss.backward()
    # gradient only through unclipped branches: t1: 0.5 * 2 * (0 - 1) / 3
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -1.0 / 3, 0.0, 0.0]]))
    assert value_clip_fraction(values, old, mask, 0.2).item() == pytest.approx(2 / 3)


def test_clipped_value_loss_vs_naive_loop():
    g = torch.Generator().manual_seed(0)
    values, old, returns = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0], [0] * 5])
    terms = []
    for b in range(3):
        for t in range(5):
            if mask[b, t]:
                v, o, r = values[b, t].item(), old[b, t].item(), returns[b, t].item()
                vc = o + min(max(v - o, -0.3), 0.3)
                terms.append(max((v - r) ** 2, (vc - r) ** 2))
    assert clipped_value_loss(values, old, returns, mask, 0.3).item() == pytest.approx(0.5 * sum(terms) / len(terms))


def test_value_mse_masked_and_unmasked():
    values = torch.tensor([[1.0, 2.0], [3.0, float("nan")]])
    returns = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    assert value_mse(values, returns, torch.tensor([[1, 1], [1, 0]])).item() == pytest.approx((1 + 4 + 4) / 3)
    assert value_mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(5.0)
    assert value_mse(values, returns, torch.zeros(2, 2)).item() == 0.0


def test_value_loss_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"returns: expected shape \(2, 3\), received \(3,\)"):
        value_mse(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"old_values: expected shape \(2, 3\)"):
        clipped_value_loss(x, torch.zeros(2), x)
    with pytest.raises(ValueError, match="clip_range"):
        clipped_value_loss(x, x, x, clip_range=0.0)
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 3\)"):
        clipped_value_loss(x, x, x, torch.ones(3, 2))
