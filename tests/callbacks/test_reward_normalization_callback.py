"""RewardNormalizationCallback: hands its normalizer to the module and round-trips it through checkpoint state."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule

from prismrl.callbacks.reward_normalization import RewardNormalizationCallback


def test_setup_shares_the_normalizer_and_state_round_trips():
    callback = RewardNormalizationCallback(window=2, clip=(0.0, 1.0))
    module = LightningModule()
    callback.setup(None, module, "fit")
    assert module.reward_normalizer is callback.normalizer
    module.reward_normalizer.update("inter", [1.0, 3.0])
    module.reward_normalizer.update("golden_loss", [0.5])
    restored = RewardNormalizationCallback(window=2)
    restored.load_state_dict(callback.state_dict())
    assert restored.normalizer.bounds("inter") == (1.0, 3.0) and restored.normalizer.bounds("intra") is None
    torch.testing.assert_close(restored.normalizer.normalize("inter", torch.tensor([2.0])), torch.tensor([0.5]))


def test_mismatched_components_are_refused():
    saved = RewardNormalizationCallback(components=["inter"]).state_dict()
    with pytest.raises(ValueError, match="components"):
        RewardNormalizationCallback().load_state_dict(saved)
