"""The CLI verbs besides ``fit``: ``test`` and ``predict`` for the stages that implement them, the validation set
when a datamodule has no separate split, predictions written to a file; a progress bar that counts max_steps."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

VERBS = ("fit", "validate", "test", "predict")


def _overrides(cls: type, name: str, base: type) -> bool:
    return getattr(cls, name, None) is not getattr(base, name, None)


def supported_verbs(model: Any) -> list[str]:
    """The CLI verbs ``model``'s stage implements (``fit`` and ``validate`` always)."""
    from lightning.pytorch import LightningModule

    return ["fit", "validate"] + [verb for verb in ("test", "predict")
                                  if _overrides(type(model), f"{verb}_step", LightningModule)]


def prepare_evaluation_verb(verb: str, model: Any, datamodule: Any, trainer: Any) -> None:
    """``test``/``predict``: a clear error when the stage has no ``<verb>_step``; the validation set when the
    datamodule has no ``<verb>_dataloader``; predictions written to ``<log dir>/predictions.pt`` and, one row per
    example, ``<log dir>/predictions.parquet`` (unless the trainer has its own prediction writer)."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.callbacks import BasePredictionWriter

    verbs = supported_verbs(model)
    if verb not in verbs:
        raise ValueError(f"prismrl {verb}: stage {type(model).__name__} supports {', '.join(verbs)}; it has no "
                         f"{verb}_step (use validate for its metrics)")
    loader = f"{verb}_dataloader"
    if datamodule is not None and not _overrides(type(datamodule), loader, LightningDataModule):
        print(f"prismrl {verb}: {type(datamodule).__name__} has no separate {verb} split; using its validation set",
              file=sys.stderr)

        def validation_set():
            loaders = datamodule.val_dataloader()
            return loaders if verb == "test" else _plain_loader(loaders)

        setattr(datamodule, loader, validation_set)
    if verb == "predict" and not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
        from prismrl.callbacks.prediction_writer import ParquetPredictionWriter

        trainer.callbacks.extend([PredictionFileWriter(), ParquetPredictionWriter()])


def _plain_loader(loader: Any) -> Any:
    """A plain in-order ``DataLoader`` over ``loader``'s dataset (Lightning re-creates predict loaders with its own
    batch sampler, which loaders with extra constructor arguments do not survive)."""
    from torch.utils.data import DataLoader

    if isinstance(loader, (list, tuple)):
        return [_plain_loader(one) for one in loader]
    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers)


def _prediction_writer_class():
    from lightning.pytorch.callbacks import BasePredictionWriter

    class PredictionFileWriter(BasePredictionWriter):
        """Saves every batch's predictions, in order, as one list to ``<trainer.log_dir>/predictions.pt``
        (tensors, strings and plain containers only: read it with ``torch.load(..., weights_only=True)``)."""

        def __init__(self) -> None:
            super().__init__(write_interval="epoch")
            self.path: Path | None = None

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
            import torch

            self.path = Path(trainer.log_dir or trainer.default_root_dir) / "predictions.pt"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(_to_cpu(predictions), self.path)
            print(f"prismrl predict: {len(predictions)} batches of predictions written to {self.path}", file=sys.stderr)

    return PredictionFileWriter


def _to_cpu(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_cpu(v) for v in value]
    return value


def PredictionFileWriter():  # noqa: N802 - builds the callback lazily (Lightning is imported on use)
    return _prediction_writer_class()()


def use_step_aware_progress_bar(trainer: Any) -> None:
    """A run bounded by ``max_steps`` (``max_epochs`` -1) shows "Epoch 0 (max_steps 16)", not Rich's "Epoch 0/-2"."""
    from lightning.pytorch.callbacks import RichProgressBar

    class StepAwareRichProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            trainer = self.trainer
            if (trainer.max_epochs is None or trainer.max_epochs < 0) and trainer.max_steps > 0:
                description = f"Epoch {current_epoch} (max_steps {trainer.max_steps})"
                return f"{description:{len(self.validation_description)}}"
            return super()._get_train_description(current_epoch)

    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:
        bar.__class__ = StepAwareRichProgressBar  # adds a method only: the configured bar keeps its settings
