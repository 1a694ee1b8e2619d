"""TensorBoard, CSV and WandB loggers whose folder the ``prismrl`` CLI chooses (``save_dir`` optional).

The CLI points both at the run's ``version_N`` folder (see ``prismrl.cli``). ``CSVLogger`` keeps an existing
``metrics.csv`` and appends to it, so a resumed run keeps its history, and it does not warn about the other files
(TensorBoard events, ``config.yaml``) that share the folder by design.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch import loggers
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingExperimentWriter(ExperimentWriter):
    """CSVLogger's writer that appends to an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(next(csv.reader(handle), []))


class TensorBoardLogger(loggers.TensorBoardLogger):
    """``lightning.pytorch.loggers.TensorBoardLogger`` with ``save_dir`` optional (default: the run folder the CLI
    picks; ``.`` outside the CLI)."""

    def __init__(self, save_dir: str | None = None, name: str | None = "", version: int | str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(save_dir if save_dir is not None else ".", name=name, version=version, **kwargs)


class CSVLogger(loggers.CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` with ``save_dir`` optional that appends to an existing ``metrics.csv``."""

    def __init__(self, save_dir: str | None = None, name: str | None = "", version: int | str | None = None,
                 prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir if save_dir is not None else ".", name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


class WandbLogger(loggers.WandbLogger):
    """``lightning.pytorch.loggers.WandbLogger`` that writes under the run folder the CLI picks (``save_dir``
    optional: ``<run dir>/wandb/``), offline unless ``offline: false`` (``wandb sync`` uploads it later). The run's
    display name defaults to ``<run name>/<version_N>``; its id is a fresh one unless ``id`` is given, so runs of
    different run folders never share one."""

    def __init__(self, save_dir: str | None = None, name: str | None = None, version: str | None = None,
                 offline: bool = True, project: str = "prismrl", **kwargs: Any) -> None:
        from pathlib import Path

        root = Path(save_dir) if save_dir is not None else Path(".")
        if not name and version:  # the CLI's run layout: save_dir = <run dir>, version = version_N
            name = f"{root.resolve().name}/{version}"
        root.mkdir(parents=True, exist_ok=True)  # wandb falls back to a temporary folder when it is missing
        # absolute: wandb's service process may run in another working directory than this one
        super().__init__(name=name or None, save_dir=str(root.resolve()), offline=offline, project=project, **kwargs)
