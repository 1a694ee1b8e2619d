"""The callback that owns the reward normalizer, so its history is saved in and restored from checkpoints.

Distributed runs: every rank normalizes the rewards of the global batch (``prismrl.rewards.distributed``), so
every rank holds the same history and the callback state that Lightning checkpoints (rank 0's) restores every
rank exactly. Older checkpoints, written while each rank kept its own history, also hold every rank's state under
``checkpoint["prismrl_reward_normalizer"]``; they resume with rank 0's history on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from prismrl.rewards.normalizer import RewardNormalizer


class RewardNormalizationCallback(Callback):
    """Hands ``self.normalizer`` to the module (``pl_module.reward_normalizer``) at setup and checkpoints its state.

    Args are those of ``RewardNormalizer``: component names, history ``window`` (updates kept) and ``clip``.
    """

    def __init__(
        self,
        components: Sequence[str] = ("inter", "intra", "golden_loss"),
        window: int = 32,
        clip: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        self.normalizer = RewardNormalizer(components, window, tuple(clip))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.reward_normalizer = self.normalizer

    def state_dict(self) -> dict[str, Any]:
        return self.normalizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.normalizer.load_state_dict(state_dict)
