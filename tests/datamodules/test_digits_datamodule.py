import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from prismrl.data.batches import ImageTextBatch
from prismrl.data.digits import DIGIT_NAMES, ZERO_SHOT_TEMPLATES
from prismrl.data.loaders import ResumableDataLoader, ResumableSampler
from prismrl.datamodules import DigitsDataModule
from prismrl.data.loaders import LoaderSettings


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("digits-cache"))


def test_class_names_are_known_right_after_init(tmp_path):
    dm = DigitsDataModule(root=str(tmp_path / "never-built"))
    assert dm.class_names == DIGIT_NAMES and dm.zero_shot_templates == ZERO_SHOT_TEMPLATES
    assert not (tmp_path / "never-built").exists()
    with pytest.raises(ValueError, match="format: expected one of"):
        DigitsDataModule(format="csv")


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_both_formats_give_image_text_batches(root, fmt):
    dm = DigitsDataModule(format=fmt, root=root, loader=LoaderSettings(batch_size=32), image_size=64)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 1438 // 32
    batch = next(iter(loader))
    assert isinstance(batch, ImageTextBatch)
    assert batch.pixel_values.shape == (32, 3, 64, 64)
    assert ((batch.labels >= 0) & (batch.labels < 10)).all()
    for caption, label in zip(batch.captions, batch.labels.tolist()):
        assert DIGIT_NAMES[label] in caption or str(label) in caption
    # grey PNGs: the three channels agree after undoing the per-channel normalization
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = batch.pixel_values * std + mean
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2], atol=1e-5, rtol=0)
    assert sum(len(b) for b in dm.val_dataloader()) == 359


class PixelModel(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 16 * 16, 10)
        self.seen: list[list[str]] = []

    def training_step(self, batch: ImageTextBatch, batch_idx):
        self.seen.append(list(batch.sample_ids))
        return torch.nn.functional.cross_entropy(self.linear(batch.pixel_values.flatten(1)), batch.labels)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(root, max_steps, fmt="parquet", callbacks=(), ckpt_path=None, **trainer_kwargs):
    torch.manual_seed(0)
    model = PixelModel()
    dm = DigitsDataModule(format=fmt, root=root, loader=LoaderSettings(batch_size=64), image_size=16, seed=3)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=list(callbacks),
                        limit_val_batches=0, default_root_dir=root, **trainer_kwargs)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, trainer


def test_lightning_mid_epoch_resume_through_the_datamodule(root, tmp_path):
    full, _ = fit(root, 30)  # 22 batches per epoch
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=25, save_top_k=-1)
    crashed, _ = fit(root, 27, callbacks=[checkpoint])
    (path,) = tmp_path.glob("*step=25*.ckpt")
    resumed, trainer = fit(root, 30, ckpt_path=str(path))
    assert crashed.seen[:25] + resumed.seen == full.seen
    assert full.seen[22] != full.seen[0]  # the second epoch is reshuffled
    assert len({i for b in full.seen[:22] for i in b}) == 22 * 64  # no repeats within an epoch
    assert isinstance(trainer.train_dataloader, ResumableDataLoader)


def test_ddp_with_use_distributed_sampler_keeps_our_sampler(root, monkeypatch):
    # Lightning's DDP launcher exports MASTER_ADDR/MASTER_PORT/LOCAL_RANK/...; monkeypatch restores them after
    for name in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    plain, _ = fit(root, 4)
    try:
        ddp, trainer = fit(root, 4, strategy="ddp", devices=1, use_distributed_sampler=True)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert isinstance(trainer.train_dataloader, ResumableDataLoader)
    assert type(trainer.train_dataloader.sampler) is ResumableSampler
    assert ddp.seen == plain.seen


def test_webdataset_format_trains_equal_length_epochs(root):
    model, trainer = fit(root, -1, fmt="webdataset", max_epochs=2)
    assert len(model.seen) == 2 * (1438 // 64)
    first, second = model.seen[:22], model.seen[22:]
    assert first != second  # the trainer's epoch reseeds the shard and sample shuffles
