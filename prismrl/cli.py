"""The ``prismrl`` command: a LightningCLI over every stage module and DataModule.

    prismrl fit --config configs/alignment/digits_minilm.yaml
    prismrl validate --config configs/alignment/digits_minilm.yaml --ckpt_path runs/.../last.ckpt
    prismrl fit --config configs/alignment/tiny.yaml --print_config

Models and data are chosen with ``class_path``/``init_args`` in the YAML (subclass mode), so any
``LightningModule`` / ``LightningDataModule`` importable from Python works, not only prismrl's.
"""

from __future__ import annotations

import os


def _configure_environment() -> None:
    # Models are loaded from local folders or shipped packages; never reach for a hub implicitly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def share_logger_versions(loggers: list) -> None:
    """Loggers writing under the same ``save_dir/name`` with no fixed version get the first one's version.

    TensorBoardLogger and CSVLogger each pick "the next free version" on their own, so side by side they would
    write ``version_0`` (events) and ``version_1`` (metrics.csv); sharing the version keeps a run in one folder.
    """
    first_by_root: dict[str, object] = {}
    for logger in loggers:
        if not hasattr(logger, "_version") or getattr(logger, "root_dir", None) is None:
            continue
        first = first_by_root.setdefault(str(logger.root_dir), logger)
        if first is not logger and logger._version is None:
            logger._version = first.version


def build_cli(args: list[str] | None = None, run: bool = True):
    """Build (and by default run) the prismrl LightningCLI; ``args=None`` reads ``sys.argv``."""
    _configure_environment()
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class PrismCLI(LightningCLI):
        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(**kwargs)
            share_logger_versions(trainer.loggers)
            return trainer

    return PrismCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main() -> None:
    build_cli(None)


if __name__ == "__main__":
    main()
