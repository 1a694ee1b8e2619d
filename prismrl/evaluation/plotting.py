"""Small plotting helpers shared by the plotting callbacks.

Figures are built with `matplotlib.figure.Figure` and rendered with the Agg canvas directly, so the
callbacks never touch pyplot's global state or the user's interactive backend. matplotlib is
imported inside the functions, keeping `import prismrl.callbacks` light.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_figure(
    ncols: int = 1, nrows: int = 1, panel_size: tuple[float, float] = (5.0, 4.0), dpi: int = 100
) -> tuple["Figure", list["Axes"]]:
    """A pyplot-free Figure with an Agg canvas and `nrows * ncols` axes (row-major list)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if ncols < 1 or nrows < 1:
        raise ValueError(f"new_figure: expected ncols >= 1 and nrows >= 1, received ncols={ncols}, nrows={nrows}")
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def figure_to_rgb(fig: "Figure") -> np.ndarray:
    """Render the figure with Agg and return its pixels as a uint8 array [H, W, 3]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # [H, W, 4]
    return np.ascontiguousarray(rgba[..., :3])  # [H, W, 3]


def save_png_atomic(fig: "Figure", path: str | os.PathLike[str]) -> Path:
    """Write the figure as PNG to `path`: render into a temporary file beside it, then `os.replace`.

    Readers (TensorBoard, a notebook polling the folder) never see a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; a plot is as readable as any other file
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def run_dir(trainer: "pl.Trainer") -> Path:
    """The run folder: `trainer.log_dir`, falling back to `trainer.default_root_dir`.

    `trainer.log_dir` broadcasts across ranks, so call this on every rank, not only on rank zero.
    """
    log_dir = trainer.log_dir
    return Path(log_dir if log_dir is not None else trainer.default_root_dir)


def log_figure(trainer: "pl.Trainer", tag: str, fig: "Figure", png_path: Path | None = None) -> list[str]:
    """Log a rendered figure to every TensorBoard and WandB logger of the trainer.

    TensorBoard gets `add_image(tag, [H, W, 3], global_step)`; WandB gets a `wandb.Image` of the PNG at
    `png_path` (or of the pixels when no path is given). Pixels are read back from `png_path` when given,
    so the figure is not drawn twice. Other loggers are skipped.
    Returns the names of the logger classes that received the image.
    """
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    step = int(trainer.global_step)
    pixels: np.ndarray | None = None

    def rgb() -> np.ndarray:
        nonlocal pixels
        if pixels is None:
            pixels = _read_png_rgb(png_path) if png_path is not None else figure_to_rgb(fig)
        return pixels

    used: list[str] = []
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, rgb(), global_step=step, dataformats="HWC")
            used.append(type(logger).__name__)
        elif isinstance(logger, WandbLogger):
            image: Any = str(png_path) if png_path is not None else rgb()
            logger.log_image(key=tag, images=[image], step=step)
            used.append(type(logger).__name__)
    return used


def _read_png_rgb(path: Path) -> np.ndarray:
    """Pixels of a PNG file as uint8 [H, W, 3]."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))  # [H, W, 3]
