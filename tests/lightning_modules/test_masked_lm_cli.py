"""End to end: `prismrl fit --config configs/masked_lm/tiny.yaml` (staged unfreezing, export, exact resume)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from prismrl.backbones import HFTextEncoder
from prismrl.callbacks.staged_unfreezing import StagedUnfreezing
from prismrl.cli import build_cli

TINY = "configs/masked_lm/tiny.yaml"
RUN = Path("runs/masked_lm/tiny")


def _cli(repo_root: Path, workdir: Path, *args: str, run: bool = True):
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        if run:
            return build_cli([args[0] if args else "fit", "--config", str(repo_root / TINY), *args[1:]])
        return build_cli(["--config", str(repo_root / TINY), *args], run=False)
    finally:
        os.chdir(cwd)


class EncoderSnapshots(Callback):
    """The first transformer layer's query weight at the start of every epoch."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.weights.append(pl_module.model.bert.encoder.layer[0].attention.self.query.weight.detach().clone())


@pytest.fixture(scope="module")
def tiny_run(repo_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("masked_lm_tiny")
    cli = _cli(repo_root, workdir, run=False)
    snapshots = EncoderSnapshots()
    cli.trainer.callbacks.append(snapshots)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        os.chdir(cwd)
    return workdir, cli, snapshots


def test_fit_trains_in_stages_logs_metrics_and_exports_the_encoder(tiny_run):
    workdir, cli, snapshots = tiny_run
    run = workdir / RUN
    checkpoints = {p.name for p in (run / "version_0/checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in checkpoints and any(name.startswith("best-epoch=") for name in checkpoints)
    with open(run / "version_0/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    accuracies = [float(r["val/masked_accuracy"]) for r in rows if r.get("val/masked_accuracy")]
    assert len(accuracies) == 2 and all(0.0 <= a <= 1.0 for a in accuracies)
    assert any(r.get("val/perplexity") for r in rows) and any(r.get("train/loss") for r in rows)
    assert (run / "version_0/plots/training_curves.png").is_file()
    # epoch 0 trains embeddings + head only; epoch 1 also the transformer layers (a new optimizer group)
    assert len(snapshots.weights) == 2 and torch.equal(snapshots.weights[0], snapshots.weights[1])
    final = cli.model.model.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(final, snapshots.weights[1])
    groups = cli.trainer.optimizers[0].param_groups
    assert [g.get("name") for g in groups[-2:]] == ["unfrozen_epoch1", "unfrozen_epoch1_no_decay"]
    assert groups[-1]["initial_lr"] == 1.0e-3
    # the exported encoder is what HFTextEncoder loads, weight for weight, with the domain token
    encoder = HFTextEncoder(model_name_or_path=str(run / "encoder"), max_length=48)
    expected, loaded = cli.model.encoder.state_dict(), encoder.model.state_dict()
    assert expected.keys() == loaded.keys()
    for key in expected:
        assert torch.equal(expected[key], loaded[key]), key
    assert encoder.tokenizer.convert_tokens_to_ids("<DOMAIN_PYDOC>") == cli.model.domain_token_ids[0] == 30522


def test_checkpoint_holds_the_staged_unfreezing_state(tiny_run):
    workdir, cli, _ = tiny_run
    last = torch.load(workdir / RUN / "version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    state = last["callbacks"][next(k for k in last["callbacks"] if k.startswith("StagedUnfreezing"))]
    assert state["applied_epoch"] == 1 and len(state["internal_optimizer_metadata"][0]) == len(cli.trainer.optimizers[0].param_groups)
    assert any(isinstance(c, StagedUnfreezing) for c in cli.trainer.callbacks)
    from prismrl.lightning_modules.masked_lm import MaskedLMModule

    restored = MaskedLMModule.load_from_checkpoint(workdir / RUN / "version_0/checkpoints/last.ckpt").eval()
    batch = next(iter(cli.datamodule.val_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(restored.masked_logits(batch)[0], cli.model.eval().masked_logits(batch)[0])
    assert restored.domain_tokens == ["<DOMAIN_PYDOC>"] and restored.vocab_size == 30523


class CrashAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_mid_epoch_after_the_unfreeze_matches_the_uninterrupted_run(repo_root, tmp_path, tiny_run):
    _, full, _ = tiny_run
    crash_step = 6  # epoch 1, batch 2: the encoder group exists, masks depend on (seed, epoch, sample)
    cli = _cli(repo_root, tmp_path, "--model.init_args.export_dir", "null", run=False)
    saver = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    cli.trainer.callbacks.extend([saver, CrashAtStep(crash_step)])
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        resumed = _cli(repo_root, tmp_path, "--model.init_args.export_dir", "null", run=False)
        resumed.trainer.fit(resumed.model, datamodule=resumed.datamodule, ckpt_path=tmp_path / "steps" / f"step={crash_step}.ckpt")
    finally:
        os.chdir(cwd)
    assert resumed.trainer.global_step == full.trainer.global_step
    expected, actual = full.model.state_dict(), resumed.model.state_dict()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)


def test_validate_without_training_reports_masked_accuracy(repo_root, tmp_path):
    cli = _cli(repo_root, tmp_path, "validate")
    metrics = cli.trainer.callback_metrics
    assert {"val/loss", "val/perplexity", "val/masked_accuracy"} <= set(metrics)
    assert float(metrics["val/masked_accuracy"]) < 0.05  # random init: about 1 / vocabulary size
