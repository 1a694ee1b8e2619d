"""Keep a per-epoch history of logged scalars and plot training curves and loss components as PNG."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from prismrl.evaluation.plotting import log_figure, new_figure, run_dir, save_png_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Record = dict[str, Any]  # {"stage": "train" | "val", "epoch": int, "step": int, "values": {name: float}}


def scalar_metrics(metrics: Mapping[str, Any], keep_val: bool) -> dict[str, float]:
    """Scalar entries of a metrics dict, names normalized.

    `name_epoch` becomes `name`; `name_step` entries (per-batch values) are dropped. With `keep_val`, only
    names starting with "val" are kept; without, only the others.
    """
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if name.startswith("val") != keep_val or name.endswith("_step"):
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.detach().float().item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[name[: -len("_epoch")] if name.endswith("_epoch") else name] = float(value)
    return out


def series(history: Sequence[Record], name: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of one metric across the history, in record order."""
    pairs = [(r["epoch"], r["values"][name]) for r in history if name in r["values"]]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def metric_names(history: Sequence[Record]) -> list[str]:
    """All metric names in the history, sorted."""
    return sorted({name for r in history for name in r["values"]})


class TrainingCurvesCallback(Callback):
    """Record scalars from `trainer.callback_metrics` after every training and validation epoch, and plot them.

    After each validation epoch the "val*" metrics are recorded; after each training epoch the others.
    `<run_dir>/plots/<filename_curves>` shows train and val loss vs epoch (left) and the validation
    metrics whose names start with one of `val_metric_prefixes` (right); `<filename_components>` shows
    every metric starting with `loss_component_prefix` (written once such metrics exist).

    The PNGs are rewritten after each training epoch (which follows the epoch-end validation) and after
    each mid-epoch validation (`val_check_interval < 1`), on global rank zero only; with `log_images`
    they are also logged to TensorBoard / WandB once per training epoch.

    The history is the callback's `state_dict`, so curves continue after a resume. It holds what was
    recorded before the checkpoint was written: a checkpoint written at validation end (ModelCheckpoint
    does so when `val_check_interval < 1`) precedes that epoch's training record.
    """

    def __init__(
        self,
        filename_curves: str = "training_curves.png",
        filename_components: str = "loss_components.png",
        loss_component_prefix: str = "train/loss_",
        train_loss_key: str = "train/loss",
        val_loss_key: str = "val/loss",
        val_metric_prefixes: Sequence[str] = ("val/recall", "val/mean_recall", "val/zero_shot"),
        log_images: bool = True,
    ) -> None:
        super().__init__()
        for field, value in (("filename_curves", filename_curves), ("filename_components", filename_components)):
            if not isinstance(value, str) or not value.endswith(".png") or "/" in value:
                raise ValueError(f"TrainingCurvesCallback: {field} must be a '*.png' file name, received {value!r}")
        if not loss_component_prefix:
            raise ValueError("TrainingCurvesCallback: loss_component_prefix must be a non-empty string, received ''")
        self.filename_curves = filename_curves
        self.filename_components = filename_components
        self.loss_component_prefix = loss_component_prefix
        self.train_loss_key = train_loss_key
        self.val_loss_key = val_loss_key
        self.val_metric_prefixes = tuple(val_metric_prefixes)
        self.log_images = log_images
        self.history: list[Record] = []
        self.written: list[Path] = []

    # ---- recording -------------------------------------------------------------------------------
    def _record(self, trainer: pl.Trainer, stage: str) -> None:
        values = scalar_metrics(trainer.callback_metrics, keep_val=stage == "val")
        if not values:
            return
        record: Record = {
            "stage": stage,
            "epoch": int(trainer.current_epoch),
            "step": int(trainer.global_step),
            "values": values,
        }
        key = (stage, record["epoch"], record["step"])
        self.history = [r for r in self.history if (r["stage"], r["epoch"], r["step"]) != key]
        self.history.append(record)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, "train")
        self._write(trainer, log=self.log_images)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._record(trainer, "val")
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._write(trainer, log=False)  # mid-epoch validation; else on_train_epoch_end writes next

    # ---- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r, values=dict(r["values"])) for r in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "history" not in state_dict:
            raise ValueError(f"TrainingCurvesCallback: state_dict needs a 'history' key, received {sorted(state_dict)}")
        self.history = [dict(r, values=dict(r["values"])) for r in state_dict["history"]]

    # ---- plotting --------------------------------------------------------------------------------
    def _write(self, trainer: pl.Trainer, log: bool) -> None:
        plots_dir = run_dir(trainer) / "plots"  # every rank: trainer.log_dir broadcasts
        if not trainer.is_global_zero or not self.history:
            return
        for name, fig in (
            (self.filename_curves, self.curves_figure()),
            (self.filename_components, self.components_figure()),
        ):
            if fig is None:
                continue
            path = save_png_atomic(fig, plots_dir / name)
            if log:
                log_figure(trainer, f"plots/{Path(name).stem}", fig, png_path=path)
            if path not in self.written:
                self.written.append(path)

    def curves_figure(self) -> "Figure":
        """Left: train and val loss vs epoch. Right: validation metrics matching `val_metric_prefixes`."""
        fig, (loss_ax, metric_ax) = new_figure(ncols=2, panel_size=(5.0, 3.8))
        for key, label in ((self.train_loss_key, "train"), (self.val_loss_key, "val")):
            _plot_series(loss_ax, self.history, key, label)
        _finish(loss_ax, "loss", "loss")
        metrics = [n for n in metric_names(self.history) if n.startswith(self.val_metric_prefixes)]
        for name in metrics:
            _plot_series(metric_ax, self.history, name, name)
        _finish(metric_ax, "validation metrics", "value")
        return fig

    def components_figure(self) -> "Figure | None":
        """One line per metric starting with `loss_component_prefix`; None when there is none."""
        names = [n for n in metric_names(self.history) if n.startswith(self.loss_component_prefix)]
        if not names:
            return None
        fig, (ax,) = new_figure(ncols=1, panel_size=(6.0, 4.0))
        for name in names:
            _plot_series(ax, self.history, name, name)
        _finish(ax, "loss components", "loss")
        return fig


def _plot_series(ax: "Axes", history: Sequence[Record], name: str, label: str) -> None:
    epochs, values = series(history, name)
    finite = [(e, v) for e, v in zip(epochs, values) if math.isfinite(v)]
    if finite:
        ax.plot([e for e, _ in finite], [v for _, v in finite], marker="o", markersize=3, label=label)


def _finish(ax: "Axes", title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="0.5")
