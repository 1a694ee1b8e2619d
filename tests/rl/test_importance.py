"""Truncated importance sampling weights and the engine/trainer log-prob gap, against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from prismrl.rl.importance import logprob_mismatch, truncated_importance_weights


def test_weights_are_the_token_ratio_clipped_at_the_cap_without_gradient():
    trainer = torch.tensor([[math.log(0.5), math.log(0.9), math.log(0.2)]], requires_grad=True)
    engine = torch.log(torch.tensor([[0.25, 0.9, 0.8]]))
    weights = truncated_importance_weights(trainer, engine, cap=1.5)
    # ratios 0.5/0.25 = 2 (clipped to 1.5), 0.9/0.9 = 1, 0.2/0.8 = 0.25 (kept: only the top is truncated)
    torch.testing.assert_close(weights, torch.tensor([[1.5, 1.0, 0.25]]))
    assert not weights.requires_grad
    with pytest.raises(ValueError, match=r"cap: expected a finite float > 0, received 0"):
        truncated_importance_weights(trainer, engine, cap=0)
    with pytest.raises(ValueError, match=r"engine_logprobs"):
        truncated_importance_weights(trainer, engine[:, :2], cap=2.0)


def test_mismatch_is_the_masked_mean_and_max_absolute_gap():
    trainer = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    engine = torch.tensor([[-1.1, -2.0, -2.0], [-0.2, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])  # the 1.0 and 9.0 gaps sit on padding
    stats = logprob_mismatch(trainer, engine, mask)
    torch.testing.assert_close(stats["engine_logprob_diff_mean"], torch.tensor((0.1 + 0.0 + 0.3 + 0.0) / 4))
    torch.testing.assert_close(stats["engine_logprob_diff_max"], torch.tensor(0.3))
