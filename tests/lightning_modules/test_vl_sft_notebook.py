"""notebooks/vl_sft.ipynb runs top to bottom on the tiny recursive-decoder config."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient


@pytest.mark.slow
def test_vl_sft_notebook_executes(repo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PRISMRL_REPO", str(repo_root))
    monkeypatch.setenv("PRISMRL_NOTEBOOK_WORKDIR", str(tmp_path))
    notebook = nbformat.read(repo_root / "notebooks" / "vl_sft.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(repo_root / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "val/exact_match_parity" in text and "-> " in text and "label 4962" in text  # " seven" is labelled
    assert (tmp_path / "runs/vl_sft/tiny_trm/checkpoints/last.ckpt").is_file()
