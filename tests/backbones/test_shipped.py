import os

import pytest

from prismrl.backbones import shipped
from prismrl.backbones.shipped import (
    ShippedModel,
    check_exactly_one,
    pretrained_kwargs,
    resolve_model_path,
    tiny_hf_config,
)


def test_alias_resolves_to_a_model_folder():
    folder = resolve_model_path("shipped:all-minilm-l6-v2")
    assert os.path.isfile(os.path.join(folder, "config.json"))
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    assert pretrained_kwargs(folder) == {"local_files_only": True}


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "bert-base-uncased"])
def test_hub_ids_pass_through(name):
    assert resolve_model_path(name) == name


def test_local_folders_must_exist(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    for missing in ("/some/local/folder", "./model", "~/no/such/model", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="model_name_or_path: expected a local model folder"):
            resolve_model_path(missing)


def test_hub_ids_get_no_offline_flag():
    assert pretrained_kwargs("org/not-a-folder") == {}


def test_unknown_alias_lists_known_ones():
    with pytest.raises(ValueError, match="shipped:all-minilm-l6-v2"):
        resolve_model_path("shipped:nope")


def test_missing_package_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(shipped.SHIPPED_MODELS, "ghost", ShippedModel("prismrl_no_such_pkg", "no-such-pkg", "model"))
    with pytest.raises(ModuleNotFoundError, match="pip install no-such-pkg"):
        resolve_model_path("shipped:ghost")


@pytest.mark.parametrize("bad", ["", None, 3])
def test_bad_name_type(bad):
    with pytest.raises(TypeError, match="name_or_path"):
        resolve_model_path(bad)


def test_exactly_one_source():
    check_exactly_one("x", None)
    check_exactly_one(None, {"model_type": "bert"})
    with pytest.raises(ValueError, match="exactly one"):
        check_exactly_one(None, None)
    with pytest.raises(ValueError, match="exactly one"):
        check_exactly_one("x", {"model_type": "bert"})


def test_tiny_config_errors_are_short_and_named():
    with pytest.raises(ValueError, match="tiny_config.model_type: transformers knows no model type 'nope'"):
        tiny_hf_config({"model_type": "nope"})
    with pytest.raises(ValueError, match="'model_type' key"):
        tiny_hf_config({"hidden_size": 8})
    config = tiny_hf_config({"model_type": "bert", "hidden_size": 8, "num_attention_heads": 2})
    assert (config.model_type, config.hidden_size) == ("bert", 8)
