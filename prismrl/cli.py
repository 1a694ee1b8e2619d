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

Run folders (``RunLayout``): every output path derives from one run directory, ``trainer.default_root_dir`` (each
config sets one; ``--run_name NAME`` replaces its last component). Each ``fit`` writes its own
``<run dir>/version_N/`` (events, ``metrics.csv``, ``config.yaml``, ``plots/``, ``checkpoints/``), so a second run
never touches the first one's checkpoints; ``validate``/``test``/``predict`` log under ``<run dir>/<verb>/version_N``.
Loggers and ``ModelCheckpoint`` callbacks that set ``save_dir``/``dirpath`` themselves keep them. Resuming is
explicit: ``--ckpt_path last`` (or ``auto_resume: true``) resumes from the newest ``version_N/checkpoints/last.ckpt``
of the run directory and keeps writing into that version (``metrics.csv`` is appended to); any other
``--ckpt_path`` inside the run directory resumes into its version as well.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

DATA_TO_MODEL = ("class_names", "zero_shot_templates", "question_types")
"""Datamodule attributes linked to the model init argument of the same name (alignment's zero-shot classes and
prompts, the VL instruction stage's per-question-type metrics)."""


def _configure_environment() -> None:
    # Models are loaded from local folders or shipped packages; never reach for a hub implicitly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    class _DropTips(logging.Filter):
        """Lightning's advertisement tips (e.g. for hosted loggers) are nothing a user of prismrl can act on."""

        def filter(self, record: logging.LogRecord) -> bool:
            return "Tip:" not in str(record.msg)

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(type(f).__name__ == "_DropTips" for f in target.filters):
            target.addFilter(_DropTips())


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

VERSION_PREFIX = "version_"
PARTIAL_SUFFIX = ".partial"
VERBS = ("fit", "validate", "test", "predict")
RUN_VERSION_ENV = "PRISMRL_RUN_VERSION"


def version_number(folder: Path) -> int | None:
    """N of a ``version_N`` folder, else None."""
    match = re.fullmatch(rf"{VERSION_PREFIX}(\d+)", folder.name)
    return int(match.group(1)) if match else None


def next_version(root: Path) -> str:
    """The first free ``version_N`` under ``root`` (``version_0`` when there is none)."""
    taken = [n for n in (version_number(p) for p in root.glob(f"{VERSION_PREFIX}*") if p.is_dir()) if n is not None]
    return f"{VERSION_PREFIX}{max(taken) + 1 if taken else 0}"


def latest_checkpoint(run_dir: str | Path, name: str = "last.ckpt") -> Path | None:
    """``<run_dir>/version_N/checkpoints/<name>`` of the highest N that has one, else None."""
    found = [(version_number(p.parent.parent), p) for p in Path(run_dir).glob(f"{VERSION_PREFIX}*/checkpoints/{name}")]
    found = [(n, p) for n, p in found if n is not None and p.is_file()]
    return max(found)[1] if found else None


def version_of(checkpoint: str | Path, run_dir: str | Path) -> str | None:
    """``version_N`` when ``checkpoint`` lies in ``<run_dir>/version_N/``, else None."""
    try:
        relative = Path(checkpoint).resolve().relative_to(Path(run_dir).resolve())
    except ValueError:
        return None
    return relative.parts[0] if len(relative.parts) > 1 and version_number(Path(relative.parts[0])) is not None else None


def clean_partial_saves(run_dir: str | Path) -> list[Path]:
    """Remove ``*.partial`` files a killed checkpoint save left under ``run_dir``; the removed paths."""
    removed = [p for p in Path(run_dir).glob(f"**/*{PARTIAL_SUFFIX}") if p.is_file()]
    for path in removed:
        path.unlink()
    return removed


def _atomic_checkpoint_io():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Writes ``<path>.partial`` next to the target and renames it: a killed save leaves the previous
        checkpoint intact and a ``.partial`` file that the next start removes (``clean_partial_saves``)."""

        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            import torch

            if storage_options is not None or "://" in str(path):
                return super().save_checkpoint(checkpoint, path, storage_options)
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + PARTIAL_SUFFIX)
            torch.save(checkpoint, partial)
            os.replace(partial, path)

    return AtomicCheckpointIO()


def use_appending_csv_writers(loggers: list) -> None:
    """Give Lightning's own CSVLoggers (their writer not created yet) the appending writer of ``prismrl.loggers``."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import rank_zero_only

    from prismrl.loggers import AppendingExperimentWriter

    for logger in loggers:
        if isinstance(logger, CSVLogger) and logger._experiment is None and rank_zero_only.rank == 0:
            logger._experiment = AppendingExperimentWriter(logger.log_dir)


def _class_of(entry: Any) -> type | None:
    """The class named by a ``class_path`` config entry, else None."""
    path = getattr(entry, "class_path", None) if not isinstance(entry, dict) else entry.get("class_path")
    if not isinstance(path, str) or "." not in path:
        return None
    import importlib

    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _entries(value: Any) -> list:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _init_args(entry: Any):
    from jsonargparse import Namespace

    if getattr(entry, "init_args", None) is None:
        entry.init_args = Namespace()
    return entry.init_args


class RunLayout:
    """Where one CLI invocation writes: ``run_dir``, the verb's log root and the version folder."""

    def __init__(self, run_dir: Path, verb: str, version: str) -> None:
        self.run_dir, self.verb, self.version = run_dir, verb, version

    @property
    def log_root(self) -> Path:
        return self.run_dir if self.verb == "fit" else self.run_dir / self.verb

    @property
    def log_dir(self) -> Path:
        return self.log_root / self.version

    def apply(self, trainer_config: Any) -> None:
        """Point ``trainer_config``'s unset logger and checkpoint paths into this layout."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        trainer_config.default_root_dir = str(self.run_dir)
        for entry in _entries(getattr(trainer_config, "logger", None)):
            cls = _class_of(entry)
            if cls is None:
                continue
            parameters = inspect.signature(cls.__init__).parameters
            init_args = _init_args(entry)
            if "save_dir" in parameters and getattr(init_args, "save_dir", None) is None:
                init_args.save_dir = str(self.log_root)
                if "name" in parameters:
                    init_args.name = ""
                if "version" in parameters and getattr(init_args, "version", None) is None:
                    init_args.version = self.version
        for entry in _entries(getattr(trainer_config, "callbacks", None)):
            cls = _class_of(entry)
            if cls is not None and issubclass(cls, ModelCheckpoint):
                init_args = _init_args(entry)
                if getattr(init_args, "dirpath", None) is None:
                    init_args.dirpath = str(self.log_dir / "checkpoints")


def resolve_run_dir(default_root_dir: str | None, run_name: str | None) -> Path:
    """The run directory: ``default_root_dir`` with its last component replaced by ``run_name`` when given."""
    root = Path(default_root_dir) if default_root_dir else Path("runs") / "default"
    return root.parent / run_name if run_name else root


def read_checkpoint_record(path: str | Path) -> tuple[str | None, dict]:
    """(stage class path the checkpoint records, its prismrl record) without reading the weights into memory."""
    import torch

    from prismrl.lightning_modules.plumbing import CHECKPOINT_KEY

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable files are reported by whoever loads them for real
        return None, {}
    if not isinstance(checkpoint, dict):
        return None, {}
    record = checkpoint.get(CHECKPOINT_KEY) or {}
    stage = record.get("stage") or (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    return stage, dict(record)


def check_checkpoint_matches_config(ckpt_path: str | Path, model_class_path: str | None) -> None:
    """ValueError naming both stages when the checkpoint at ``ckpt_path`` was written by another model class than
    the config's ``model.class_path`` (LightningCLI would otherwise rebuild the checkpoint's model silently)."""
    from prismrl.lightning_modules.plumbing import CHECKPOINT_KEY, check_checkpoint_stage

    stage, record = read_checkpoint_record(ckpt_path)
    model_class = _class_of({"class_path": model_class_path})
    if stage is None or model_class is None:
        return
    check_checkpoint_stage({CHECKPOINT_KEY: {**record, "stage": stage}}, model_class,
                           where=f"ckpt_path '{ckpt_path}'")


def register_short_names() -> None:
    """Import prismrl's stage modules, datamodules and callbacks so their class names work without the module
    path in ``--model``/``--data``/``--trainer.callbacks``, ``--*.help`` and YAML ``class_path``."""
    import importlib

    import prismrl.callbacks  # noqa: F401
    import prismrl.datamodules  # noqa: F401
    from prismrl import lightning_modules

    for module in set(lightning_modules._LAZY.values()):
        importlib.import_module(module)


def _stage_list() -> str:
    from prismrl import lightning_modules

    return ", ".join(sorted(lightning_modules._LAZY))



def _overrides(cls: type, name: str, base: type) -> bool:
    return getattr(cls, name, None) is not getattr(base, name, None)


def supported_verbs(model: Any) -> list[str]:
    """The CLI verbs ``model``'s stage implements (``fit`` and ``validate`` always)."""
    from lightning.pytorch import LightningModule

    return ["fit", "validate"] + [verb for verb in ("test", "predict")
                                  if _overrides(type(model), f"{verb}_step", LightningModule)]


def prepare_evaluation_verb(verb: str, model: Any, datamodule: Any, trainer: Any) -> None:
    """``test``/``predict``: a clear error when the stage has no ``<verb>_step``; the validation set when the
    datamodule has no ``<verb>_dataloader``; predictions written to ``<log dir>/predictions.pt``."""
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
        trainer.callbacks.append(PredictionFileWriter())


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


def build_cli(args: list[str] | None = None, run: bool = True):
    """Build (and by default run) the prismrl LightningCLI; ``args=None`` reads ``sys.argv``."""
    _configure_environment()
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    register_short_names()

    class PrismCLI(LightningCLI):
        layout: RunLayout | None = None

        def add_arguments_to_parser(self, parser) -> None:
            for name in DATA_TO_MODEL:
                parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
            parser.add_argument("--run_name", type=str | None, default=None,
                                help="Name of the run folder: replaces the last component of trainer.default_root_dir "
                                     "(runs/alignment/tiny -> runs/alignment/NAME).")
            parser.add_argument("--auto_resume", type=bool, default=False,
                                help="fit: resume from the run folder's newest version_N/checkpoints/last.ckpt when "
                                     "there is one (same as --ckpt_path last), else start a new version.")

        def _subcommand_config(self):
            verb = self.config.get("subcommand")
            return (self.config[verb] if verb else self.config), (verb or "fit")

        def _parse_ckpt_path(self) -> None:
            config, verb = self._subcommand_config()
            run_dir = resolve_run_dir(config.trainer.get("default_root_dir"), config.get("run_name"))
            ckpt_path = config.get("ckpt_path")
            if ckpt_path == "last" or (ckpt_path is None and verb == "fit" and config.get("auto_resume")):
                found = latest_checkpoint(run_dir)
                if found is None and ckpt_path == "last" and verb != "fit":
                    raise ValueError(f"ckpt_path: 'last' expected a checkpoint at {run_dir}/{VERSION_PREFIX}N/"
                                     f"checkpoints/last.ckpt, received none (run fit first)")
                if found is not None:
                    print(f"prismrl: resuming from {found}", file=sys.stderr)
                elif verb == "fit":
                    print(f"prismrl: no last.ckpt under {run_dir} yet; starting a new run", file=sys.stderr)
                ckpt_path = str(found) if found is not None else None
                if self.config.get("subcommand"):  # run=False has no ckpt_path to set: trainer.fit(ckpt_path=...)
                    config.ckpt_path = ckpt_path
            if ckpt_path and Path(ckpt_path).is_file():
                check_checkpoint_matches_config(ckpt_path, config.model.get("class_path"))
            resumed = version_of(ckpt_path, run_dir) if (ckpt_path and verb == "fit") else None
            if verb == "fit" and os.environ.get("LOCAL_RANK", "0") == "0":
                for path in clean_partial_saves(run_dir):
                    print(f"prismrl: removed {path}, left by an interrupted checkpoint save", file=sys.stderr)
            if resumed:  # resuming into its own version folder is the point, not a reason to warn
                import warnings

                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            root = run_dir if verb == "fit" else run_dir / verb
            if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_VERSION_ENV):
                version = os.environ[RUN_VERSION_ENV]  # a DDP worker process: the launching process's version
            else:
                version = resumed or next_version(root)
                os.environ[RUN_VERSION_ENV] = version  # inherited by the processes a DDP launcher starts
            self.layout = RunLayout(run_dir, verb, version)
            super()._parse_ckpt_path()

        def before_instantiate_classes(self) -> None:
            if self.layout is None:  # run=False: no subcommand, so _parse_ckpt_path returned before the layout
                self._parse_ckpt_path()
            self.layout.apply(self._subcommand_config()[0].trainer)

        def after_instantiate_classes(self) -> None:
            reconcile_linked_hparams(self.model, self.datamodule)

        def _run_subcommand(self, subcommand: str) -> None:
            if subcommand in ("test", "predict"):
                prepare_evaluation_verb(subcommand, self.model, self.datamodule, self.trainer)
            super()._run_subcommand(subcommand)

        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(**kwargs)
            share_logger_versions(trainer.loggers)
            use_appending_csv_writers(trainer.loggers)
            use_step_aware_progress_bar(trainer)
            if type(trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO":
                trainer.strategy.checkpoint_io = _atomic_checkpoint_io()
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
        parser_kwargs={verb: {"description": f"prismrl {verb}: stages (model class_path, short names work): "
                                              f"{_stage_list()}."} for verb in VERBS},
    )


DEBUG_ENV = "PRISMRL_DEBUG"
_GENERIC = ("Does not validate against any of the Union subtypes", "Problem with given class_path")


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s cause chain: the message a config or model check raised, not
    jsonargparse's wrapping (which repeats the whole configuration)."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def short_error(error: BaseException, limit: int = 6) -> str:
    """``error``'s root cause as at most ``limit`` short lines, without jsonargparse's Namespace dumps."""
    cause = root_cause(error)
    lines = [line for line in str(cause).strip().splitlines()
             if line.strip() and not line.lstrip().startswith(("Given value", "Subtypes:")) and
             not any(g in line for g in _GENERIC)] or [type(cause).__name__]
    lines = [line if len(line) <= 400 else line[:400] + " ..." for line in lines[:limit]]
    return f"{type(cause).__name__}: " + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``prismrl <verb> ...``: errors end with their real message; ``--debug`` or PRISMRL_DEBUG=1 shows the traceback."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if from_command_line:  # LightningCLI warns when given args and sys.argv both
        sys.argv[1:] = argv
        argv = None
    if debug:
        build_cli(argv)
        return
    try:
        build_cli(argv)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as error:  # noqa: BLE001 - the CLI's last word to a user; --debug shows everything
        print(f"\nprismrl: {short_error(error)}\n(full traceback: add --debug or set {DEBUG_ENV}=1)", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
