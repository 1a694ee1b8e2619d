"""Real components for the callback tests: sklearn digits as image/caption pairs and a small aligner.

The aligner embeds 8x8 digit images with a linear projection and captions with a bag-of-characters
projection, trained with a symmetric InfoNCE loss; it exposes `embed_images` / `embed_texts` like the
alignment module does.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from prismrl.data.batches import ImageTextBatch

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ALPHABET = "abcdefghijklmnopqrstuvwxyz "


def collate_pairs(items: list[tuple[torch.Tensor, str, int]]) -> ImageTextBatch:
    pixels = torch.stack([it[0] for it in items])  # [B, 3, 8, 8]
    return ImageTextBatch(pixels, [it[1] for it in items], torch.tensor([it[2] for it in items]))


class DigitsPairs(pl.LightningDataModule):
    """sklearn digits: [3, 8, 8] images scaled to [-1, 1], captions "a photo of the digit <name>"."""

    class_names = DIGIT_NAMES

    def __init__(self, num_train: int = 256, num_val: int = 96, batch_size: int = 32) -> None:
        super().__init__()
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 8.0 - 1.0  # [1797, 8, 8]
        images = images[:, None].expand(-1, 3, -1, -1).contiguous()  # [1797, 3, 8, 8]
        labels = [int(t) for t in digits.target]
        pairs = [(images[i], f"a photo of the digit {DIGIT_NAMES[labels[i]]}", labels[i]) for i in range(len(labels))]
        self.train_pairs = pairs[:num_train]
        self.val_pairs = pairs[num_train : num_train + num_val]
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_pairs, batch_size=self.batch_size, shuffle=True, collate_fn=collate_pairs)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_pairs, batch_size=self.batch_size, shuffle=False, collate_fn=collate_pairs)


class ToyAligner(pl.LightningModule):
    """Linear image projection + bag-of-characters text projection into a shared D-dim space."""

    def __init__(self, dim: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.image_proj = torch.nn.Linear(3 * 8 * 8, dim)
        self.text_proj = torch.nn.Linear(len(ALPHABET), dim)
        self.log_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.lr = lr

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(pixel_values.flatten(1)), dim=-1)  # [B, D]

    def embed_texts(self, captions: list[str]) -> torch.Tensor:
        counts = torch.zeros(len(captions), len(ALPHABET), device=self.device)  # [B, 27]
        for row, caption in enumerate(captions):
            for ch in caption.lower():
                if ch in ALPHABET:
                    counts[row, ALPHABET.index(ch)] += 1.0
        return F.normalize(self.text_proj(counts / counts.sum(-1, keepdim=True).clamp_min(1.0)), dim=-1)

    def _losses(self, batch: ImageTextBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img, txt = self.embed_images(batch.pixel_values), self.embed_texts(batch.captions)  # [B, D]
        same = (batch.labels[:, None] == batch.labels[None, :]).float()  # [B, B] positives share a class
        logits = self.log_scale.exp() * img @ txt.T  # [B, B]
        target = same / same.sum(-1, keepdim=True)
        i2t = F.cross_entropy(logits, target)
        t2i = F.cross_entropy(logits.T, target)
        recall = (batch.labels[logits.argmax(-1)] == batch.labels).float().mean()
        return i2t, t2i, recall

    def training_step(self, batch: ImageTextBatch, batch_idx: int) -> torch.Tensor:
        i2t, t2i, _ = self._losses(batch)
        loss = (i2t + t2i) / 2
        bs = len(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=bs)
        self.log("train/loss_i2t", i2t, on_step=False, on_epoch=True, batch_size=bs)
        self.log("train/loss_t2i", t2i, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: ImageTextBatch, batch_idx: int) -> None:
        i2t, t2i, recall = self._losses(batch)
        bs = len(batch)
        self.log("val/loss", (i2t + t2i) / 2, batch_size=bs)
        self.log("val/recall@1", recall, batch_size=bs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fast_trainer(tmp_path, **kwargs) -> pl.Trainer:
    """A CPU Trainer without progress bar or model summary (loggers and callbacks passed in kwargs)."""
    defaults = dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


@pytest.fixture
def digits() -> DigitsPairs:
    return DigitsPairs()


@pytest.fixture
def make_trainer():
    return fast_trainer


@pytest.fixture
def aligner() -> ToyAligner:
    pl.seed_everything(0, verbose=False)
    return ToyAligner()


def tensorboard_images(log_dir) -> dict[str, list[int]]:
    """Image tags in the TensorBoard event files under `log_dir`, with the steps of each image."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [event.step for event in acc.Images(tag)] for tag in acc.Tags()["images"]}


@pytest.fixture
def read_tb_images():
    return tensorboard_images
