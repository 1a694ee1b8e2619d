"""Shipped SmolLM2 tokenizer (cached conversion), each family's special tokens and tiny configs that match them."""

import os

import pytest

from prismrl.backbones.tokenizers import SMOLLM2_GGUF, load_smollm2_tokenizer, shipped_smollm2_folder
from prismrl.policy.adapters import ADAPTERS, TINY_FAMILIES, tiny_policy_config
from prismrl.policy.adapters.tiny import add_special_tokens


def test_shipped_tokenizer_loads_from_its_cache():
    assert os.path.isfile(os.path.join(shipped_smollm2_folder(), SMOLLM2_GGUF))
    tokenizer = load_smollm2_tokenizer()
    assert len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None
    assert "tokenizers" in tokenizer.name_or_path  # loaded from the converted cache folder
    ids = tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "Hello world"


@pytest.mark.parametrize("family", sorted(ADAPTERS))
def test_special_tokens_are_single_ids_and_idempotent(family):
    tokenizer = load_smollm2_tokenizer()
    tokens = ADAPTERS[family].special_tokens
    ids = add_special_tokens(tokenizer, tokens)
    assert add_special_tokens(tokenizer, tokens) == ids  # no second copy
    assert len(tokenizer) == 49152 + len(tokens)
    for field, token in tokens.items():
        assert ids[field] >= 49152
        assert tokenizer(f"a{token}b", add_special_tokens=False)["input_ids"].count(ids[field]) == 1


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava", "internvl", "llama"])
def test_tiny_configs_match_the_tokenizer(family):
    config, tokenizer = tiny_policy_config({"model_type": family})
    text = getattr(config, "text_config", config)
    assert text.vocab_size == len(tokenizer)
    assert text.eos_token_id == tokenizer.eos_token_id
    if family != "llama":
        image_token = TINY_FAMILIES[family].special_tokens["image_token_id"]
        assert config.image_token_id == tokenizer.convert_tokens_to_ids(image_token)
    if family.startswith("qwen"):
        assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
        assert sum(text.rope_parameters["mrope_section"]) == text.head_dim // 2


def test_tiny_config_overrides_and_bad_family():
    config, _ = tiny_policy_config({"model_type": "llava", "text_config": {"num_hidden_layers": 1},
                                    "vision_feature_select_strategy": "full"})
    assert config.text_config.num_hidden_layers == 1 and config.vision_feature_select_strategy == "full"
    with pytest.raises(ValueError, match="tiny_config.model_type: expected one of qwen2_vl, qwen2_5_vl, llava, "
                                         "internvl, llava_next, pixtral, llama, received 'mllama'"):
        tiny_policy_config({"model_type": "mllama"})
    with pytest.raises(TypeError, match="vision_config: expected a dict of overrides"):
        tiny_policy_config({"model_type": "internvl", "vision_config": 3})
