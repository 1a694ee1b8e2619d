"""The callback that owns the reward normalizer, so its history is saved in and restored from checkpoints.

Distributed runs: each rank normalizes with the history of its own rewards. ``on_save_checkpoint`` (every rank)
gathers every rank's state into ``checkpoint["prismrl_reward_normalizer"] = {"world_size": W, "states": [...]}``
and each rank restores its own entry (Lightning's callback state holds rank 0's only), so a resumed multi-process
run continues exactly. A checkpoint of another world size restores rank 0's state (the module refuses to resume a
fit under another world size anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from prismrl.rewards.normalizer import RewardNormalizer

CHECKPOINT_KEY = "prismrl_reward_normalizer"


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
        self._own_state: dict[str, Any] | None = None  # this rank's entry of a checkpoint being restored

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.reward_normalizer = self.normalizer

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = [self.normalizer.state_dict()]
        dist = torch.distributed
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, self.normalizer.state_dict())
        checkpoint[CHECKPOINT_KEY] = {"world_size": len(states), "states": states}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        entry = checkpoint.get(CHECKPOINT_KEY)  # Lightning calls load_state_dict (rank 0's state) after this hook
        if entry is not None and len(entry["states"]) == trainer.world_size:
            self._own_state = entry["states"][trainer.global_rank]

    def state_dict(self) -> dict[str, Any]:
        return self.normalizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        own, self._own_state = self._own_state, None
        self.normalizer.load_state_dict(own if own is not None else state_dict)
