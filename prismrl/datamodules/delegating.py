"""A DataModule that builds its data once, then hands loading to a general-purpose DataModule.

The built-in datasets use it so that their demos read data through exactly the code users' data goes through.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule


class DelegatingDataModule(LightningDataModule):
    """Subclasses implement ``_build_inner()`` (build or find the files, return the DataModule reading them)."""

    inner: LightningDataModule | None = None

    def _build_inner(self) -> LightningDataModule:
        raise TypeError(f"{type(self).__name__} must define _build_inner() returning the DataModule it delegates to")

    def setup(self, stage: str | None = None) -> None:
        if self.inner is None:
            self.inner = self._build_inner()
        self.inner.trainer = self.trainer
        self.inner.setup(stage)

    def train_dataloader(self):
        self.setup("fit")
        return self.inner.train_dataloader()

    def val_dataloader(self):
        self.setup("validate")
        return self.inner.val_dataloader()
