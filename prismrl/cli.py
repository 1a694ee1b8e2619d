"""The ``prismrl`` command: a LightningCLI over every stage module and DataModule.

    prismrl fit --config configs/alignment/digits_minilm.yaml
    prismrl validate --config configs/alignment/digits_minilm.yaml --ckpt_path runs/.../last.ckpt
    prismrl fit --config configs/alignment/tiny.yaml --print_config

Models and data are chosen with ``class_path``/``init_args`` in the YAML (subclass mode), so any
``LightningModule`` / ``LightningDataModule`` importable from Python works, not only prismrl's.
"""

from __future__ import annotations

import os
import sys


def _configure_environment() -> None:
    # Models are loaded from local folders or shipped packages; never reach for a hub implicitly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_cli(args: list[str] | None = None, run: bool = True):
    """Build (and by default run) the prismrl LightningCLI; ``args=None`` reads ``sys.argv``."""
    _configure_environment()
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    return LightningCLI(
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
