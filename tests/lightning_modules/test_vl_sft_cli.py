"""End to end: `prismrl fit --config configs/vl_sft/tiny_{lm,trm}.yaml`, checkpoints, metrics, exact resume,
and the vision tower initialized from an alignment checkpoint."""

from __future__ import annotations

import csv

import pytest
import torch

DECODERS = {"lm": "configs/vl_sft/tiny_lm.yaml", "trm": "configs/vl_sft/tiny_trm.yaml"}


@pytest.fixture(scope="module")
def runs(cli_tools, tmp_path_factory):
    """One uninterrupted 2-epoch run per decoder: {decoder: (workdir, cli)}."""
    out = {}
    for name, config in DECODERS.items():
        workdir = tmp_path_factory.mktemp(name)
        out[name] = (workdir, cli_tools.run(config, workdir))
    return out


@pytest.mark.parametrize("name", list(DECODERS))
def test_both_decoders_train_and_write_checkpoints_metrics_and_answers(runs, name):
    from prismrl.lightning_modules.vl_sft import VisionLanguageSFTModule

    workdir, cli = runs[name]
    run = workdir / f"runs/vl_sft/tiny_{name}"
    checkpoints = {p.name for p in (run / "version_0/checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in checkpoints and any(n.startswith("best-") for n in checkpoints)
    last = torch.load(run / "version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 8
    with open(run / "version_0/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for metric in ("train/loss", "train/token_acc", "val/loss", "val/token_acc", "val/exact_match",
                   "val/exact_match_digit", "val/exact_match_parity", "val/exact_match_size"):
        assert any(row.get(metric) for row in rows), f"{metric} missing"
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < losses[0]  # it learns (answer tokens from ~ln(49152))
    assert (run / "version_0/plots/training_curves.png").is_file()
    batch = next(iter(cli.datamodule.val_dataloader()))
    answers = cli.model.generate(batch.pixel_values[:4], batch.questions[:4])
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    assert cli.model.generate(batch.pixel_values[0], "What digit is shown?") == cli.model.generate(
        batch.pixel_values[:1], ["What digit is shown?"])
    reloaded = VisionLanguageSFTModule.load_from_checkpoint(run / "version_0/checkpoints/last.ckpt")
    assert reloaded.generate(batch.pixel_values[:4], batch.questions[:4]) == answers


@pytest.mark.parametrize("name", list(DECODERS))
def test_resume_mid_epoch_after_a_crash_matches_uninterrupted_run(cli_tools, tmp_path, runs, name):
    """Crash at step 6 (mid-epoch 2; text dropout and LoRA/decoder dropout draw random numbers)."""
    resumed = cli_tools.crash_and_resume(DECODERS[name], tmp_path, 6)
    assert resumed.trainer.global_step == 8
    cli_tools.assert_same_run(runs[name][1], resumed)


@pytest.fixture(scope="module")
def alignment_checkpoint(cli_tools, tmp_path_factory):
    """The weights of a real (untrained) AlignmentModule built from configs/alignment/tiny.yaml."""
    workdir = tmp_path_factory.mktemp("alignment")
    cli = cli_tools.run("configs/alignment/tiny.yaml", workdir, "--seed_everything", "7", run=False)
    path = workdir / "alignment.ckpt"
    torch.save({"state_dict": cli.model.state_dict()}, path)
    return path, {k: v.clone() for k, v in cli.model.image_tower.state_dict().items()}


def test_vision_tower_loads_from_an_alignment_checkpoint(cli_tools, tmp_path, alignment_checkpoint):
    path, tower = alignment_checkpoint
    cli = cli_tools.run(DECODERS["trm"], tmp_path, "--model.init_args.alignment_checkpoint", str(path), run=False)
    loaded = cli.model.visual.vision_encoder.state_dict()
    assert loaded.keys() == tower.keys()
    for key, value in tower.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    fresh = cli_tools.run(DECODERS["trm"], tmp_path, run=False).model.visual.vision_encoder.state_dict()
    assert any(not torch.equal(fresh[k], tower[k]) for k in tower)


def test_alignment_checkpoint_with_other_dims_is_refused(cli_tools, tmp_path, alignment_checkpoint):
    path, _ = alignment_checkpoint
    with pytest.raises(ValueError, match=r"alignment_checkpoint: the image tower .* does not match vision_encoder.*"
                                         r"projection.net.weight: \(64, 32\) in the checkpoint, \(48, 32\)"):
        cli_tools.run(DECODERS["trm"], tmp_path, "--model.init_args.alignment_checkpoint", str(path),
             "--model.init_args.vision_encoder.init_args.embed_dim", "48", run=False)
    with pytest.raises(ValueError, match=r"alignment_checkpoint: expected a checkpoint file, received .*x.ckpt. \(no such file\)"):  # the CLI reports it as a ValueError
        cli_tools.run(DECODERS["trm"], tmp_path, "--model.init_args.alignment_checkpoint", str(tmp_path / "x.ckpt"),
             run=False)


def test_bad_text_dropout_fails_before_training(cli_tools, tmp_path):
    with pytest.raises(ValueError, match=r"text_dropout: expected a probability in \[0, 1\)"):
        cli_tools.run(DECODERS["trm"], tmp_path, "--model.init_args.text_dropout", "1.5")
    assert not (tmp_path / "runs/vl_sft/tiny_trm/version_0/checkpoints").exists()


def test_frozen_vision_encoder_stays_in_eval_mode_and_out_of_the_optimizer(cli_tools, tmp_path):
    cli = cli_tools.run(DECODERS["trm"], tmp_path, "--model.init_args.freeze_vision", "true",
               "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1")
    encoder = cli.model.visual.vision_encoder
    assert not any(p.requires_grad for p in encoder.parameters())
    cli.model.train()
    assert not encoder.training and cli.model.visual.resampler.training
    optimized = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in encoder.parameters()}
    assert {id(p) for p in cli.model.visual.resampler.parameters()} <= optimized


def test_answer_metrics_by_hand():
    from prismrl.lightning_modules.vl_sft import (
        exact_match,
        normalize_answer,
        token_correct,
    )

    assert normalize_answer("  Seven.\n") == "seven" and normalize_answer("odd  number") == "odd number"
    assert exact_match(["Seven.", "odd", "", "yes"], ["seven", "even", "no", "yes"]).tolist() == [1.0, 0.0, 0.0, 1.0]
    logits = torch.tensor([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], [[0.0, 0.0, 5.0], [1.0, 0.0, 0.0]]])  # argmax [[1, 0], [2, 0]]
    labels = torch.tensor([[1, 2], [2, -100]])
    assert token_correct(logits, labels).tolist() == [1.0, 0.0, 1.0]  # the -100 position is not counted
    with pytest.raises(ValueError, match="predictions: expected 2 strings"):
        exact_match(["a"], ["a", "b"])


def test_optimizer_settings_give_three_learning_rates_and_question_types_come_from_the_data(cli_tools, tmp_path):
    from prismrl.data.digit_qa import QUESTION_TYPES
    from prismrl.optim import OptimizerSettings

    cli = cli_tools.run(DECODERS["trm"], tmp_path, "--model.init_args.optimizer.lr", "0.002",
                        "--model.init_args.decoder_lr", "0.0005", "--trainer.max_epochs", "1",
                        "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1")
    model = cli.model
    assert model.optimizer_settings == OptimizerSettings(lr=2e-3, encoder_lr=1e-3, weight_decay=0.01, warmup_ratio=0.1)
    assert model.question_types == list(QUESTION_TYPES) == model.hparams.question_types  # linked from the datamodule
    ids = {"vision": {id(p) for p in model.visual.vision_encoder.parameters()},
           "decoder": {id(p) for p in model.decoder.parameters()}}
    lrs = {}
    for group in cli.trainer.optimizers[0].param_groups:
        part = next((k for k, v in ids.items() if id(group["params"][0]) in v), "head")
        lrs.setdefault(part, set()).add(group["initial_lr"])
    assert lrs == {"head": {2e-3}, "decoder": {5e-4}, "vision": {1e-3}}
