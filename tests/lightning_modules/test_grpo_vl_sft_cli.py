"""End to end, one pipeline over the same encoders: a tiny alignment run -> VL SFT from its image tower -> GRPO with
the VL-SFT model as the policy (configs/grpo/digits_vlm.yaml with tiny budgets). Only the trainable parts change."""

from __future__ import annotations

import csv

import torch

from prismrl.lightning_modules.grpo import GRPOModule

# a random tiny LM never answers right, so the test rewards a reply whose first letter is a..m (about half of them):
# groups get different rewards, hence gradients
VARIED_REWARD = '{"class_path": "prismrl.rewards.functions.FormatReward", "init_args": {"pattern": "^\\\\W*[a-mA-M]"}}'


def test_alignment_then_vl_sft_then_grpo_on_the_sft_policy(cli_tools, tmp_path):
    cli_tools.run("configs/alignment/tiny.yaml", tmp_path, "--trainer.max_epochs", "1",
                  "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")
    aligned = tmp_path / "runs/alignment/tiny/version_0/checkpoints/last.ckpt"
    sft = cli_tools.run("configs/vl_sft/tiny_lm.yaml", tmp_path, "--model.init_args.alignment_checkpoint", str(aligned),
                        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")
    vl_sft = tmp_path / "runs/vl_sft/tiny_lm/version_0/checkpoints/last.ckpt"
    tower = torch.load(aligned, map_location="cpu", weights_only=True)["state_dict"]
    grpo = cli_tools.run(
        "configs/grpo/digits_vlm.yaml", tmp_path, "--model.init_args.policy.vl_sft_checkpoint", str(vl_sft),
        "--model.init_args.policy.train_visual_prefix", "true", "--model.init_args.group_size", "4",
        "--model.init_args.optimizer.lr", "1e-2", "--model.init_args.optimizer.warmup_ratio", "0",
        "--model.init_args.reward", VARIED_REWARD, "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
        "--trainer.limit_val_batches", "1", "--data.init_args.loader.batch_size", "2",
        "--data.init_args.loader.val_batch_size", "8", run=False)
    model = grpo.model
    assert isinstance(model, GRPOModule)
    policy = model.policy
    # the policy's frozen vision encoder is the SFT run's (itself loaded from the alignment run's image tower)
    sft_encoder = sft.model.visual.vision_encoder.state_dict()
    for key, value in policy.visual.vision_encoder.state_dict().items():
        torch.testing.assert_close(value, sft_encoder[key], rtol=0, atol=0, msg=key)
    frozen_tower_key = "encoder.model.embeddings.patch_embedding.weight"
    assert not torch.equal(sft_encoder[frozen_tower_key], tower[f"image_tower.{frozen_tower_key}"])  # SFT trained it
    before = cli_tools.state(policy)
    cli_tools.fit(grpo, tmp_path)
    after = cli_tools.state(policy)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= trainable  # LoRA + resampler / projector only
    assert any("lora_" in k for k in changed) and any(k.startswith("visual.resampler.") for k in changed)
    assert grpo.trainer.global_step == 3
    run = tmp_path / "runs/grpo/digits_vlm/version_0"
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert any(r.get("val/reward") for r in rows) and any(r.get("train/reward_std") not in (None, "", "0.0") for r in rows)
    export = tmp_path / "runs/grpo/digits_vlm/export"
    assert (export / "adapter_model.safetensors").is_file() and (export / "visual_prefix.pt").is_file()
