"""Run folders: every output path of one CLI invocation derives from one run directory.

``trainer.default_root_dir`` is the run directory (``--run_name NAME`` replaces its last component). Each ``fit``
writes its own ``<run dir>/version_N/`` (events, ``metrics.csv``, ``config.yaml``, ``plots/``, ``checkpoints/``), so a
second run never touches the first one's checkpoints; ``validate``/``test``/``predict`` log under
``<run dir>/<verb>/version_N``. Loggers and ``ModelCheckpoint`` callbacks that set ``save_dir``/``dirpath`` keep them.
Resuming is explicit (``--ckpt_path last`` / ``auto_resume``) and writes into the resumed version; checkpoints are
written to ``<name>.partial`` and renamed, and a ``.partial`` left by a killed save is removed at the next start.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Any


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


VERSION_PREFIX = "version_"
PARTIAL_SUFFIX = ".partial"
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


def atomic_checkpoint_io():
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


def class_of(entry: Any) -> type | None:
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
            cls = class_of(entry)
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
            cls = class_of(entry)
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
    from prismrl.lightning_modules.plumbing import (
        CHECKPOINT_KEY,
        check_checkpoint_stage,
    )

    stage, record = read_checkpoint_record(ckpt_path)
    model_class = class_of({"class_path": model_class_path})
    if stage is None or model_class is None:
        return
    check_checkpoint_stage({CHECKPOINT_KEY: {**record, "stage": stage}}, model_class,
                           where=f"ckpt_path '{ckpt_path}'")
