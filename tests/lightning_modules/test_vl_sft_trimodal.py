"""The tri-modal decoder (``configs/vl_sft/trimodal_tiny.yaml``): audio latents join the prefix beside the image
latents, answer-only labels, a batch without audio gets no audio tokens, a row without a clip is decoded as if it had
no audio tokens (both decoders), and ``prismrl predict`` writes answers that read back."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from prismrl.backbones.answer_decoder import answer_ids
from prismrl.backbones.answer_masking import IGNORE_INDEX

TINY = "configs/vl_sft/trimodal_tiny.yaml"
STEPS = ["--trainer.limit_train_batches", "2", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1"]


@pytest.fixture(scope="module")
def fitted(cli_tools, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trimodal")
    return workdir, cli_tools.run(TINY, workdir, *STEPS)


@pytest.fixture(scope="module")
def batches(fitted):
    """A validation batch with audio in some rows and none in others, and the same batch without audio."""
    _, cli = fitted
    batch = next(iter(cli.datamodule.val_dataloader()))
    assert batch.has_audio and not bool((batch.audio_lengths > 0).all())  # mixed: the masking case is exercised
    from prismrl.data.qa import ImageQABatch

    plain = ImageQABatch(batch.pixel_values, batch.questions, batch.answers, batch.question_types, batch.labels)
    return batch, plain


def test_two_training_steps_write_a_finite_loss_and_checkpoints(fitted):
    workdir, cli = fitted
    run = workdir / "runs/vl_sft/trimodal_tiny/version_0"
    assert cli.trainer.global_step == 2
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")] + [
        float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert any(r.get("val/exact_match_spoken") for r in rows)
    names = {p.name for p in (run / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in names and any(n.startswith("best-val-loss-") for n in names)


def test_audio_tokens_join_the_prefix_and_rows_without_a_clip_are_masked(fitted, batches):
    _, cli = fitted
    model, (batch, plain) = cli.model.eval(), batches
    latents, audio_latents = model.hparams.num_latents, model.hparams.audio_num_latents
    with torch.no_grad():
        prefix, mask = model(batch.pixel_values, batch.audio, batch.audio_lengths)
        visual, no_mask = model(plain.pixel_values)
    assert prefix.shape[:2] == (len(batch), latents + audio_latents) and visual.shape[1] == latents and no_mask is None
    torch.testing.assert_close(prefix[:, :latents], visual)
    has_clip = batch.audio_lengths > 0
    assert torch.equal(mask[:, latents:], has_clip[:, None].expand(-1, audio_latents)) and bool(mask[:, :latents].all())
    assert prefix[has_clip, latents:].abs().sum() > 0  # the audio latents carry something
    # a row without a clip: the same logits as with no audio tokens at all; a row with one: different
    decoder = model.decoder
    for row in (int((~has_clip).nonzero()[0]), int(has_clip.nonzero()[0])):
        one = slice(row, row + 1)
        with torch.no_grad():
            masked = decoder(prefix[one], batch.questions[one], batch.answers[one], prefix_mask=mask[one]).logits
            alone = decoder(visual[one], batch.questions[one], batch.answers[one]).logits
        assert torch.allclose(masked, alone, atol=1e-5) == (not bool(has_clip[row]))


def test_labels_are_the_answer_tokens_only(fitted, batches):
    _, cli = fitted
    decoder, (batch, _) = cli.model.decoder, batches
    with torch.no_grad():
        prefix, mask = cli.model(batch.pixel_values, batch.audio, batch.audio_lengths)
        out = decoder(prefix, batch.questions, batch.answers, prefix_mask=mask)
    expected = [t for ids in answer_ids(decoder.tokenizer, batch.answers, decoder.answer_template) for t in ids]
    assert out.labels.tolist() == expected and IGNORE_INDEX not in out.labels.tolist()
    assert out.logits.shape == (len(expected), len(decoder.tokenizer)) and torch.isfinite(out.loss)


def test_a_batch_without_audio_trains_on_image_tokens_only(fitted, batches, monkeypatch):
    _, cli = fitted
    model, (_, plain) = cli.model.train(), batches
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)  # outside a Trainer loop
    loss = model.training_step(plain, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.audio.parameters())  # nothing of the audio path ran
    assert any(p.grad is not None for p in model.visual.resampler.parameters())
    model.zero_grad(set_to_none=True)


def test_generate_hears_the_given_clips(fitted, batches):
    _, cli = fitted
    model, (batch, _) = cli.model, batches
    clips = [batch.audio[i, :n] if n else None for i, n in enumerate(batch.audio_lengths.tolist())]
    answers = model.generate(batch.pixel_values[:4], batch.questions[:4], audio=clips[:4])
    assert answers == model._answers(batch.pixel_values[:4], batch.questions[:4], batch.audio[:4], batch.audio_lengths[:4])
    with pytest.raises(ValueError, match="audio: expected 4 waveforms"):
        model.generate(batch.pixel_values[:4], batch.questions[:4], audio=clips[:3])


def test_trm_decoder_masks_absent_prefix_positions():
    from prismrl.backbones.recursive_decoder import RecursiveDecoder

    torch.manual_seed(0)
    decoder = RecursiveDecoder(dim=32, answer_length=3, max_question_length=8, max_prefix_length=6, depth=1,
                               num_heads=2, n_latent=1, t_recursions=1, n_supervision=1).eval()
    image, audio = torch.randn(2, 4, 32), torch.randn(2, 2, 32)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    questions, answers = ["What digit is shown?", "Which number is spoken?"], ["one", "two"]
    with torch.no_grad():
        both = decoder.step_logits(torch.cat([image, audio], 1), questions, mask)[-1]
        alone = decoder.step_logits(image, questions)[-1]
        loss = decoder(torch.cat([image, audio], 1), questions, answers, prefix_mask=mask).loss
    torch.testing.assert_close(both[1], alone[1])  # the row without a clip
    assert not torch.allclose(both[0], alone[0]) and torch.isfinite(loss)
    with pytest.raises(ValueError, match="prefix_mask: expected shape"):
        decoder.context(image, questions, mask)


def test_predict_writes_answers_that_read_back(fitted, repo_root, monkeypatch):
    from prismrl.cli import build_cli

    workdir, _ = fitted
    checkpoint = workdir / "runs/vl_sft/trimodal_tiny/version_0/checkpoints/last.ckpt"
    writer = '{"class_path": "prismrl.callbacks.jsonl_writer.JsonlPredictionWriter"}'
    monkeypatch.chdir(workdir)
    build_cli(["predict", "--config", str(repo_root / TINY), "--ckpt_path", str(checkpoint),
               "--trainer.limit_predict_batches", "2", "--trainer.callbacks+", writer])
    path = workdir / "runs/vl_sft/trimodal_tiny/predict/version_0/predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 32 and [r["row"] for r in rows] == list(range(32))
    assert set(rows[0]) == {"row", "sample_id", "question", "prediction", "answer", "question_type", "has_audio",
                            "exact_match"}
    assert all(isinstance(r["prediction"], str) and r["answer"] for r in rows)
    assert {r["has_audio"] for r in rows} == {True, False}
    assert {r["question_type"] for r in rows} <= {"digit", "spoken", "match"}


@pytest.mark.parametrize("config", ["configs/vl_sft/trimodal_trm.yaml", "configs/vl_sft/trimodal_smollm2.yaml",
                                    "configs/alignment/edge_glass_gpu.yaml"])
def test_presets_parse_and_keep_the_best_checkpoint_by_lowest_val_loss(repo_root, config, capsys):
    import yaml

    from prismrl.cli import build_cli

    with pytest.raises(SystemExit) as stopped:  # --print_config: every init arg checked against its class, nothing built
        build_cli(["fit", "--config", str(repo_root / config), "--print_config"])
    assert stopped.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    checkpoints = [c["init_args"] for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert any(c.get("monitor") == "val/loss" and c.get("mode") == "min" for c in checkpoints)
    model = printed["model"]["init_args"]
    if "alignment" in config:  # Edge Glass's recipe
        assert model["image_tower"]["init_args"]["embed_dim"] == 4096 and model["optimizer"]["lr"] == 2e-4
        assert (model["full_dim_weight"], model["mrl_weight"], model["sample_single_dim"]) == (0.25, 1.0, True)
        assert model["matryoshka_dims"] == [128, 256, 512, 1024, 2048, 4096]
    else:
        assert model["audio_encoder"]["init_args"]["encoder"]["class_path"].endswith("WhisperAudioEncoder")
        assert printed["data"]["class_path"].endswith("TriModalQADataModule")
