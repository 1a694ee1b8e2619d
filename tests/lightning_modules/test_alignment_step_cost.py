"""The alignment step's per-step costs under Lightning: batch transfer, per-part metrics, compiled towers."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger

from prismrl.backbones import EmbeddingTower, HFTextEncoder, HFVisionEncoder
from prismrl.data.batches import ImageTextBatch
from prismrl.lightning_modules.alignment import AlignmentModule


def _module(**kwargs) -> AlignmentModule:
    torch.manual_seed(0)
    vision = HFVisionEncoder(tiny_config={"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8,
                                          "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                          "num_attention_heads": 2})
    text = HFTextEncoder(tiny_config={"model_type": "bert", "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 30522,
                                      "max_position_embeddings": 32}, max_length=16)
    return AlignmentModule(EmbeddingTower(vision, 16, pooling="encoder"), EmbeddingTower(text, 16, pooling="encoder"),
                           matryoshka_dims=[8], **kwargs)


def _batch(n: int = 4) -> ImageTextBatch:
    return ImageTextBatch(pixel_values=torch.randn(n, 3, 32, 32), captions=[f"a digit {i}" for i in range(n)],
                          labels=torch.arange(n))


class _Recorder(Logger):
    name, version = "recorder", 0

    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[int, set[str]] = {}

    def log_metrics(self, metrics, step=None) -> None:
        self.steps.setdefault(step, set()).update(metrics)

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass


def test_transfer_moves_tensor_fields_and_keeps_the_rest():
    module, batch = _module(), _batch()
    assert module.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch  # already there: no copy
    moved = module.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved.pixel_values.device.type == "meta" and moved.labels.device.type == "meta"
    assert moved.captions == batch.captions and batch.pixel_values.device.type == "cpu"
    assert module.transfer_batch_to_device({"x": torch.ones(1)}, torch.device("meta"), 0)["x"].is_meta


def test_training_values_are_recorded_on_logging_steps_only(tmp_path, monkeypatch):
    """Each Lightning ``log`` record costs ~1 ms of CPU: per-step values are recorded only where they are read."""
    module, recorder = _module(), _Recorder()
    calls = []
    log = pl.LightningModule.log
    monkeypatch.setattr(pl.LightningModule, "log", lambda self, name, *a, **k: (calls.append(name), log(self, name, *a, **k))[-1])
    loader = torch.utils.data.DataLoader([_batch()] * 4, batch_size=None, collate_fn=lambda x: x)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, log_every_n_steps=2, logger=recorder, limit_val_batches=0,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=loader)
    assert calls.count("train/loss") == 2 and calls.count("train/loss_full") == 2  # steps 2 and 4 log
    logged = [keys for keys in recorder.steps.values() if "train/loss" in keys]
    assert len(logged) == 2 and all({"train/loss_full", "train/loss_d8", "train/temperature"} <= k for k in logged)
    calls.clear()  # no logger: only the last step's values (callback metrics after fit) and monitored ones
    from lightning.pytorch.callbacks import ModelCheckpoint

    monitor = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="train/loss_full", every_n_train_steps=1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, log_every_n_steps=2, logger=False, limit_val_batches=0,
                         callbacks=[monitor], enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(_module(), train_dataloaders=loader)
    assert calls.count("train/loss") == 1 and calls.count("train/loss_full") == 4 and calls.count("train/loss_d8") == 1
    assert "train/loss" in trainer.callback_metrics and monitor.best_model_score is not None
    calls.clear()  # the last batch of an epoch cut by limit_train_batches counts as the last batch
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, log_every_n_steps=50, logger=False,
                         limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
                         default_root_dir=tmp_path)
    trainer.fit(_module(), train_dataloaders=loader)
    assert calls.count("train/loss") == 1 and trainer.global_step == 3


@pytest.mark.slow
def test_compiled_towers_match_eager_and_keep_state_dict_keys():
    eager, compiled = _module(), _module(compile_towers=True)
    eager.eval(), compiled.eval()  # no dropout draws: inductor's RNG differs from eager's
    assert list(compiled.state_dict()) == list(eager.state_dict())
    batch = _batch()
    losses = []
    for module in (eager, compiled):
        features, presence = module._features(batch, batch.captions)
        losses.append(module.loss(features["image"], features["text"]).total)
        losses[-1].backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    grads = [dict((n, p.grad) for n, p in m.named_parameters() if p.grad is not None) for m in (eager, compiled)]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-5)
