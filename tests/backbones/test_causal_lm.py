import pytest
import torch

from prismrl.backbones.causal_lm import (
    SMOLLM2_ALIAS,
    load_causal_lm,
    quantization_config,
    resolve_attn_implementation,
    resolve_dtype,
)
from prismrl.backbones.shipped import split_tiny_config
from prismrl.backbones.tokenizers import load_smollm2_tokenizer, tiny_llama_config


def test_shipped_smollm2_loads_from_cache_and_answers():
    model, tokenizer = load_causal_lm(SMOLLM2_ALIAS)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # real weights, not a random init


def test_random_init_from_a_built_config_matches_its_tokenizer():
    tokenizer = load_smollm2_tokenizer()
    config = tiny_llama_config(tokenizer, num_hidden_layers=1)
    model, returned = load_causal_lm(config=config, tokenizer=tokenizer, torch_dtype="bfloat16")
    assert type(model).__name__ == "LlamaForCausalLM" and returned is tokenizer
    assert model.config.num_hidden_layers == 1
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="exactly one"):
        load_causal_lm()
    with pytest.raises(ValueError, match="torch_dtype"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match="quantization"):
        quantization_config("3bit", None)
    tokenizer = load_smollm2_tokenizer()
    config = tiny_llama_config(tokenizer)
    with pytest.raises(ValueError, match="exactly one"):
        load_causal_lm(SMOLLM2_ALIAS, config=config, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="quantization"):
        load_causal_lm(config=config, tokenizer=tokenizer, quantization="8bit")
    with pytest.raises(ValueError, match="tokenizer: a random-init config model needs"):
        load_causal_lm(config=config)
    with pytest.raises(ValueError, match="tiny_config.model_type: expected one of llama, received 'gpt9'"):
        split_tiny_config({"model_type": "gpt9"}, ("llama",))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU fallback behaviour")
def test_flash_attention_falls_back_to_sdpa_not_eager():
    assert resolve_attn_implementation("flash_attention_2") == "sdpa"
    assert resolve_attn_implementation("eager") == "eager"
    with pytest.raises(ValueError, match="4bit"):
        quantization_config("4bit", None)
