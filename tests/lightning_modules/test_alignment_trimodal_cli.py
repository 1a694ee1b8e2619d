"""End to end: `prismrl fit --config configs/alignment/trimodal_tiny.yaml` (image + text + spoken digits)."""

from __future__ import annotations

import csv

import pytest
import torch

from prismrl.data.spoken_digits import load_clip, spoken_digit_clips

TRIMODAL = "configs/alignment/trimodal_tiny.yaml"
RUN = "runs/alignment/trimodal_tiny"


@pytest.fixture(scope="module")
def trimodal_run(cli_tools, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trimodal_run")
    return workdir, cli_tools.run(TRIMODAL, workdir)


def test_fit_logs_every_pair_and_audio_recalls(trimodal_run):
    workdir, cli = trimodal_run
    run = workdir / RUN
    assert {"last.ckpt"} <= {p.name for p in (run / "version_0/checkpoints").glob("*.ckpt")}
    with open(run / "version_0/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0])
    for tag in ("train/loss", "train/loss_d16", "train/temperature", "train/audio_text/loss", "train/audio_image/loss_d32",
                "train/audio_text/temperature", "val/mean_recall@1", "val/audio_text_mean_recall@1",
                "val/audio_image_mean_recall@1", "val/audio_zero_shot_acc"):
        assert tag in columns, tag
    for direction in ("a2t", "t2a", "a2i", "i2a", "i2t"):
        for k in (1, 5, 10):
            assert f"val/{direction}_recall@{k}_d64" in columns and f"val/{direction}_recall@{k}_d16" in columns
    metrics = cli.trainer.callback_metrics
    for name in ("val/a2t_recall@1_d64", "val/t2a_recall@10_d64", "val/audio_text_mean_recall@1"):
        assert 0.0 <= metrics[name].item() <= 1.0
    assert metrics["val/a2t_recall@10_d64"] >= metrics["val/a2t_recall@1_d64"]
    assert torch.isfinite(metrics["train/loss"])


def test_load_from_checkpoint_reproduces_audio_embeddings(trimodal_run):
    from prismrl.lightning_modules.alignment import AlignmentModule

    workdir, cli = trimodal_run
    model = cli.model.eval()
    restored = AlignmentModule.load_from_checkpoint(workdir / RUN / "version_0/checkpoints/last.ckpt").eval()
    clips = [load_clip(c) for c in spoken_digit_clips()[:3]]
    with torch.no_grad():
        expected = model.embed_audio(clips)
        torch.testing.assert_close(restored.embed_audio(clips), expected)
        assert expected.shape == (3, 64) and torch.allclose(expected.norm(dim=-1), torch.ones(3))
        # stereo input at 8 kHz: averaged and resampled to the same 16 kHz clip, so nearly the same embedding
        stereo_8k = torch.stack([clips[0][::2], clips[0][::2]])
        from_stereo = model.embed_audio([stereo_8k], sampling_rate=8_000)
        assert torch.nn.functional.cosine_similarity(from_stereo, expected[:1]) > 0.9
        assert model.embed_audio([clips[1]], dim=16).shape == (1, 16)
    with pytest.raises(ValueError, match=r"waveforms\[0\]: expected at least one audio sample"):
        model.embed_audio([torch.zeros(0)])


def test_resume_mid_epoch_after_a_crash_matches_uninterrupted_run(cli_tools, tmp_path, trimodal_run):
    _, full = trimodal_run  # 2 epochs of 6 steps, uninterrupted
    resumed = cli_tools.crash_and_resume(TRIMODAL, tmp_path, 9)
    expected = cli_tools.assert_same_run(full, resumed)
    assert any(k.startswith("audio_tower.") for k in expected)


def test_webdataset_format_trains_one_epoch(cli_tools, tmp_path):
    cli = cli_tools.run(TRIMODAL, tmp_path, "--data.init_args.format", "webdataset", "--trainer.max_epochs", "1",
               "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2", "--trainer.callbacks", "[]",
               "--trainer.logger", "false", "--trainer.enable_checkpointing", "false")
    assert cli.trainer.global_step == 2
    assert 0.0 <= cli.trainer.callback_metrics["val/audio_text_mean_recall@1"].item() <= 1.0


def test_audio_tower_without_audio_data_and_bad_pair_weights_fail_clearly(cli_tools, tmp_path):
    no_audio = ("--data", "prismrl.datamodules.DigitsDataModule", "--data.init_args.image_size", "32",
                "--trainer.max_epochs", "1", "--trainer.callbacks", "[]", "--trainer.logger", "false")
    with pytest.raises(ValueError, match="batch.audio: the model has an audio_tower but the batch carries no audio"):
        cli_tools.run(TRIMODAL, tmp_path, *no_audio)
    with pytest.raises(ValueError, match=r"pair_weights: expected keys from \['image_text', 'audio_text', 'audio_image'\]"):
        cli_tools.run(TRIMODAL, tmp_path, "--model.init_args.pair_weights", "{image_audio: 1.0}")
