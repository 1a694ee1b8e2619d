"""Save the Python, NumPy and torch RNG states in checkpoints and restore them on resume.

Where the restore happens (Lightning 2.6, `Trainer._run` and `FitLoop`):

1. `trainer.fit(ckpt_path=...)` runs `setup`/`configure_model`, then restores module and callback state
   (`Callback.on_load_checkpoint`), then `on_fit_start`, optimizer/loop state, the sanity check (inside
   `isolate_rng`, so it leaves the RNGs alone), then `FitLoop.run`.
2. `FitLoop.setup_data` creates the training DataLoader iterator *before* `on_train_start`; creating it
   draws the DataLoader's base seed from the torch RNG. An uninterrupted run draws the same seed at the
   start of the next epoch (`TrainingEpochLoop.on_run_start`), right after the checkpoint was written.
3. `seed_everything` runs before the Trainer is built, so it never runs after step 1.

Restoring in `on_load_checkpoint` therefore puts the RNGs in the saved state right before the next
draws of an uninterrupted run; restoring in `on_train_start` would come one draw (the base seed) too
late and change the shuffling order. A resumed run then draws the same numbers as an uninterrupted one
when the checkpoint was written at an epoch boundary (ModelCheckpoint's default); mid-epoch resumption
additionally needs a stateful dataloader. RNG states are only restored when fitting.

Distributed runs: every rank has its own RNG states. `on_save_checkpoint` runs on every rank (only
rank 0 writes the file), so the states are gathered with `torch.distributed.all_gather_object` into a
list indexed by global rank; on load each rank takes its own entry. When the world size changed, the
states are not restored (a warning says so): the data sharding differs anyway.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

CHECKPOINT_KEY = "prismrl_rng"

RNGState = dict[str, Any]


def collect_rng_state(device: torch.device | None = None) -> RNGState:
    """The current RNG states as plain Python values and tensors (loadable with `weights_only=True`).

    Keys: "python" (`random.getstate()`), "numpy" (MT19937 key as a list plus position and Gaussian
    cache), "torch" (CPU ByteTensor) and, when `device` is a CUDA device, "cuda" (that device's state).
    """
    version, internal, gauss_next = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: RNGState = {
        "python": (version, tuple(internal), gauss_next),
        "numpy": {
            "kind": str(kind),
            "key": [int(k) for k in key],  # 624 words
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: RNGState, device: torch.device | None = None) -> None:
    """Set the Python, NumPy, torch CPU and (when saved and `device` is CUDA) CUDA RNG states."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"restore_rng_state: state lacks keys {sorted(missing)}, received keys {sorted(state)}")
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    key = np.asarray(np_state["key"], dtype=np.uint32)
    np.random.set_state((np_state["kind"], key, np_state["pos"], np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _gather_states(trainer: pl.Trainer, state: RNGState) -> list[RNGState]:
    """States of all ranks, indexed by global rank (a one-element list when not distributed)."""
    dist = torch.distributed
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, state)
        return gathered
    return [state]


class RNGStateCallback(Callback):
    """Checkpoint the RNG states under `checkpoint["prismrl_rng"]` and restore them when resuming a fit.

    The checkpoint entry is `{"world_size": W, "states": [state of rank 0, ..., state of rank W-1]}`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.restored = False

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = collect_rng_state(trainer.strategy.root_device)
        states = _gather_states(trainer, state)
        checkpoint[CHECKPOINT_KEY] = {"world_size": len(states), "states": states}

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.restored = False
        if trainer.state.fn != TrainerFn.FITTING:
            return
        entry = checkpoint.get(CHECKPOINT_KEY)
        if entry is None:
            rank_zero_warn(f"RNGStateCallback: the checkpoint has no '{CHECKPOINT_KEY}' entry; RNGs not restored.")
            return
        states = entry["states"]
        if len(states) != trainer.world_size:
            rank_zero_warn(
                f"RNGStateCallback: the checkpoint holds RNG states of {len(states)} ranks but the run has "
                f"world_size={trainer.world_size}; RNGs not restored."
            )
            return
        restore_rng_state(states[trainer.global_rank], trainer.strategy.root_device)
        self.restored = True
