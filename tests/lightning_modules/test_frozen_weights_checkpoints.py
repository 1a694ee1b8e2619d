"""Checkpoints of the VL instruction and generator PPO stages leave out frozen pretrained weights (a LoRA base LM,
a frozen encoder): they hold the trainable weights, resume exactly and load for evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from prismrl.lightning_modules.plumbing import CHECKPOINT_KEY

VL_SFT, VL_RUN = "configs/vl_sft/tiny_lm.yaml", "runs/vl_sft/tiny_lm"
PPO, PPO_RUN = "configs/generator_ppo/tiny.yaml", "runs/generator_ppo/tiny"


@pytest.fixture(scope="module")
def configs(tmp_path_factory, repo_root) -> dict[str, str]:
    """The tiny VL-SFT and generator PPO configs with a LoRA policy on a tiny llama saved as a pretrained folder
    (the source the frozen base is reloaded from): {"vl_sft": path, "ppo": path, "source": folder}."""
    from prismrl.policy.build import PolicySettings, load_policy_model

    torch.manual_seed(3)
    model, tokenizer = load_policy_model(PolicySettings(tiny_config={"model_type": "llama"}))
    folder = tmp_path_factory.mktemp("pretrained") / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    vl_sft = yaml.safe_load((repo_root / VL_SFT).read_text())
    decoder = vl_sft["model"]["init_args"]["decoder"]["init_args"]
    decoder.pop("tiny_config")
    decoder["model_name_or_path"] = str(folder)
    ppo = yaml.safe_load((repo_root / PPO).read_text())
    ppo["trainer"]["max_epochs"] = 1  # 2 iterations of 4 optimizer steps
    ppo["model"]["init_args"]["policy"] = {"model_name_or_path": str(folder), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    paths = {"source": str(folder)}
    for name, config in (("vl_sft", vl_sft), ("ppo", ppo)):
        paths[name] = str(folder.parent / f"{name}.yaml")
        Path(paths[name]).write_text(yaml.safe_dump(config))
    return paths


def assert_trainable_only(checkpoint: dict, model: torch.nn.Module, folder: str) -> None:
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    frozen = {k for k, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    kept = set(checkpoint["state_dict"])
    assert trainable <= kept
    base = {k for k in frozen if ".base_layer." in k or "embed_tokens" in k}
    assert base and not base & kept  # the LoRA base LM is left out
    record = checkpoint[CHECKPOINT_KEY]["frozen_weights"]
    assert record["sources"] == [folder] and record["count"] == len(set(model.state_dict()) - kept)


@pytest.fixture(scope="module")
def vl_run(cli_tools, tmp_path_factory, configs):
    workdir = tmp_path_factory.mktemp("vl_sft")
    return workdir, cli_tools.run(configs["vl_sft"], workdir)


def test_vl_sft_lora_checkpoint_holds_trainable_weights_and_reloads(vl_run, configs):
    from prismrl.lightning_modules.vl_sft import VisionLanguageSFTModule

    workdir, cli = vl_run
    path = workdir / VL_RUN / "version_0/checkpoints/last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert_trainable_only(checkpoint, cli.model, configs["source"])
    assert set(checkpoint["optimizer_states"][0]["state"])  # the optimizer state is kept
    reloaded = VisionLanguageSFTModule.load_from_checkpoint(path)
    expected, actual = cli.model.state_dict(), reloaded.state_dict()
    assert actual.keys() == expected.keys()
    for key, value in expected.items():  # the frozen base reloaded from its folder, the rest from the checkpoint
        torch.testing.assert_close(actual[key], value, rtol=0, atol=0, msg=key)
    batch = next(iter(cli.datamodule.val_dataloader()))
    assert reloaded.generate(batch.pixel_values[:4], batch.questions[:4]) == cli.model.generate(
        batch.pixel_values[:4], batch.questions[:4])


def test_vl_sft_lora_checkpoint_runs_test_and_predict(vl_run, configs, cli_tools, tmp_path, monkeypatch):
    from prismrl.cli import build_cli

    workdir, _ = vl_run
    monkeypatch.chdir(tmp_path)
    for verb in ("test", "predict"):
        cli = build_cli([verb, "--config", configs["vl_sft"],
                         "--trainer.limit_test_batches", "1", "--trainer.limit_predict_batches", "1",
                         "--ckpt_path", str(workdir / VL_RUN / "version_0/checkpoints/last.ckpt")])
        assert cli.trainer.state.finished, verb


def test_vl_sft_lora_resume_matches_uninterrupted_run(vl_run, configs, cli_tools, tmp_path):
    resumed = cli_tools.crash_and_resume(configs["vl_sft"], tmp_path, 6)
    cli_tools.assert_same_run(vl_run[1], resumed)


def test_other_base_weights_are_refused_on_load(vl_run):
    workdir, cli = vl_run
    checkpoint = torch.load(workdir / VL_RUN / "version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    model = cli.model
    name = next(k for k, p in model.named_parameters() if "embed_tokens" in k)
    weight = model.get_parameter(name)
    with torch.no_grad():
        weight.add_(0.5)
    try:
        with pytest.raises(ValueError, match="received other base weights"):
            model.on_load_checkpoint(checkpoint)
    finally:
        with torch.no_grad():
            weight.sub_(0.5)


@pytest.mark.slow
def test_generator_ppo_lora_checkpoint_holds_trainable_weights_and_resumes(cli_tools, tmp_path, configs):
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full_dir.mkdir(), resumed_dir.mkdir()
    full = cli_tools.run(configs["ppo"], full_dir)
    checkpoint = torch.load(full_dir / PPO_RUN / "version_0/checkpoints/last.ckpt", map_location="cpu",
                            weights_only=True)
    assert_trainable_only(checkpoint, full.model, configs["source"])
    assert full.model.reference is None
    resumed = cli_tools.crash_and_resume(configs["ppo"], resumed_dir, 4)
    cli_tools.assert_same_run(full, resumed)
    assert resumed.model.last_samples == full.model.last_samples
