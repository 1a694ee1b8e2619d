from __future__ import annotations

import numpy as np
import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from prismrl.evaluation.plotting import (
    figure_to_rgb,
    log_figure,
    new_figure,
    run_dir,
    save_png_atomic,
)


def test_new_figure_gives_row_major_axes_without_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig, axes = new_figure(ncols=3, nrows=2, panel_size=(2.0, 1.5), dpi=50)
    assert len(axes) == 6
    assert plt.get_fignums() == before  # not registered with pyplot
    assert tuple(fig.get_size_inches()) == (6.0, 3.0)
    with pytest.raises(ValueError, match="ncols"):
        new_figure(ncols=0)


def test_figure_to_rgb_renders_drawn_pixels():
    fig, (ax,) = new_figure(panel_size=(2.0, 2.0), dpi=40)
    ax.axis("off")
    ax.imshow(np.ones((4, 4, 3)) * np.array([1.0, 0.0, 0.0]), extent=(0, 1, 0, 1))
    pixels = figure_to_rgb(fig)
    assert pixels.shape == (80, 80, 3) and pixels.dtype == np.uint8
    center = pixels[40, 40]
    assert center[0] > 200 and center[1] < 60 and center[2] < 60  # the red image fills the centre


def test_save_png_atomic_writes_png_and_leaves_no_temp(tmp_path):
    fig, (ax,) = new_figure(panel_size=(2.0, 2.0), dpi=30)
    ax.plot([0, 1], [1, 0])
    target = tmp_path / "nested" / "plot.png"
    assert save_png_atomic(fig, target) == target
    assert save_png_atomic(fig, target) == target  # replacing an existing file works
    with Image.open(target) as img:
        assert img.format == "PNG" and img.size == (60, 60)
    assert sorted(p.name for p in target.parent.iterdir()) == ["plot.png"]


def test_run_dir_and_log_figure_follow_the_loggers(tmp_path, make_trainer, read_tb_images):
    bare = make_trainer(tmp_path / "bare", logger=False)
    assert run_dir(bare) == tmp_path / "bare"
    tb = TensorBoardLogger(tmp_path / "runs", name="exp")
    trainer = make_trainer(tmp_path, logger=[tb, CSVLogger(tmp_path / "runs", name="csv")])
    assert run_dir(trainer) == tmp_path / "runs" / "exp" / "version_0"
    fig, (ax,) = new_figure(panel_size=(2.0, 2.0), dpi=30)
    ax.plot([0, 1], [0, 1])
    assert log_figure(trainer, "plots/demo", fig) == ["TensorBoardLogger"]  # CSV gets no image
    tb.experiment.flush()
    assert read_tb_images(tb.log_dir) == {"plots/demo": [0]}
