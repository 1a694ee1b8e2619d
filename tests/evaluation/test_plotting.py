"""Plots are written atomically with the usual file mode (0644 under the common umask 022), not mkstemp's 0600."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prismrl.evaluation.plotting import save_png_atomic  # noqa: E402


def test_png_is_written_with_the_umask_mode_and_no_temporary_file(tmp_path):
    previous = os.umask(0o022)
    try:
        fig = plt.figure()
        path = save_png_atomic(fig, tmp_path / "plots" / "curve.png")
        plt.close(fig)
    finally:
        os.umask(previous)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]
