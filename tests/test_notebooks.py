"""Every notebook in notebooks/ runs top to bottom on its tiny config, shows its plots, prints what it
promises and leaves its run folder behind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@dataclass(frozen=True)
class Expected:
    """What a notebook's outputs must hold: at least ``min_pngs`` PNG figures, each of ``texts`` in its
    printed output, each of ``files`` (relative to the run's work folder) written."""

    min_pngs: int = 1
    texts: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


EXPECTED = {
    "alignment.ipynb": Expected(),
    "actor_critic.ipynb": Expected(texts=("val/acc", "mode now rl"),
                                   files=("runs/actor_critic/tiny/version_0/checkpoints/last.ckpt",)),
    "generator_ppo.ipynb": Expected(min_pngs=2, texts=("golden/accuracy", "Examples:", "report written"),
                                    files=("runs/generator_ppo/tiny/version_0/checkpoints/last.ckpt",
                                           "runs/generator_ppo/tiny/report/report.md")),
    "masked_lm.ipynb": Expected(texts=("val/masked_accuracy", "val/perplexity", "exported:", "sentence embedding shape"),
                                files=("runs/masked_lm/tiny/version_0/checkpoints/last.ckpt",
                                       "runs/masked_lm/tiny/encoder/prismrl_dap.json")),
    "grpo.ipynb": Expected(texts=("train/reward/vowel_share", "adapter_config.json"),
                           files=("runs/grpo/tiny/version_0/checkpoints/last.ckpt",)),
    # " seven" is labelled: the recursive decoder's answer vocabulary is printed
    "vl_sft.ipynb": Expected(texts=("val/exact_match_parity", "-> ", "label 4962"),
                             files=("runs/vl_sft/tiny_trm/version_0/checkpoints/last.ckpt",)),
    # data rows + waveform figure, fit, with-audio vs drop_audio table, predict_step answers
    "trimodal.ipynb": Expected(min_pngs=2, texts=("question types in train", "playing", "val/exact_match_spoken",
                                                  "clips in a drop_audio batch: False", "(expected '"),
                               files=("runs/vl_sft/trimodal_tiny/version_0/checkpoints/last.ckpt",)),
}


def test_every_notebook_has_expectations():
    assert sorted(EXPECTED) == NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(repo_root, tmp_path, monkeypatch, name):
    monkeypatch.setenv("PRISMRL_REPO", str(repo_root))
    monkeypatch.setenv("PRISMRL_NOTEBOOK_WORKDIR", str(tmp_path))
    notebook = nbformat.read(repo_root / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(repo_root / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    expected = EXPECTED[name]
    pngs = sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    assert pngs >= expected.min_pngs
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert [t for t in expected.texts if t not in text] == []
    assert [f for f in expected.files if not (tmp_path / f).is_file()] == []
