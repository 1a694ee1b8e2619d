"""The prismrl LightningCLI: datamodule values reach the model as init arguments through instantiation links."""

from __future__ import annotations

import pytest
from lightning.pytorch.cli import instantiate_module

from prismrl.cli import build_cli
from prismrl.data.digits import DIGIT_NAMES, ZERO_SHOT_TEMPLATES


@pytest.fixture
def build(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return lambda config, *args: build_cli(["--config", str(repo_root / config), *args], run=False)


def reload(model):
    """What ``load_from_checkpoint`` does with a CLI-built module's hyperparameters."""
    return instantiate_module(type(model), {k: v for k, v in model.hparams.items() if k != "_instantiator"})


def test_alignment_gets_the_datamodules_class_names_and_templates_as_init_args(build):
    model = build("configs/alignment/tiny.yaml").model
    assert model.hparams.class_names == DIGIT_NAMES and model.class_names == DIGIT_NAMES
    assert model.hparams.zero_shot_templates == ZERO_SHOT_TEMPLATES
    assert reload(model).class_names == DIGIT_NAMES


def test_a_model_without_the_linked_argument_builds_and_reloads(build):
    # DigitsDataModule has class_names and zero_shot_templates; VisionLanguageSFTModule takes neither
    cli = build("configs/vl_sft/tiny_trm.yaml", "--data.class_path", "prismrl.datamodules.DigitsDataModule")
    assert cli.datamodule.class_names == DIGIT_NAMES
    assert not {"class_names", "zero_shot_templates"} & set(cli.model.hparams)
    assert reload(cli.model).question_types == []  # DigitsDataModule has no question_types: the default stays


def test_linked_arguments_are_derived_not_printed(repo_root, capsys):
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(repo_root / "configs/alignment/tiny.yaml"), "--print_config"])
    printed = capsys.readouterr().out
    assert "loader:" in printed and "class_names" not in printed.split("\ndata:")[0]


def test_a_linked_name_that_is_also_a_data_argument_is_recorded_once(build):
    # DigitQADataModule(question_types=None) resolves to the built-in types; both modules record the resolved list
    cli = build("configs/vl_sft/tiny_trm.yaml")
    assert cli.model.hparams.question_types == cli.datamodule.hparams.question_types == cli.datamodule.question_types
    assert cli.datamodule.hparams_initial.question_types == cli.datamodule.question_types
