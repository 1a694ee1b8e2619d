"""Actor-critic encoders initialized from a trained alignment run's towers (``alignment_checkpoint``)."""

from __future__ import annotations

import pytest
import torch

ALIGNMENT = "configs/alignment/tiny.yaml"
ACTOR_CRITIC = "configs/actor_critic/tiny.yaml"
CLIP = '{"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8, "hidden_size": 32, ' \
       '"intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2}'
BERT = '{"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, ' \
       '"num_attention_heads": 2, "vocab_size": 30522, "max_position_embeddings": 64}'
FAST = ("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.callbacks", "[]", "--trainer.logger", "false")


@pytest.fixture(scope="module")
def aligned(cli_tools, tmp_path_factory):
    """(last.ckpt of a 2-step tiny alignment run, its towers' weights)."""
    workdir = tmp_path_factory.mktemp("alignment")
    cli = cli_tools.run(ALIGNMENT, workdir, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                        "--trainer.limit_val_batches", "1", "--trainer.callbacks", "[]", "--trainer.logger", "false",
                        "--trainer.enable_checkpointing", "false")
    assert cli.trainer.global_step == 2
    path = workdir / "alignment.ckpt"
    cli.trainer.save_checkpoint(path)
    towers = {name: cli_tools.state(getattr(cli.model, f"{name}_tower").encoder) for name in ("image", "text")}
    return path, towers


def _assert_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)


def test_actor_critic_starts_from_the_alignment_towers_and_trains(cli_tools, tmp_path, aligned):
    path, towers = aligned
    cli = cli_tools.run(ACTOR_CRITIC, tmp_path, "--model.init_args.alignment_checkpoint", str(path), *FAST, run=False)
    _assert_equal(cli.model.vision_encoder.state_dict(), towers["image"])
    _assert_equal(cli.model.text_encoder.state_dict(), towers["text"])
    fresh = cli_tools.run(ACTOR_CRITIC, tmp_path, run=False).model
    assert any(not torch.equal(fresh.vision_encoder.state_dict()[k], v) for k, v in towers["image"].items())
    image_only = cli_tools.run(ACTOR_CRITIC, tmp_path, "--model.init_args.alignment_checkpoint", str(path),
                               "--model.init_args.modalities", "image", run=False).model
    assert image_only.text_encoder is None
    _assert_equal(image_only.vision_encoder.state_dict(), towers["image"])
    cli_tools.fit(cli, tmp_path)  # the loaded encoders train as usual
    assert cli.trainer.global_step == 2


def test_mismatched_towers_and_other_stages_are_named_errors(cli_tools, tmp_path, aligned):
    path, _ = aligned
    with pytest.raises(ValueError, match=r"alignment_checkpoint: the image tower in .* does not match vision_encoder "
                                         r"\(HFVisionEncoder\).*fc1.weight: \(64, 32\) in the checkpoint, \(48, 32\) in vision_encoder"):
        cli_tools.run(ACTOR_CRITIC, tmp_path, "--model.init_args.alignment_checkpoint", str(path),
                      "--model.init_args.vision_encoder.init_args.tiny_config", CLIP, run=False)
    with pytest.raises(ValueError, match=r"alignment_checkpoint: the text tower in .* does not match text_encoder "
                                         r"\(HFTextEncoder\).*missing in the checkpoint: \['model.encoder.layer.2"):
        cli_tools.run(ACTOR_CRITIC, tmp_path, "--model.init_args.alignment_checkpoint", str(path),
                      "--model.init_args.text_encoder.init_args.tiny_config", BERT, run=False)
    actor_critic = cli_tools.run(ACTOR_CRITIC, tmp_path, *FAST)
    other = tmp_path / "actor_critic.ckpt"
    actor_critic.trainer.save_checkpoint(other)
    with pytest.raises(ValueError, match=r"alignment_checkpoint: '.*actor_critic.ckpt' was written by stage "
                                         r"prismrl.lightning_modules.actor_critic.ActorCriticModule; expected .*AlignmentModule"):
        cli_tools.run(ACTOR_CRITIC, tmp_path, "--model.init_args.alignment_checkpoint", str(other), run=False)
