"""The ``prismrl`` command: a LightningCLI over every stage module and DataModule.

    prismrl fit --config configs/alignment/digits_minilm.yaml
    prismrl validate --config configs/alignment/digits_minilm.yaml --ckpt_path runs/.../last.ckpt
    prismrl fit --config configs/alignment/tiny.yaml --print_config

Models and data are chosen with ``class_path``/``init_args`` in the YAML (subclass mode), so any
``LightningModule`` / ``LightningDataModule`` importable from Python works, not only prismrl's.

What the model must know about the data reaches it as an init argument, linked when the classes are
instantiated (``DATA_TO_MODEL``): ``data.<name> --> model.init_args.<name>``. The datamodule is built first; a
link is skipped when the datamodule has no such attribute or the model class no such argument, so one CLI
serves every stage. Linked values are recorded in the model's hyperparameters (checkpoints reload them) and
left out of ``--print_config`` (they are derived, not configured).
"""

from __future__ import annotations

import inspect
import os

DATA_TO_MODEL = ("class_names", "zero_shot_templates", "question_types")
"""Datamodule attributes linked to the model init argument of the same name (alignment's zero-shot classes and
prompts, the VL instruction stage's per-question-type metrics)."""


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


def _hparams_dicts(module) -> list:
    return [d for d in (getattr(module, "_hparams", None), getattr(module, "_hparams_initial", None)) if d is not None]


def reconcile_linked_hparams(model, datamodule) -> None:
    """Make the recorded hyperparameters of the ``DATA_TO_MODEL`` links consistent.

    - A link whose target argument ``type(model).__init__`` lacks is skipped by jsonargparse, yet reported as
      applied and recorded among the model's hyperparameters: ``load_from_checkpoint`` would pass it to
      ``__init__`` and fail, so it is removed.
    - A linked name that is also a datamodule argument (``DigitQADataModule(question_types=None)`` resolves to
      the built-in types) is recorded with the value the model received: Lightning refuses to log one name
      with two values.
    """
    parameters = inspect.signature(type(model).__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    for name in DATA_TO_MODEL:
        if name not in parameters and not takes_any:
            for hparams in _hparams_dicts(model):
                hparams.pop(name, None)
        elif name in model.hparams and datamodule is not None:
            for hparams in _hparams_dicts(datamodule):
                if name in hparams:
                    hparams[name] = model.hparams[name]


def build_cli(args: list[str] | None = None, run: bool = True):
    """Build (and by default run) the prismrl LightningCLI; ``args=None`` reads ``sys.argv``."""
    _configure_environment()
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    class PrismCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            for name in DATA_TO_MODEL:
                parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")

        def after_instantiate_classes(self) -> None:
            reconcile_linked_hparams(self.model, self.datamodule)

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
