"""NumericalGuard: a non-finite loss or gradient stops the run (or skips the step), and no checkpoint holds NaN."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prismrl.callbacks.numerical_guard import (
    NonFiniteError,
    NumericalGuard,
    check_finite,
    gradient_norm,
)
from prismrl.lightning_modules.plumbing import StageModule
from prismrl.optim import OptimizerSettings


class Regression(pl.LightningModule):
    """y = w x on fixed data; at ``poison_steps`` the loss is multiplied by ``poison`` (nan or inf), or with
    ``poison="gradient"`` stays finite while its gradient is NaN (d sqrt(0 * w) / dw = 0 / 0)."""

    def __init__(self, poison_steps=(), poison=math.nan, manual: bool = False, lr: float = 0.1) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.poison_steps, self.poison, self.lr = set(poison_steps), poison, lr
        self.automatic_optimization = not manual

    def _loss(self, batch):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        if self.global_step not in self.poison_steps:
            return loss
        if self.poison == "gradient":
            return loss + torch.sqrt(self.layer.weight.sum() * 0.0)
        return loss * self.poison

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _loader():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)


def _trainer(tmp_path, guard, max_steps=6, **kwargs):
    return pl.Trainer(default_root_dir=tmp_path, max_steps=max_steps, callbacks=[guard], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_check_finite_names_the_component_and_step():
    check_finite("rewards", torch.tensor([1.0, 2.0]))
    with pytest.raises(NonFiniteError, match=r"step 7: rewards is not finite \(2 of 3 values are nan/inf\)"):
        check_finite("rewards", torch.tensor([1.0, math.nan, math.inf]), step=7)


def test_gradient_norm_matches_the_flat_norm():
    module = nn.Linear(3, 2)
    assert gradient_norm(module).item() == 0.0
    module(torch.randn(4, 3)).pow(2).sum().backward()
    flat = torch.cat([p.grad.flatten() for p in module.parameters()])
    torch.testing.assert_close(gradient_norm(module), flat.norm())


@pytest.mark.parametrize("manual", [False, True])
def test_stop_raises_at_the_first_nan_loss(tmp_path, manual):
    module = Regression(poison_steps={3}, manual=manual)
    with pytest.raises(NonFiniteError, match="step 3: the loss is not finite"):
        _trainer(tmp_path, NumericalGuard()).fit(module, _loader())
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("manual", [False, True])
def test_a_nan_gradient_is_caught_even_with_a_finite_loss(tmp_path, manual):
    module = Regression(poison_steps={2}, poison="gradient", manual=manual)
    with pytest.raises(NonFiniteError, match="step 2: the gradient norm is not finite"):
        _trainer(tmp_path, NumericalGuard()).fit(module, _loader())
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.parametrize("manual", [False, True])
def test_skip_step_leaves_the_weights_as_they_were(tmp_path, manual):
    torch.manual_seed(0)
    poisoned = Regression(poison_steps={2, 3}, poison=math.inf, manual=manual)
    torch.manual_seed(0)
    clean = Regression(manual=manual)
    guard = NumericalGuard(on_nonfinite="skip_step")
    _trainer(tmp_path, guard, max_steps=2).fit(poisoned, _loader())
    _trainer(tmp_path, NumericalGuard(), max_steps=2).fit(clean, _loader())
    before = [p.detach().clone() for p in poisoned.parameters()]
    torch.testing.assert_close(before, [p.detach() for p in clean.parameters()])
    guard2 = NumericalGuard(on_nonfinite="skip_step")
    poisoned.poison_steps = {0, 1}  # the next fit starts at global step 0 again
    _trainer(tmp_path, guard2, max_steps=2).fit(poisoned, _loader())
    assert guard2.skipped_steps == 2 and guard2.consecutive_skips == 2
    torch.testing.assert_close([p.detach() for p in poisoned.parameters()], before)  # both steps were skipped


def test_skip_step_stops_after_too_many_in_a_row(tmp_path):
    module = Regression(poison_steps=set(range(100)))
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        _trainer(tmp_path, NumericalGuard(on_nonfinite="skip_step", max_consecutive_skips=3)).fit(module, _loader())


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    module = Regression()
    trainer = _trainer(tmp_path, NumericalGuard(), max_steps=1)
    trainer.fit(module, _loader())
    trainer.save_checkpoint(tmp_path / "ok.ckpt")
    with torch.no_grad():
        module.layer.weight[0, 0] = math.nan
    with pytest.raises(NonFiniteError, match=r"weight 'layer.weight' \(checkpoint not written\)"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def test_settings_are_checked():
    with pytest.raises(ValueError, match=r"on_nonfinite: expected one of \['stop', 'skip_step'\], received 'ignore'"):
        NumericalGuard(on_nonfinite="ignore")
    with pytest.raises(ValueError, match="max_consecutive_skips: expected an int >= 1, received 0"):
        NumericalGuard(max_consecutive_skips=0)


class ClippedStage(StageModule):
    """y = W x with large targets, so every step's gradient norm is far above ``MAX_NORM``."""

    def __init__(self, manual: bool) -> None:
        super().__init__()
        self.automatic_optimization = not manual
        self.optimizer_settings = OptimizerSettings(lr=0.1, weight_decay=0.0, max_grad_norm=MAX_NORM)
        self.layer = nn.Linear(2, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), 40.0 * y.expand(-1, 3))
        if self.automatic_optimization:
            return loss
        self.manual_optimizer_step(loss, self.optimizers())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


MAX_NORM = 0.25


@pytest.mark.parametrize("manual", [False, True])
def test_clipping_reuses_the_guards_norm_and_equals_torchs_clip(tmp_path, manual, monkeypatch):
    torch.manual_seed(0)
    module = ClippedStage(manual)
    reference = ClippedStage(manual)
    reference.load_state_dict(module.state_dict())
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    for x, y in _loader():  # the same steps by hand: loss, backward, torch's norm clipping, SGD
        optimizer.zero_grad()
        nn.functional.mse_loss(reference.layer(x), 40.0 * y.expand(-1, 3)).backward()
        assert torch.nn.utils.clip_grad_norm_(reference.parameters(), MAX_NORM) > 10 * MAX_NORM
        optimizer.step()
    calls = []
    real_clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or real_clip(*a, **k))
    clip = {} if manual else {"gradient_clip_val": MAX_NORM}
    _trainer(tmp_path, NumericalGuard(), max_steps=8, **clip).fit(module, _loader())
    assert calls == []  # the norm was computed once per step, by the guard
    torch.testing.assert_close(module.state_dict(), reference.state_dict(), rtol=1e-6, atol=1e-7)
