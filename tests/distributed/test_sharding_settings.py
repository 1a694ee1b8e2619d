"""``sharding`` (FSDP2 settings) as an init argument of every stage: from YAML, the command line and Python."""

from __future__ import annotations

import inspect

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.cli import instantiate_module

import prismrl.lightning_modules as stages
from prismrl.backbones.sharding import ShardingSettings
from prismrl.cli import build_cli

TINY = "configs/masked_lm/tiny.yaml"
BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 64}


@pytest.mark.parametrize("name", stages.__all__)
def test_every_stage_takes_sharding_as_an_init_argument(name):
    stage = getattr(stages, name)
    parameter = inspect.signature(stage.__init__).parameters["sharding"]
    assert parameter.default == ShardingSettings()
    required = {n for n, p in inspect.signature(stage.__init__).parameters.items()
                if p.default is inspect.Parameter.empty and n != "self" and p.kind is not p.VAR_KEYWORD}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(stage, "model", skip=required)
    config = parser.parse_args(["--model.sharding.block_classes", '["BertLayer"]',
                                "--model.sharding.reshard_after_forward", "false"])
    assert config.model.sharding.block_classes == ["BertLayer"]
    assert config.model.sharding.reshard_after_forward is False
    assert config.model.sharding.mixed_precision == "auto"  # the fields not given keep their defaults


def test_yaml_sharding_reaches_the_module_and_its_reload(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "sharding.yaml"
    overlay.write_text(yaml.safe_dump({"model": {"init_args": {"sharding": {
        "mixed_precision": "bf16", "activation_checkpointing": True, "block_classes": ["BertLayer"]}}}}))
    model = build_cli(["--config", str(repo_root / TINY), "--config", str(overlay)], run=False).model
    expected = ShardingSettings(block_classes=["BertLayer"], mixed_precision="bf16", activation_checkpointing=True)
    assert model.sharding == expected
    reloaded = instantiate_module(type(model), {k: v for k, v in model.hparams.items() if k != "_instantiator"})
    assert reloaded.sharding == expected


def test_a_bad_sharding_value_is_an_error_naming_the_field(repo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((SystemExit, ValueError)) as caught:
        build_cli(["--config", str(repo_root / TINY), "--model.init_args.sharding.mixed_precision", "fp8"], run=False)
    message = str(caught.value) + capsys.readouterr().err
    assert "sharding.mixed_precision: expected" in message and "'fp8'" in message, message


def test_sharding_from_python_is_kept_in_hyperparameters():
    from prismrl.lightning_modules.masked_lm import MaskedLMModule

    module = MaskedLMModule(tiny_config=BERT, sharding={"reshard_after_forward": False})
    assert module.sharding == ShardingSettings(reshard_after_forward=False)
    assert module.hparams["sharding"] == module.sharding
    assert MaskedLMModule(tiny_config=BERT).sharding == ShardingSettings()
    with pytest.raises(TypeError, match="sharding: expected a ShardingSettings"):
        MaskedLMModule(tiny_config=BERT, sharding=3)
    with pytest.raises(ValueError, match="sharding.activation_checkpointing"):
        ShardingSettings(activation_checkpointing="yes")
