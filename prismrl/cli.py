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

Run folders, resume and atomic checkpoint writes: ``prismrl.apps.runs``; the ``test`` / ``predict`` verbs:
``prismrl.apps.verbs``.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from prismrl.apps.runs import (
    RUN_VERSION_ENV,
    VERSION_PREFIX,
    RunLayout,
    atomic_checkpoint_io,
    check_checkpoint_matches_config,
    clean_partial_saves,
    latest_checkpoint,
    next_version,
    resolve_run_dir,
    share_logger_versions,
    use_appending_csv_writers,
    version_of,
)
from prismrl.apps.verbs import (
    VERBS,
    prepare_evaluation_verb,
    use_step_aware_progress_bar,
)

DATA_TO_MODEL = ("class_names", "zero_shot_templates", "question_types")
"""Datamodule attributes linked to the model init argument of the same name (alignment's zero-shot classes and
prompts, the VL instruction stage's per-question-type metrics)."""


# Third-party messages a user of prismrl can do nothing about (all checked in tests/test_cli_quiet.py). Never add one
# that can signal a real problem: missing weights, dtype or device fallbacks and the like stay visible.
QUIET_WARNINGS = (
    r"Found \d+ module\(s\) in eval mode",  # Lightning: frozen towers stay in eval mode on purpose
    r"You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a `LightningDataModule`",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning vs torch pytree deprecation
    r"`is_gradient_checkpointing` is deprecated",  # transformers, called by peft
)
QUIET_LOG_MESSAGES = {
    "bitsandbytes.backends.cpu.ops": ("kernels-community",),  # optional CPU 4-bit kernels; prismrl quantizes on GPUs
    "lightning.pytorch.utilities.rank_zero": ("Tip:",),  # advertisements for hosted loggers
    "lightning.fabric.utilities.rank_zero": ("Tip:",),
}
QUIET_PROGRESS_BARS = ("Loading weights", "Writing model shards")  # transformers, once per model (fractions of a second)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in str(record.msg) for fragment in self.fragments)


class _ShortLoadReport(logging.Filter):
    """transformers' load-report table, when it lists only checkpoint weights the model does not use (a pooler or
    head of the saved model), becomes one line; a report with missing or mismatched weights stays whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = _ANSI.sub("", str(record.msg))
        if "LOAD REPORT" not in text:
            return True
        head, _, body = text.partition("\n")
        rows = [line.split("|") for line in body.splitlines() if line.count("|") >= 2]
        keys = [cells[0].strip() for cells in rows[1:] if cells[1].strip() == "UNEXPECTED"]
        if not keys or len(keys) != len(rows) - 1:
            return True
        model, _, source = head.partition(" LOAD REPORT from: ")
        record.msg, record.args = (f"loaded {model.strip()} from {source.strip()} (not used from the checkpoint: "
                                   f"{', '.join(sorted(keys))})"), ()
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _configure_environment() -> None:
    # Models are loaded from local folders or shipped packages; never reach for a hub implicitly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, fragments in QUIET_LOG_MESSAGES.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in target.filters):
            target.addFilter(_DropMessages(fragments))
    report = logging.getLogger("transformers.modeling_utils")
    if not any(isinstance(f, _ShortLoadReport) for f in report.filters):
        report.addFilter(_ShortLoadReport())
    own = logging.getLogger("prismrl")  # prismrl's info lines (cache loads and builds, conversions) on stderr
    if not own.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        own.addHandler(handler)
        own.setLevel(logging.INFO)


def _quiet_progress_bars() -> None:
    """transformers' per-model loading / saving bars off (once transformers is imported); download bars stay."""
    from transformers.utils import logging as hf_logging

    def hook(factory, args, kwargs):
        quiet = kwargs.get("desc") in QUIET_PROGRESS_BARS
        return hf_logging.EmptyTqdm(*args, **kwargs) if quiet else factory(*args, **kwargs)

    if hasattr(hf_logging, "set_tqdm_hook"):
        hf_logging.set_tqdm_hook(hook)


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



def build_cli(args: list[str] | None = None, run: bool = True):
    """Build (and by default run) the prismrl LightningCLI; ``args=None`` reads ``sys.argv``."""
    _configure_environment()
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    register_short_names()
    _quiet_progress_bars()

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
                trainer.strategy.checkpoint_io = atomic_checkpoint_io()
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
