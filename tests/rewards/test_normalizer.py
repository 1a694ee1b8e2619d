"""Min-max normalizer: history window, clipping, degenerate ranges, state round trip."""

from __future__ import annotations

import pytest
import torch

from prismrl.rewards.normalizer import RewardNormalizer


def test_min_max_over_window_with_clipping():
    norm = RewardNormalizer(["inter"], window=2, clip=(0.0, 1.0))
    assert norm.normalize("inter", torch.tensor([3.0])).tolist() == [0.5]  # empty history
    norm.update("inter", [2.0])
    assert norm.normalize("inter", torch.tensor([7.0])).tolist() == [0.5]  # zero range
    norm.update("inter", torch.tensor([4.0, 6.0]))  # history {2, 4, 6}
    out = norm.normalize("inter", torch.tensor([2.0, 3.0, 6.0, 9.0, -1.0]))
    torch.testing.assert_close(out, torch.tensor([0.0, 0.25, 1.0, 1.0, 0.0]))
    norm.update("inter", [5.0])  # window 2: the [2] entry falls out -> {4, 6, 5}
    assert norm.bounds("inter") == (4.0, 6.0)
    torch.testing.assert_close(norm.normalize("inter", torch.tensor([5.0, 3.0])), torch.tensor([0.5, 0.0]))


def test_wider_clip_and_nonfinite_values_are_ignored():
    norm = RewardNormalizer(["loss"], window=4, clip=(-0.5, 1.5))
    norm.update("loss", [0.0, float("nan"), 10.0, float("inf")])
    assert norm.bounds("loss") == (0.0, 10.0)
    x = torch.tensor([30.0, -20.0, 5.0])
    torch.testing.assert_close(norm.normalize("loss", x), torch.tensor([1.5, -0.5, 0.5]))
    torch.testing.assert_close(norm.update_and_normalize("loss", x), torch.tensor([1.0, 0.0, 0.5]))  # bounds now -20..30


def test_state_round_trip_restores_identical_behaviour():
    norm = RewardNormalizer(window=3)
    for step in range(5):
        for i, name in enumerate(norm.components):
            norm.update(name, torch.arange(3.0) * (step + 1) + i)
    restored = RewardNormalizer(window=3)
    restored.load_state_dict(norm.state_dict())
    x = torch.linspace(-2, 20, 7)
    for name in norm.components:
        assert restored.bounds(name) == norm.bounds(name)
        torch.testing.assert_close(restored.normalize(name, x), norm.normalize(name, x))
    restored.update("inter", [100.0])
    norm.update("inter", [100.0])
    assert restored.bounds("inter") == norm.bounds("inter")  # window length survives the round trip


def test_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        RewardNormalizer(window=0)
    with pytest.raises(ValueError, match="clip"):
        RewardNormalizer(clip=(1.0, 0.0))
    with pytest.raises(KeyError, match="component: expected one of"):
        RewardNormalizer().update("silhouette", [1.0])
    with pytest.raises(ValueError, match="components .* do not match"):
        RewardNormalizer(["a"]).load_state_dict(RewardNormalizer(["b"]).state_dict())
