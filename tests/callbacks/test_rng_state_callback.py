from __future__ import annotations

import random

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, TensorDataset

from prismrl.callbacks import RNGStateCallback
from prismrl.callbacks.rng_state import (
    CHECKPOINT_KEY,
    collect_rng_state,
    restore_rng_state,
)


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_collect_and_restore_round_trip_through_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.randn()  # leaves a cached Gaussian in the NumPy state
    torch.save(collect_rng_state(), tmp_path / "rng.pt")
    expected = _draws()
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = _draws()
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
    with pytest.raises(ValueError, match=r"lacks keys \['numpy'\]"):
        restore_rng_state({"python": random.getstate(), "torch": torch.get_rng_state()})


class NoisyRegressor(pl.LightningModule):
    """Dropout plus explicit torch, NumPy and Python random draws in every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = x + 0.1 * torch.randn_like(x)
        scale = 1.0 + 0.1 * random.random() + 0.1 * float(np.random.rand())
        return scale * torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(48, 4, generator=g)
    y = x.sum(-1, keepdim=True)
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(x[:16], y[:16]), batch_size=8)
    return train, val


def _fit(tmp_path, max_epochs: int, callbacks: list, ckpt_path=None) -> NoisyRegressor:
    pl.seed_everything(7, verbose=False)
    model = NoisyRegressor()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, default_root_dir=str(tmp_path), logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, num_sanity_val_steps=1,
    )
    trainer.fit(model, *_loaders(), ckpt_path=ckpt_path)
    return model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_resumed_run_matches_uninterrupted_run(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    full = _fit(tmp_path / "full", 4, [RNGStateCallback(), ckpt])
    mid = tmp_path / "ckpt" / "epoch=1.ckpt"  # written at the end of the second epoch
    saved = torch.load(mid, weights_only=True)[CHECKPOINT_KEY]
    assert saved["world_size"] == 1 and set(saved["states"][0]) == {"python", "numpy", "torch"}

    callback = RNGStateCallback()
    resumed = _fit(tmp_path / "resumed", 4, [callback], ckpt_path=mid)
    assert callback.restored
    assert _same_weights(full, resumed)

    # without the callback the resumed run draws other numbers, so the weights differ
    plain = _fit(tmp_path / "plain", 4, [], ckpt_path=mid)
    assert not _same_weights(full, plain)


def test_world_size_mismatch_and_missing_entry_leave_rngs_alone(tmp_path):
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=str(tmp_path))
    trainer.state.fn = TrainerFn.FITTING
    callback = RNGStateCallback()
    torch.manual_seed(5)
    other = collect_rng_state()
    torch.manual_seed(6)
    before = torch.get_rng_state()
    with pytest.warns(UserWarning, match="RNG states of 2 ranks but the run has world_size=1"):
        callback.on_load_checkpoint(trainer, None, {CHECKPOINT_KEY: {"world_size": 2, "states": [other, other]}})
    with pytest.warns(UserWarning, match="no 'prismrl_rng' entry"):
        callback.on_load_checkpoint(trainer, None, {})
    assert torch.equal(torch.get_rng_state(), before) and not callback.restored
    trainer.state.fn = TrainerFn.VALIDATING  # only fitting restores
    callback.on_load_checkpoint(trainer, None, {CHECKPOINT_KEY: {"world_size": 1, "states": [other]}})
    assert torch.equal(torch.get_rng_state(), before) and not callback.restored
    trainer.state.fn = TrainerFn.FITTING
    callback.on_load_checkpoint(trainer, None, {CHECKPOINT_KEY: {"world_size": 1, "states": [other]}})
    assert torch.equal(torch.get_rng_state(), other["torch"]) and callback.restored
