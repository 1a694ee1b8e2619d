from __future__ import annotations

import csv
import math

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from prismrl.callbacks import TrainingCurvesCallback
from prismrl.callbacks.training_curves import scalar_metrics, series


def test_scalar_metrics_normalizes_names_and_splits_stages():
    metrics = {
        "train/loss_step": torch.tensor(9.0),
        "train/loss_epoch": torch.tensor(1.5),
        "train/loss_i2t": torch.tensor(2.0),
        "lr": 0.1,
        "val/loss": torch.tensor(3.0),
        "val/recall@1": torch.tensor(0.25),
        "train/vector": torch.ones(3),
        "flag": True,
    }
    assert scalar_metrics(metrics, keep_val=False) == {"train/loss": 1.5, "train/loss_i2t": 2.0, "lr": 0.1}
    assert scalar_metrics(metrics, keep_val=True) == {"val/loss": 3.0, "val/recall@1": 0.25}


def test_bad_arguments_and_state_raise():
    with pytest.raises(ValueError, match="filename_curves must be a '\\*.png' file name, received 'curves.jpg'"):
        TrainingCurvesCallback(filename_curves="curves.jpg")
    with pytest.raises(ValueError, match="loss_component_prefix"):
        TrainingCurvesCallback(loss_component_prefix="")
    with pytest.raises(ValueError, match="'history' key"):
        TrainingCurvesCallback().load_state_dict({"records": []})


def _csv_epoch_values(csv_dir, name: str) -> list[float]:
    with open(csv_dir / "metrics.csv") as handle:
        return [float(row[name]) for row in csv.DictReader(handle) if row.get(name)]


def test_history_plots_and_resume(tmp_path, digits, aligner, make_trainer, read_tb_images):
    curves = TrainingCurvesCallback()
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    csv_logger = CSVLogger(tmp_path, name="csv", version=0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    trainer = make_trainer(tmp_path, max_epochs=2, logger=[tb, csv_logger], callbacks=[curves, ckpt])
    trainer.fit(aligner, datamodule=digits)

    assert [(r["stage"], r["epoch"]) for r in curves.history] == [("val", 0), ("train", 0), ("val", 1), ("train", 1)]
    assert sorted(curves.history[1]["values"]) == ["train/loss", "train/loss_i2t", "train/loss_t2i"]
    # recorded values are the epoch aggregates the CSV logger wrote
    for name in ("train/loss_epoch", "train/loss_i2t", "val/loss", "val/recall@1"):
        key = name.removesuffix("_epoch")
        assert series(curves.history, key)[1] == pytest.approx(_csv_epoch_values(tmp_path / "csv" / "version_0", name))
    assert series(curves.history, "val/loss")[0] == [0, 1]

    plots = tmp_path / "tb" / "version_0" / "plots"
    assert set(curves.written) == {plots / "training_curves.png", plots / "loss_components.png"}
    for path in curves.written:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
    panels = curves.curves_figure().axes
    assert [line.get_label() for line in panels[0].lines] == ["train", "val"]
    assert [line.get_label() for line in panels[1].lines] == ["val/recall@1"]
    assert [line.get_label() for line in curves.components_figure().axes[0].lines] == [
        "train/loss_i2t",
        "train/loss_t2i",
    ]
    tb.experiment.flush()
    images = read_tb_images(tb.log_dir)
    steps = [trainer.global_step // 2, trainer.global_step]  # one image per training epoch
    assert images["plots/training_curves"] == steps and images["plots/loss_components"] == steps

    # resume from the epoch-0 checkpoint: the history continues from what the checkpoint held
    checkpoint = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=True)
    saved = checkpoint["callbacks"][curves.state_key]["history"]
    assert [(r["stage"], r["epoch"]) for r in saved] == [("val", 0), ("train", 0)]
    resumed = TrainingCurvesCallback()
    trainer2 = make_trainer(tmp_path / "resume", max_epochs=3, logger=CSVLogger(tmp_path / "resume"),
                            callbacks=[resumed])
    trainer2.fit(aligner, datamodule=digits, ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")
    epochs = [(r["stage"], r["epoch"]) for r in resumed.history]
    assert epochs == [("val", 0), ("train", 0), ("val", 1), ("train", 1), ("val", 2), ("train", 2)]
    assert resumed.history[:2] == saved
    assert all(math.isfinite(v) for r in resumed.history for v in r["values"].values())
    assert (tmp_path / "resume" / "lightning_logs" / "version_0" / "plots" / "training_curves.png").exists()


def test_mid_epoch_validation_and_no_components(tmp_path, digits, aligner, make_trainer):
    curves = TrainingCurvesCallback(loss_component_prefix="train/aux_", log_images=False)
    trainer = make_trainer(
        tmp_path, max_epochs=1, logger=False, callbacks=[curves], num_sanity_val_steps=0, val_check_interval=0.5
    )
    trainer.fit(aligner, datamodule=digits)
    assert [(r["stage"], r["epoch"], r["step"]) for r in curves.history] == [
        ("val", 0, 4),
        ("val", 0, 8),
        ("train", 0, 8),
    ]
    assert curves.written == [tmp_path / "plots" / "training_curves.png"]  # no "train/aux_*" metrics
    assert curves.components_figure() is None
