"""StagedUnfreezing with a real Trainer on a small fusion model: epochs, param groups, schedule, resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import TensorDataset

from prismrl.callbacks.rng_state import RNGStateCallback
from prismrl.callbacks.staged_unfreezing import (
    Stage,
    StagedUnfreezing,
    extend_scheduler,
    parse_stages,
)
from prismrl.data.loaders import ResumableDataLoader
from prismrl.lightning_modules.plumbing import restore_pending_dataloader_states
from prismrl.optim import decay_groups, warmup_cosine_factor, warmup_cosine_scheduler

STEPS_PER_EPOCH, EPOCHS, WARMUP = 4, 6, 2
TOTAL = STEPS_PER_EPOCH * EPOCHS
HEAD_LR, ENCODER_LR = 1e-2, 5e-3
STAGES = [
    {"epoch": 0, "frozen": ["text_encoder", "vision_encoder"]},
    {"epoch": 2, "unfreeze": ["text_encoder", "vision_encoder"], "lr": ENCODER_LR},
    {"epoch": 4, "set": {"mode": "combined"}},
]


class ToyFusion(pl.LightningModule):
    """Two encoders -> fusion -> classifier; a value head used only in mode "combined" (like an actor-critic)."""

    MODES = ("supervised", "rl", "combined")

    def __init__(self) -> None:
        super().__init__()
        self.text_encoder = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.LayerNorm(16))
        self.vision_encoder = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16))
        self.fusion = nn.Sequential(nn.Linear(32, 16), nn.GELU())
        self.head = nn.Linear(16, 3)
        # untouched until "combined": its LayerNorm keeps the init values (ones / zeros) that the frozen
        # encoders' LayerNorms also hold, which BaseFinetuning's value-based filter would confuse
        self.value_head = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 1))
        self._mode = "supervised"
        self.history: dict[int, dict] = {}

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in self.MODES:
            raise ValueError(f"mode: expected one of {self.MODES}, received {value!r}")
        self._mode = value

    def training_step(self, batch, batch_idx):
        x_text, x_image, y = batch
        fused = self.fusion(torch.cat([self.text_encoder(x_text), self.vision_encoder(x_image)], dim=-1))  # [B, 16]
        loss = F.cross_entropy(self.head(fused), y)
        if self.mode == "combined":
            loss = loss + F.mse_loss(self.value_head(fused).squeeze(-1), y.float())
        return loss

    def on_train_start(self) -> None:
        restore_pending_dataloader_states(self.trainer)

    def on_train_batch_start(self, batch, batch_idx) -> None:  # runs after the callbacks' hook
        if self.current_epoch in self.history:
            return
        optimizer = self.trainer.optimizers[0]
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        encoder_params = [p for m in (self.text_encoder, self.vision_encoder) for p in m.parameters()]
        self.history[self.current_epoch] = {
            "trainable": [p.requires_grad for p in encoder_params],
            "held": [id(p) in held for p in encoder_params],
            "groups": [dict(lr=g["lr"], initial_lr=g["initial_lr"], n=len(g["params"])) for g in optimizer.param_groups],
            "adam_steps": [float(optimizer.state[p]["step"]) if p in optimizer.state else 0.0 for p in encoder_params],
            "mode": self.mode,
            "global_step": self.global_step,
            "text_weight": self.text_encoder[0].weight.detach().clone(),
        }

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(decay_groups(self.named_parameters(), 0.01, HEAD_LR))
        scheduler = warmup_cosine_scheduler(optimizer, int(self.trainer.estimated_stepping_batches), WARMUP / TOTAL)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(32, 8, generator=g), torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g))
        return ResumableDataLoader(data, batch_size=8, shuffle=True, seed=0)


class CrashAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def _trainer(tmp_path, *callbacks, stages=STAGES) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_epochs=EPOCHS, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), default_root_dir=tmp_path,
        callbacks=[StagedUnfreezing(stages), RNGStateCallback(), *callbacks], deterministic=True,
    )


def _fit(tmp_path, *callbacks, ckpt_path=None) -> ToyFusion:
    pl.seed_everything(0, verbose=False)
    model = ToyFusion()
    _trainer(tmp_path, *callbacks).fit(model, ckpt_path=ckpt_path)
    return model


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> ToyFusion:
    return _fit(tmp_path_factory.mktemp("full"))


def test_stages_take_effect_at_their_epochs(full_run):
    history = full_run.history
    for epoch in (0, 1):
        assert not any(history[epoch]["trainable"]) and not any(history[epoch]["held"])
        assert len(history[epoch]["groups"]) == 2 and history[epoch]["mode"] == "supervised"
    for epoch in (2, 3, 4, 5):
        assert all(history[epoch]["trainable"]) and all(history[epoch]["held"]), epoch
        assert len(history[epoch]["groups"]) == 4  # + decayed and undecayed encoder groups
    assert [history[e]["mode"] for e in range(EPOCHS)] == ["supervised"] * 4 + ["combined"] * 2
    new_groups = history[2]["groups"][2:]
    assert [g["n"] for g in new_groups] == [2, 6]  # two Linear weights; their biases + two LayerNorms
    for epoch in (2, 3, 5):  # the new groups follow the same warmup-cosine factor from the current step on
        factor = warmup_cosine_factor(history[epoch]["global_step"], TOTAL, WARMUP)
        for group in history[epoch]["groups"][2:]:
            assert group["initial_lr"] == ENCODER_LR
            assert group["lr"] == pytest.approx(ENCODER_LR * factor, rel=1e-12)
        assert history[epoch]["groups"][0]["lr"] == pytest.approx(HEAD_LR * factor, rel=1e-12)


def test_frozen_weights_do_not_move_until_unfrozen(full_run):
    weights = [full_run.history[epoch]["text_weight"] for epoch in range(EPOCHS)]
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[1], weights[2])  # frozen in epochs 0 and 1
    assert not torch.equal(weights[2], weights[3])  # trained in epoch 2


# resume at the start of epoch 2 (unfreeze due), 3 (after the unfreeze), 4 (set due), and mid epoch 4 (after the set)
@pytest.mark.parametrize("crash_step", [8, 12, 16, 18])
def test_resume_restores_groups_adam_state_mode_and_final_weights(tmp_path, full_run, crash_step):
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path, saver, CrashAtStep(crash_step))
    resumed = _fit(tmp_path, ckpt_path=tmp_path / "ckpt" / f"step={crash_step}.ckpt")
    epoch = crash_step // STEPS_PER_EPOCH
    state = resumed.history[epoch]
    assert all(state["trainable"]) and all(state["held"]) and len(state["groups"]) == 4
    assert state["adam_steps"] == [float(crash_step - 2 * STEPS_PER_EPOCH)] * len(state["adam_steps"])
    assert state["mode"] == ("combined" if epoch >= 4 else "supervised")
    factor = warmup_cosine_factor(crash_step, TOTAL, WARMUP)
    assert [g["lr"] for g in state["groups"]] == pytest.approx([HEAD_LR * factor] * 2 + [ENCODER_LR * factor] * 2, rel=1e-12)
    for key, value in full_run.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_unknown_module_fails_at_setup_listing_children(tmp_path):
    model = ToyFusion()
    trainer = _trainer(tmp_path, stages=[{"epoch": 0, "frozen": ["text_encodr"]}])
    with pytest.raises(ValueError, match=r"'text_encodr' is not a submodule of ToyFusion; available top-level children: \['text_encoder', 'vision_encoder', 'fusion', 'head', 'value_head'\]"):
        trainer.fit(model)
    assert trainer.global_step == 0


def test_bad_set_value_or_attribute_fails_at_setup(tmp_path):
    with pytest.raises(ValueError, match=r"stages\[1\].set.mode: 'combind' rejected: mode: expected one of"):
        _trainer(tmp_path, stages=[{"epoch": 0}, {"epoch": 3, "set": {"mode": "combind"}}]).fit(ToyFusion())
    with pytest.raises(ValueError, match="has no attribute 'fusion.temperature'"):
        _trainer(tmp_path, stages=[{"epoch": 1, "set": {"fusion.temperature": 2.0}}]).fit(ToyFusion())
    model = ToyFusion()
    StagedUnfreezing([{"epoch": 1, "set": {"mode": "rl"}}]).validate(model)
    assert model.mode == "supervised"  # the dry run put the old value back


def test_nested_paths_resolve():
    model = ToyFusion()
    callback = StagedUnfreezing([{"epoch": 0, "frozen": ["text_encoder.0", "fusion"]}])
    callback.validate(model)
    callback.freeze_before_training(model)
    assert not model.text_encoder[0].weight.requires_grad and model.text_encoder[2].weight.requires_grad
    assert not any(p.requires_grad for p in model.fusion.parameters())


def test_stage_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        parse_stages([{"epoch": 2}, {"epoch": 1}])
    with pytest.raises(ValueError, match="strictly increasing"):
        parse_stages([])
    with pytest.raises(ValueError, match="Stage.epoch: expected an int >= 0"):
        Stage(epoch=-1)
    with pytest.raises(ValueError, match="together with `unfreeze`"):
        Stage(epoch=1, lr=1e-3)
    with pytest.raises(ValueError, match=r"\['head'\] are both frozen and unfrozen"):
        Stage(epoch=1, frozen=["head"], unfreeze=["head"])
    with pytest.raises(TypeError, match="Stage.frozen: expected a list"):
        Stage(epoch=0, frozen="head")
    assert parse_stages([Stage(epoch=0, frozen=["a"]), {"epoch": 3, "unfreeze": ["a"], "lr": 1e-4}])[1].lr == 1e-4


def test_extend_scheduler_covers_new_groups_and_is_idempotent():
    first, second = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([first], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    optimizer.add_param_group({"params": [second], "lr": 0.8, "initial_lr": 0.8})
    extend_scheduler(scheduler, optimizer)
    extend_scheduler(scheduler, optimizer)
    assert scheduler.base_lrs == [1.0, 0.8] and len(scheduler.lr_lambdas) == 2
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.8 * 0.5**3)
    optimizer.step()
    scheduler.step()  # without the extension torch raises: zip() argument 2 is shorter than argument 1
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5**4, 0.8 * 0.5**4])
    assert scheduler.get_last_lr() == pytest.approx([0.5**4, 0.8 * 0.5**4])
