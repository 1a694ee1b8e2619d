"""Manual optimization under ``16-mixed`` (fp16 autocast + GradScaler): the gradients are clipped after the
precision plugin unscales them, so the clipped norm is ``max_grad_norm`` in true units, not divided by the scale.

A real Lightning Trainer drives a two-parameter StageModule whose training_step is one ``manual_optimizer_step``;
the precision plugin is Lightning's ``MixedPrecision("16-mixed")`` with a CPU GradScaler (CUDA's fp16 path is the
same plugin code). Clipping the scaled gradients (to 0.5) and unscaling afterwards would leave a norm of 0.5 / 2^10.
"""

from __future__ import annotations

import pytest
import torch
from lightning import Trainer
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader

from prismrl.lightning_modules.plumbing import StageModule
from prismrl.optim import OptimizerSettings

MAX_NORM, SCALE = 0.5, 2.0**10


class TinyManualStage(StageModule):
    def __init__(self, max_grad_norm: float | None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.optimizer_settings = OptimizerSettings(lr=0.1, weight_decay=0.0, max_grad_norm=max_grad_norm)
        self.layer = nn.Linear(4, 1)
        self.norms: list[float] = []  # the gradient norm the optimizer step uses
        self.scales: list[float] = []

    def training_step(self, batch, batch_idx):
        loss = (self.layer(batch) - 30.0).square().mean()  # large gradients: far above MAX_NORM
        self.manual_optimizer_step(loss, self.optimizers())

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        self.norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.parameters()])).item())
        self.scales.append(self.trainer.precision_plugin.scaler.get_scale())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _fit(max_grad_norm: float | None) -> TinyManualStage:
    torch.manual_seed(0)
    module = TinyManualStage(max_grad_norm)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=SCALE))
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=3, plugins=[plugin], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(torch.ones(12, 4), batch_size=4))
    return module


def test_manual_step_clips_the_unscaled_gradients():
    clipped, free = _fit(MAX_NORM), _fit(None)
    assert len(clipped.norms) == 3 and all(s == SCALE for s in clipped.scales)  # no step skipped
    assert free.norms[0] > 10 * MAX_NORM  # the same first step unclipped: the true gradient is large
    assert clipped.norms == pytest.approx([MAX_NORM] * 3, rel=1e-3)
    assert clipped.layer.weight.detach().sub(free.layer.weight.detach()).abs().max() > 0  # clipping changed the run
