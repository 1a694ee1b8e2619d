"""The three-stage Gennet schedule (frozen encoders -> unfrozen with their own lr -> RL on) on the real module."""

from __future__ import annotations

import os

from prismrl.cli import build_cli


def test_staged_schedule_unfreezes_and_switches_mode(repo_root, tmp_path):
    os.chdir(tmp_path)
    try:
        cli = build_cli(["fit", "--config", str(repo_root / "configs/actor_critic/staged_tiny.yaml")])
    finally:
        os.chdir(repo_root)
    model, trainer = cli.model, cli.trainer
    assert str(getattr(model.mode, "value", model.mode)) == "combined"
    encoder_params = {id(p) for m in (model.text_encoder, model.vision_encoder) for p in m.parameters()}
    assert all(p.requires_grad for m in (model.text_encoder, model.vision_encoder) for p in m.parameters())
    groups = trainer.optimizers[0].param_groups
    encoder_groups = [g for g in groups if any(id(p) in encoder_params for p in g["params"])]
    assert encoder_groups, "unfrozen encoders were not added to the optimizer"
    assert all(max(g.get("initial_lr", g["lr"]), g["lr"]) <= 3.0e-4 + 1e-12 for g in encoder_groups)
    assert len(trainer.lr_scheduler_configs[0].scheduler.lr_lambdas) == len(groups)
