"""prismrl's own VL-SFT model as an RL policy (``policy: {vl_sft_checkpoint: ...}``): the policy's log-probs are the
VL-SFT model's own teacher-forced ones, packed == unpacked, LoRA off == the SFT model, greedy answers agree, the
trainable parts and the export, and the errors for wrong checkpoints and settings."""

from __future__ import annotations

import os

import pytest
import torch
from sklearn.datasets import load_digits

from prismrl.backbones.answer_decoder import answer_ids
from prismrl.cli import build_cli
from prismrl.data.images import ImageTransform
from prismrl.data.prompt_tasks import digit_image
from prismrl.policy.adapters import adapter_for
from prismrl.policy.build import PolicySettings, build_policy
from prismrl.policy.rollout import (
    HFRolloutEngine,
    PackingSettings,
    SamplingSettings,
    eos_token_ids,
    sequence_logprobs,
)
from prismrl.policy.visual_prefix_policy import (
    VISUAL_WEIGHTS,
    VL_SFT_STAGE,
    VisualPrefixPolicy,
)

QUESTIONS = ["What digit is shown?", "Is the digit even or odd?", "Is this number bigger than five?"]
ANSWERS = ["zero", "odd", "no"]


@pytest.fixture(scope="module")
def vl_sft(repo_root, tmp_path_factory):
    """(checkpoint path, the trained VisionLanguageSFTModule) of a 2-step tiny VL-SFT run (configs/vl_sft/tiny_lm.yaml)."""
    workdir = tmp_path_factory.mktemp("vl_sft")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        cli = build_cli(["fit", "--config", str(repo_root / "configs/vl_sft/tiny_lm.yaml"), "--trainer.max_epochs", "1",
                         "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"])
    finally:
        os.chdir(cwd)
    return workdir / "runs/vl_sft/tiny_lm/version_0/checkpoints/last.ckpt", cli.model.eval()


@pytest.fixture(scope="module")
def policy(vl_sft):
    """(policy with its RL LoRA B weights perturbed, so LoRA on != off, tokenizer, adapter)."""
    model, tokenizer = build_policy(PolicySettings(vl_sft_checkpoint=str(vl_sft[0]), lora={"r": 4, "alpha": 8}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(hash(name) % 1000))
    return model.eval(), tokenizer, adapter_for(model, tokenizer)


def _images():
    digits = load_digits()
    return [digit_image(digits.images[i], 32) for i in range(len(QUESTIONS))]


def _batch(adapter, tokenizer, answer_template):
    completions = answer_ids(tokenizer, ANSWERS, answer_template)  # answer ++ EOS, as VL SFT scores it
    return adapter.build_training_batch(["<image>" + q for q in QUESTIONS], [[im] for im in _images()], completions)


def _sft_logprobs(module, adapter) -> torch.Tensor:
    """The VL-SFT module's teacher-forced log-probs of the answer tokens, flat [N]."""
    transform = ImageTransform(adapter.config.image_size, adapter.config.image_mean, adapter.config.image_std)
    pixels = torch.stack([transform(im) for im in _images()])
    out = module.decoder(module.visual(pixels), QUESTIONS, ANSWERS)
    return torch.log_softmax(out.logits.float(), -1).gather(-1, out.labels[:, None])[:, 0]


@torch.no_grad()
def test_lora_off_policy_is_exactly_the_vl_sft_model_and_lora_on_differs(vl_sft, policy):
    model, tokenizer, adapter = policy
    module = vl_sft[1]
    batch = _batch(adapter, tokenizer, module.decoder.answer_template)
    expected = _sft_logprobs(module, adapter)
    mask = batch.loss_mask[:, 1:].bool()
    assert int(mask.sum()) == expected.numel() == sum(len(a) for a in answer_ids(tokenizer, ANSWERS, " {answer}"))
    with model.disable_adapter():
        reference = sequence_logprobs(model, batch)[0][mask]
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-5)
    assert (sequence_logprobs(model, batch)[0][mask] - expected).abs().max() > 1e-3  # the RL LoRA is in the forward


@torch.no_grad()
def test_fresh_policy_logprobs_equal_the_sft_models_and_packing_changes_nothing(vl_sft, policy):
    fresh, tokenizer = build_policy(PolicySettings(vl_sft_checkpoint=str(vl_sft[0]), lora={"r": 4, "alpha": 8}))
    adapter = adapter_for(fresh, tokenizer)
    batch = _batch(adapter, tokenizer, vl_sft[1].decoder.answer_template)
    mask = batch.loss_mask[:, 1:].bool()
    torch.testing.assert_close(sequence_logprobs(fresh.eval(), batch)[0][mask], _sft_logprobs(vl_sft[1], adapter),
                               rtol=0, atol=1e-5)  # fresh LoRA (B = 0): the SFT model, its SFT LoRA merged
    model, _, _ = policy
    unpacked = sequence_logprobs(model, batch)[0]
    for attention in ("block_mask", "position_ids"):  # all three samples (and images) in one packed row
        packed = sequence_logprobs(model, batch, packing=PackingSettings(max_tokens_per_row=256, attention=attention))[0]
        torch.testing.assert_close(packed[mask], unpacked[mask], rtol=0, atol=1e-5)


@torch.no_grad()
def test_greedy_rollouts_match_the_vl_sft_models_generate(vl_sft, policy):
    fresh, tokenizer = build_policy(PolicySettings(vl_sft_checkpoint=str(vl_sft[0]), lora={"r": 4, "alpha": 8}))
    adapter = adapter_for(fresh, tokenizer)
    prompts = adapter.build_prompts(["<image>" + q for q in QUESTIONS], [[im] for im in _images()])
    assert prompts.input_ids.eq(adapter.image_token_id).sum(1).tolist() == [adapter.tokens_per_image] * 3
    engine = HFRolloutEngine(fresh, adapter, eos_token_ids(fresh, tokenizer))
    ids = engine.generate(prompts, SamplingSettings(max_new_tokens=3), greedy=True)
    module = vl_sft[1]
    transform = ImageTransform(adapter.config.image_size, adapter.config.image_mean, adapter.config.image_std)
    expected = module.generate(torch.stack([transform(im) for im in _images()]), QUESTIONS, max_new_tokens=3)
    assert [tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids] == expected
    sampled = engine.generate(prompts, SamplingSettings(max_new_tokens=3))
    assert all(0 < len(row) <= 3 and adapter.image_token_id not in row for row in sampled)


def test_trainable_parts_and_export(vl_sft, tmp_path):
    model, _ = build_policy(PolicySettings(vl_sft_checkpoint=str(vl_sft[0]), lora={"r": 4, "alpha": 8}))
    assert isinstance(model, VisualPrefixPolicy)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with_prefix, _ = build_policy(PolicySettings(vl_sft_checkpoint=str(vl_sft[0]), lora={"r": 4, "alpha": 8},
                                                 train_visual_prefix=True))
    trainable = {n for n, p in with_prefix.named_parameters() if p.requires_grad}
    assert any(n.startswith("visual.resampler.") for n in trainable)
    assert any(n.startswith("visual.projector.") for n in trainable)
    assert not any(n.startswith("visual.vision_encoder.") for n in trainable)
    assert all("lora_" in n for n in trainable if n.startswith("language_model."))
    with_prefix.save_pretrained(str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").is_file() and (tmp_path / "adapter_config.json").is_file()
    saved = torch.load(tmp_path / VISUAL_WEIGHTS, weights_only=True)
    assert saved.keys() == {n[len("visual."):] for n in trainable if n.startswith("visual.")}
    full, _ = build_policy(PolicySettings(vl_sft_checkpoint=str(vl_sft[0])))  # no LoRA: the whole LM trains
    assert all(p.requires_grad for p in full.language_model.parameters())
    assert not any(p.requires_grad for p in full.visual.parameters())


def test_wrong_checkpoints_and_settings_are_named_errors(tmp_path):
    wrong = tmp_path / "grpo.ckpt"
    torch.save({"state_dict": {}, "prismrl": {"stage": "prismrl.lightning_modules.grpo.GRPOModule"}}, wrong)
    with pytest.raises(ValueError, match=rf"policy.vl_sft_checkpoint: expected a checkpoint of stage {VL_SFT_STAGE}, "
                                         r"received .*grpo.ckpt' written by prismrl.lightning_modules.grpo.GRPOModule"):
        build_policy(PolicySettings(vl_sft_checkpoint=str(wrong)))
    with pytest.raises(FileNotFoundError, match="policy.vl_sft_checkpoint: expected a checkpoint file"):
        build_policy(PolicySettings(vl_sft_checkpoint=str(tmp_path / "missing.ckpt")))
    with pytest.raises(ValueError, match="policy: expected exactly one of model_name_or_path, tiny_config or "
                                         "vl_sft_checkpoint, received model_name_or_path='x'"):
        PolicySettings(model_name_or_path="x", vl_sft_checkpoint=str(wrong))
    with pytest.raises(ValueError, match=r"policy.vl_sft_checkpoint: quantization not supported with it, received "
                                         r"\{'quantization': '8bit'\}"):
        PolicySettings(vl_sft_checkpoint=str(wrong), quantization="8bit", lora={"r": 4})
    with pytest.raises(ValueError, match="policy.train_visual_prefix: expected only with policy.vl_sft_checkpoint"):
        PolicySettings(tiny_config={"model_type": "llama"}, train_visual_prefix=True)


def test_left_out_frozen_weights_must_match_the_rebuilt_ones(vl_sft, tmp_path):
    """Checkpoints leave out frozen pretrained weights (reloaded from their source); a tiny random-init decoder rebuilds
    other weights, so a checkpoint that leaves some out is refused with the checksums named."""
    checkpoint = torch.load(vl_sft[0], map_location="cpu", weights_only=True)
    left_out = [k for k in checkpoint["state_dict"] if k.startswith("decoder.") and "base_layer" in k][:2]
    assert left_out
    kept = [checkpoint["state_dict"].pop(k) for k in left_out]
    checkpoint["prismrl"]["frozen_weights"] = {"children": ["visual", "decoder"], "sources": ["a-model"], "count": 2,
                                               "checksum": [float(sum(t.double().sum() for t in kept)),
                                                            float(sum(t.double().abs().sum() for t in kept))]}
    path = tmp_path / "left_out.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"policy.vl_sft_checkpoint: .*left_out.ckpt' lacks 2 weights .* records 2 frozen "
                                         r"pretrained weights left out .* from \['a-model'\]; the rebuilt model's are "
                                         r"other weights"):
        build_policy(PolicySettings(vl_sft_checkpoint=str(path)))
