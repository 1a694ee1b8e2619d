"""notebooks/generator_ppo.ipynb runs top to bottom on the tiny config."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient


@pytest.mark.slow
def test_generator_ppo_notebook_executes(repo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PRISMRL_REPO", str(repo_root))
    monkeypatch.setenv("PRISMRL_NOTEBOOK_WORKDIR", str(tmp_path))
    notebook = nbformat.read(repo_root / "notebooks" / "generator_ppo.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(repo_root / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs) >= 2
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "golden/accuracy" in text and "Examples:" in text and "report written" in text
    assert (tmp_path / "runs/generator_ppo/tiny/checkpoints/last.ckpt").is_file()
    assert (tmp_path / "runs/generator_ppo/tiny/report/report.md").is_file()
