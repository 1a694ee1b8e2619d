"""Callbacks and rewards the distributed test runs load by class_path (this folder is on PYTHONPATH)."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from prismrl.policy.seeding import prompt_key


class PromptRecorder(Callback):
    """Appends, per training batch, the rank, step and content keys of the rank's prompt records to
    ``<folder>/rank<r>.jsonl``: which prompts (and so which groups) each rank rolled out."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {"rank": trainer.global_rank, "step": trainer.global_step,
                "prompts": [prompt_key(r.prompt, r.images) for r in batch]}
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


def vowel_share(completions: list[str], records) -> list[float]:
    """Fraction of characters that are vowels (0 for an empty completion): varies between a random policy's
    completions, so advantages are non-zero and LoRA moves."""
    return [sum(c in "aeiouAEIOU" for c in text) / len(text) if text else 0.0 for text in completions]


class LossRecorder(Callback):
    """Appends, per training batch, the rank, step and the rank's own training loss (the ``loss`` the step returned)
    to ``<folder>/rank<r>.jsonl``. With equal per-rank batches and a per-sample mean loss, the mean over ranks is
    the loss of the whole batch."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.folder.mkdir(parents=True, exist_ok=True)
        line = {"rank": trainer.global_rank, "step": trainer.global_step, "loss": float(loss)}
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


def recorded_losses(folder: Path) -> dict[int, float]:
    """step -> mean over ranks of the losses a ``LossRecorder`` wrote to ``folder``."""
    per_step: dict[int, list[float]] = {}
    for path in sorted(Path(folder).glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            per_step.setdefault(row["step"], []).append(row["loss"])
    return {step: sum(losses) / len(losses) for step, losses in per_step.items()}
