"""ActorCriticModule built in Python from tiny encoders: losses, modes, ablations, DAP loading, bad input."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from prismrl.backbones import HFTextEncoder, HFVisionEncoder
from prismrl.data.batches import ImageTextBatch
from prismrl.lightning_modules.actor_critic import ActorCriticModule
from prismrl.optim import OptimizerSettings
from prismrl.rl.actor_critic import actor_critic_losses, match_rewards

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "vocab_size": 30522, "max_position_embeddings": 64}
TINY_CLIP = {"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8, "hidden_size": 24,
             "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2}


@dataclass
class RewardBatch(ImageTextBatch):
    """A batch carrying external rewards ([B] or [B, T]) and optional done flags."""

    rewards: torch.Tensor | None = None
    dones: torch.Tensor | None = None


def _module(text_config: dict | None = None, **kwargs) -> ActorCriticModule:
    torch.manual_seed(0)
    text = HFTextEncoder(tiny_config=text_config or TINY_BERT, max_length=16)
    vision = HFVisionEncoder(tiny_config=TINY_CLIP)
    settings = dict(fusion_dim=16, fusion_heads=2, fusion_layers=1) | kwargs
    return ActorCriticModule(text, vision, **settings)


def _batch(labels=(1, 3, 5, 7), cls=ImageTextBatch, **extra) -> ImageTextBatch:
    torch.manual_seed(1)
    captions = ["a noisy digit: one of 1, 3 or 4", "an odd digit", "a digit greater than five", "an even digit"][: len(labels)]
    return cls(torch.randn(len(labels), 3, 32, 32), captions, torch.tensor(labels), **extra)


@pytest.fixture(scope="module")
def module() -> ActorCriticModule:
    return _module()


def test_forward_shapes_and_greedy_eval(module):
    module.eval()
    out, class_logits = module(_batch())
    assert out.logits.shape == (4, 10) and class_logits.shape == (4, 10) and out.reasoned_state.shape == (4, 16)
    torch.testing.assert_close(out.actions, out.logits.argmax(-1))


def test_default_reward_loss_matches_the_hand_assembled_one():
    module = _module(mode="combined", wrong_action_reward=-1.0, supervised_weight=0.5, rl_weight=2.0).eval()
    batch = _batch()
    total = module._step(batch, "val")
    with torch.no_grad():
        out, class_logits = module(batch)
        returns = match_rewards(out.actions, batch.labels, -1.0)
        rl = actor_critic_losses(out.log_probs, out.values, returns, out.entropy, True, 0.01, 0.5)
        expected = 0.5 * torch.nn.functional.cross_entropy(class_logits, batch.labels) + 2.0 * rl.total
    torch.testing.assert_close(total, expected)
    assert set(returns.tolist()) <= {1.0, -1.0}


def test_batch_rewards_replace_the_label_reward():
    module = _module(mode="rl", normalize_advantages=False, gamma=0.5).eval()
    rewards = torch.tensor([[1.0, 2.0], [0.0, 0.0], [1.0, 1.0], [-1.0, 4.0]])
    dones = torch.tensor([[False, False], [False, False], [True, False], [False, False]])
    batch = _batch(cls=RewardBatch, rewards=rewards, dones=dones)
    total = module._step(batch, "val")
    with torch.no_grad():
        out, _ = module(batch)
        returns = torch.tensor([2.0, 0.0, 1.0, 1.0])  # r0 + 0.5 * r1, cut by the done flag in row 2
        expected = actor_critic_losses(out.log_probs, out.values, returns, out.entropy, False, 0.01, 0.5).total
    torch.testing.assert_close(total, expected)
    # rl mode with external rewards needs no labels
    unlabeled = RewardBatch(batch.pixel_values, batch.captions, rewards=rewards[:, 0])
    assert torch.isfinite(module._step(unlabeled, "val"))


def test_logged_actions_and_rewards_train_the_logged_choice():
    """Logged bandit feedback: the policy term uses log pi(logged action), the return is the logged reward."""
    module = _module(mode="combined", normalize_advantages=False).eval()
    logged, rewards = torch.tensor([2, 3, 5, 0]), torch.tensor([0.0, 1.0, 1.0, 0.0])
    batch = _batch(actions=logged, rewards=rewards)
    with torch.no_grad():
        out, class_logits = module(batch)
        assert out.actions.tolist() == logged.tolist()
        torch.testing.assert_close(out.log_probs, torch.log_softmax(out.logits.float(), -1)[torch.arange(4), logged])
        own, _ = module(batch, logged_actions=False)
        assert own.actions.tolist() == own.logits.argmax(-1).tolist()
        rl = actor_critic_losses(out.log_probs, out.values, rewards, out.entropy, False, 0.01, 0.5)
        expected = torch.nn.functional.cross_entropy(class_logits, batch.labels) + rl.total
    torch.testing.assert_close(module._step(batch, "val"), expected)
    for bad in (torch.tensor([2, 3, 5, 10]), torch.tensor([2, 3, -1, 0]), torch.tensor([2.0, 3.0, 5.0, 0.0])):
        with pytest.raises(ValueError, match="batch.actions"):
            module(_batch(actions=bad, rewards=rewards))


def test_training_step_backpropagates_into_every_trained_part():
    module = _module(mode="combined", optimizer=OptimizerSettings(lr=1e-3, encoder_lr=1e-3, warmup_ratio=0.1)).train()
    module.training_step(_batch(), 0).backward()
    for name in ("text_encoder", "vision_encoder", "fusion", "classifier"):
        grads = [p.grad for p in getattr(module, name).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
    assert module.head.policy[0].weight.grad.abs().sum() > 0 and module.head.value[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("modalities, kept, dropped", [("text", "text_encoder", "vision_encoder"), ("image", "vision_encoder", "text_encoder")])
def test_single_modality_ablation_runs_one_encoder(modalities, kept, dropped):
    module = _module(modalities=modalities).eval()
    assert getattr(module, kept) is not None and getattr(module, dropped) is None
    batch = _batch()
    only = {"captions": batch.captions} if modalities == "text" else {"pixel_values": batch.pixel_values}
    out, _ = module({**only, "labels": batch.labels})  # the other input may be absent
    assert out.logits.shape == (4, 10)


def test_mode_setter_validates_and_switches():
    module = _module()
    module.mode = "combined"
    assert module.mode == "combined"
    with pytest.raises(ValueError, match="mode: expected one of \\['supervised', 'rl', 'combined'\\], received 'ppo'"):
        module.mode = "ppo"
    assert module.mode == "combined"
    rl_only = _module(num_classes=None, num_actions=4, mode="rl")
    assert rl_only.classifier is None
    with pytest.raises(ValueError, match="num_classes is None"):
        rl_only.mode = "supervised"


def test_labels_out_of_range_fail_before_the_loss(module):
    module.train()
    with pytest.raises(ValueError, match="batch.labels: expected class ids in \\[0, 10\\), received 12 at position 2"):
        module.training_step(_batch(labels=(1, 3, 12, 7)), 0)
    with pytest.raises(ValueError, match="received -1 at position 0"):
        module.training_step(_batch(labels=(-1, 3, 2, 7)), 0)
    with pytest.raises(ValueError, match="batch.labels: mode 'supervised' needs class ids"):
        module.training_step(ImageTextBatch(torch.randn(2, 3, 32, 32), ["a", "b"]), 0)


def test_wrong_reward_shape_is_a_clear_error():
    module = _module(mode="rl")
    with pytest.raises(ValueError, match="rewards: expected shape \\[4\\] or \\[4, T\\], received \\(3,\\)"):
        module.training_step(_batch(cls=RewardBatch, rewards=torch.ones(3)), 0)
    with pytest.raises(ValueError, match="rewards: expected shape \\[4\\] or \\[4, T\\]"):
        module.training_step(_batch(cls=RewardBatch, rewards=torch.ones(4, 2, 1)), 0)


def test_missing_text_or_image_is_a_clear_error(module):
    batch = _batch()
    with pytest.raises(ValueError, match="batch.captions: modalities='both' needs a non-empty list of str"):
        module({"pixel_values": batch.pixel_values, "labels": batch.labels})
    with pytest.raises(ValueError, match="batch.pixel_values: modalities='both' needs a \\[B, 3, H, W\\] tensor"):
        module({"captions": batch.captions, "labels": batch.labels})


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="modalities: expected one of"):
        _module(modalities="audio")
    with pytest.raises(TypeError, match="vision_encoder: modalities='both' needs a module"):
        ActorCriticModule(HFTextEncoder(tiny_config=TINY_BERT), None)
    with pytest.raises(ValueError, match="num_classes: expected an int >= 2, received 1"):
        _module(num_classes=1)
    with pytest.raises(ValueError, match="num_actions: expected an int >= 2, received 1"):
        _module(num_actions=1)


def test_text_encoder_checkpoint_loads_a_dap_folder_and_checks_sizes(tmp_path):
    torch.manual_seed(5)
    dap = HFTextEncoder(tiny_config=TINY_BERT, max_length=16)
    dap.save_pretrained(str(tmp_path / "dap"))  # the layout MaskedLMModule.export_encoder writes: encoder + tokenizer
    module = _module(text_encoder_checkpoint=str(tmp_path / "dap"))
    for name, value in dap.model.state_dict().items():
        torch.testing.assert_close(module.text_encoder.model.state_dict()[name], value, msg=name)
    # the folder also builds an encoder directly
    assert HFTextEncoder(model_name_or_path=str(tmp_path / "dap")).hidden_size == 32

    HFTextEncoder(tiny_config={**TINY_BERT, "hidden_size": 48}).save_pretrained(str(tmp_path / "wide"))
    with pytest.raises(ValueError, match="text_encoder_checkpoint: cannot load .*hidden_size"):
        _module(text_encoder_checkpoint=str(tmp_path / "wide"))
    HFTextEncoder(tiny_config={**TINY_BERT, "vocab_size": 30600}).save_pretrained(str(tmp_path / "vocab"))
    with pytest.raises(ValueError, match="text_encoder_checkpoint: cannot load .*vocab_size"):
        _module(text_encoder_checkpoint=str(tmp_path / "vocab"))
    with pytest.raises(OSError, match="text_encoder_checkpoint: cannot load"):
        _module(text_encoder_checkpoint=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="text_encoder_checkpoint: modalities='image'"):
        _module(modalities="image", text_encoder_checkpoint=str(tmp_path / "dap"))
