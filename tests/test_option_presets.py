"""Presets for options no other config uses: the SigLIP-loss alignment, LoRA on both alignment encoders, and the
offline WandB logger added beside a stage config. Each runs a few real training steps."""

from __future__ import annotations

import os
import time

import pytest
import torch

from prismrl.cli import build_cli

SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
SMALL_DIGITS = ["--data.init_args.loader.batch_size", "16", "--data.init_args.image_size", "32"]


def _fit(repo_root, workdir, configs, *args):
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cli = build_cli([*[a for c in configs for a in ("--config", str(repo_root / c))], *args], run=False)
        start = {k: v.detach().clone() for k, v in cli.model.named_parameters()}
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return cli, start
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_the_siglip_preset_trains_the_sigmoid_loss_with_its_bias(repo_root, tmp_path):
    from prismrl.losses.contrastive import SigLipLoss

    cli, start = _fit(repo_root, tmp_path, ["configs/alignment/digits_minilm_siglip.yaml"], *SHORT, *SMALL_DIGITS)
    loss = cli.model.loss.base_loss
    assert isinstance(loss, SigLipLoss) and cli.trainer.global_step == 2
    assert float(loss.logit_bias) != float(start["loss.base_loss.logit_bias"])  # the learned bias moved
    assert torch.isfinite(torch.tensor(float(cli.trainer.callback_metrics["train/loss"])))
    assert (tmp_path / "runs/alignment/digits_minilm_siglip/version_0/checkpoints/last.ckpt").is_file()


@pytest.mark.slow
def test_the_lora_preset_trains_adapters_on_both_encoders_and_leaves_their_bases(repo_root, tmp_path):
    tiny_siglip = tmp_path / "tiny_siglip.yaml"  # no hub here: a tiny random-init SigLIP in place of the ViT-B/16
    tiny_siglip.write_text(
        "model:\n  init_args:\n    image_tower:\n      init_args:\n        encoder:\n          init_args:\n"
        "            model_name_or_path: null\n"
        "            tiny_config: {model_type: siglip_vision_model, image_size: 32, patch_size: 8, hidden_size: 32,\n"
        "                          intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2}\n")
    cli, start = _fit(repo_root, tmp_path, ["configs/alignment/lora_siglip_minilm.yaml", tiny_siglip], *SHORT,
                      *SMALL_DIGITS)
    after = dict(cli.model.named_parameters())
    for tower in ("image_tower", "text_tower"):
        encoder = {k: p for k, p in after.items() if k.startswith(f"{tower}.encoder.")}
        trainable = [k for k, p in encoder.items() if p.requires_grad]
        assert trainable and all("lora_" in k for k in trainable), trainable[:5]
        moved = [k for k in trainable if "lora_B" in k and not torch.equal(encoder[k], start[k])]
        assert moved, f"{tower}: no LoRA B matrix changed"
        frozen = [k for k, p in encoder.items() if not p.requires_grad]
        assert frozen and all(torch.equal(encoder[k], start[k]) for k in frozen)


@pytest.mark.slow
def test_the_wandb_preset_logs_offline_under_the_run_folder_beside_any_stage(repo_root, tmp_path):
    import wandb

    from prismrl.loggers import WandbLogger

    cli, _ = _fit(repo_root, tmp_path, ["configs/alignment/tiny.yaml", "configs/loggers/wandb.yaml"], *SHORT)
    wandb.finish()
    names = [type(logger).__name__ for logger in cli.trainer.loggers]
    assert names == ["TensorBoardLogger", "CSVLogger", "WandbLogger"]
    logger = cli.trainer.loggers[2]
    assert isinstance(logger, WandbLogger) and logger.experiment.settings.mode in ("offline", "dryrun")
    run_dir = tmp_path / "runs/alignment/tiny"
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    deadline = time.monotonic() + 120  # wandb's service process writes the run file after finish() returns
    while len(offline) == 1 and not list(offline[0].glob("run-*.wandb")) and time.monotonic() < deadline:
        time.sleep(1)
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb")), list(run_dir.rglob("*"))[:20]
    assert logger.experiment.name == "tiny/version_0"
    assert (run_dir / "version_0/metrics.csv").is_file()  # the stage's own loggers still write
