"""End to end: `prismrl fit --config configs/generator_ppo/tiny.yaml`, checkpoints, exact resume, bad input."""

from __future__ import annotations

import csv
import logging

import pytest
import torch

TINY = "configs/generator_ppo/tiny.yaml"
RUN = "runs/generator_ppo/tiny"
STEPS_PER_ITERATION = 4  # ppo_epochs 2 x 2 minibatches of 2


@pytest.fixture(scope="module")
def full_run(cli_tools, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    return workdir, cli_tools.run(TINY, workdir)


def test_tiny_run_trains_logs_and_checkpoints(cli_tools, full_run):
    workdir, cli = full_run
    assert cli.trainer.global_step == 2 * 2 * STEPS_PER_ITERATION  # epochs x iterations x optimizer steps
    checkpoints = {p.name for p in (workdir / RUN / "version_0/checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)
    last = torch.load(workdir / RUN / "version_0/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    normalizer = next(v for k, v in last["callbacks"].items() if k.startswith("RewardNormalizationCallback"))
    assert [len(normalizer["history"][c]) for c in ("inter", "intra", "golden_loss")] == [4, 4, 4]  # one entry per iteration
    with open(workdir / RUN / "version_0/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    for name in ("train/reward", "train/kl", "train/clip_frac", "train/value_loss", "train/policy_loss",
                 "train/parse_failure_rate", "train/golden_accuracy", "train/golden_loss", "train/reward_raw/inter",
                 "train/reward_raw/intra", "train/reward_norm/golden_loss", "golden/accuracy", "reward/mean"):
        assert any(row.get(name) for row in rows), f"{name} missing"
    assert 0.0 <= cli.trainer.callback_metrics["golden/accuracy"].item() <= 1.0
    fresh = cli_tools.run(TINY, workdir, run=False).model.state_dict()  # seed_everything: the run's initial weights
    trained = cli.model.state_dict()
    assert any(not torch.equal(trained[k], fresh[k]) for k in fresh if k.startswith("policy."))
    assert any(not torch.equal(trained[k], fresh[k]) for k in fresh if k.startswith("value_head."))
    for key in (k for k in fresh if k.startswith("reference.")):  # the reference never moves
        torch.testing.assert_close(trained[key], fresh[key], msg=key)
    samples = cli.model.last_samples
    assert len(samples) == 4 and {s["label"] for s in samples} == {"negative", "positive"}


@pytest.mark.parametrize("crash_step", [8, 12])  # at the epoch boundary and mid-epoch (2 iterations per epoch)
def test_resume_after_a_crash_matches_uninterrupted_run(cli_tools, tmp_path, full_run, crash_step):
    _, full = full_run  # sampling, classifier training and minibatch order: RNG, data position, normalizer must resume
    resumed = cli_tools.crash_and_resume(TINY, tmp_path, crash_step)
    cli_tools.assert_same_run(full, resumed)
    assert resumed.model.reward_normalizer.state_dict() == full.model.reward_normalizer.state_dict()
    assert resumed.model.last_samples == full.model.last_samples


def test_a_batch_without_parseable_generation_is_penalized_and_training_goes_on(cli_tools, tmp_path, caplog):
    cli = cli_tools.run(TINY, tmp_path, "--trainer.max_epochs", "1", run=False)
    tokenizer = cli.model.tokenizer
    tokenizer.batch_decode = lambda ids, **kwargs: ["  \n"] * len(ids)  # a degenerate generator: only whitespace
    with caplog.at_level(logging.WARNING, logger="prismrl.rewards.classifier"):
        cli_tools.fit(cli, tmp_path)
    assert "no parseable generation" in caplog.text
    metrics = cli.trainer.callback_metrics
    assert metrics["train/parse_failure_rate"].item() == 1.0 and metrics["train/parse/empty"].item() == 1.0
    assert metrics["train/reward"].item() == pytest.approx(-2.0)  # failure reward -(w2 + w3)
    assert cli.trainer.global_step == 2 * STEPS_PER_ITERATION
    assert all(s["status"] == "empty" for s in cli.model.last_samples)


@pytest.mark.parametrize(("args", "error", "match"), [
    (("--model.init_args.reward_weights", "{inter: 0, intra: 0, golden_loss: 0}"), ValueError, "at least one non-zero weight"),
    (("--model.init_args.prompt_template", "{instruction: 'Write a review.'}"), ValueError, "template.instruction"),
    (("--model.init_args.icl_examples", "3"), ValueError, "multiple of the 2 classes"),
    (("--model.init_args.classifier.init_args.num_classes", "3"), ValueError, "classifier.num_classes: expected 2"),
    (("--model.init_args.policy", "{tiny_config: {model_type: qwen2_vl}}"), ValueError, "policy: the generator must be"),
    (("--model.init_args.ppo_epochs", "0"), ValueError, "ppo_epochs: expected an int >= 1, received 0"),
    (("--model.init_args.optimizer.max_grad_norm", "0"), ValueError, "optimizer.max_grad_norm"),
])
def test_bad_configuration_fails_before_training(cli_tools, tmp_path, args, error, match):
    with pytest.raises(error, match=match):
        cli_tools.run(TINY, tmp_path, *args)
    assert not (tmp_path / RUN / "version_0/checkpoints").exists()


def test_missing_normalizer_callback_is_a_clear_error(cli_tools, tmp_path):
    cli = cli_tools.run(TINY, tmp_path, run=False)
    cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if type(c).__name__ != "RewardNormalizationCallback"]
    with pytest.raises(ValueError, match="needs a prismrl.callbacks.reward_normalization.RewardNormalizationCallback"):
        cli_tools.fit(cli, tmp_path)


def _check_init_args(node: dict, where: str) -> None:
    """Every class_path imports and every init_arg names a parameter of it (nested components too)."""
    import importlib
    import inspect

    module_name, _, class_name = node["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    params = inspect.signature(cls).parameters
    for key, value in (node.get("init_args") or {}).items():
        assert key in params, f"{where}: {cls.__name__} has no argument {key!r}"
        if isinstance(value, dict) and "class_path" in value:
            _check_init_args(value, f"{where}.{key}")


@pytest.mark.parametrize("preset", ["tiny", "smollm2_cpu", "llama8b_qlora_gpu"])
def test_every_preset_names_real_classes_and_arguments(cli_tools, preset):
    import dataclasses

    import yaml

    from prismrl.optim import OptimizerSettings
    from prismrl.policy.build import PolicySettings
    from prismrl.policy.rollout import SamplingSettings
    from prismrl.rewards.classifier import RewardWeights

    config = yaml.safe_load((cli_tools.repo_root / "configs/generator_ppo" / f"{preset}.yaml").read_text())
    _check_init_args(config["model"], "model")
    _check_init_args(config["data"], "data")
    for callback in config["trainer"]["callbacks"]:
        _check_init_args(callback, "trainer.callbacks")
    args = config["model"]["init_args"]
    assert args.get("policy") is not None  # a policy must be named
    for key, cls in (("policy", PolicySettings), ("optimizer", OptimizerSettings), ("sampling", SamplingSettings),
                     ("reward_weights", RewardWeights)):
        if args.get(key) is not None:
            cls(**args[key])  # validates the values too
            assert set(args[key]) <= {f.name for f in dataclasses.fields(cls)}
