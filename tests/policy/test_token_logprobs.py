"""Policy log-probs from last hidden states (blocks through the head) vs the full-logits path, on tiny real models."""

import pytest
import torch

from prismrl.backbones.causal_lm import load_causal_lm
from prismrl.backbones.tokenizers import (
    load_smollm2_tokenizer,
    tiny_decoder_kwargs,
    tiny_llama_config,
)
from prismrl.policy.adapters import adapter_for
from prismrl.policy.build import PolicySettings, build_policy
from prismrl.policy.rollout import PackingSettings, sequence_logprobs
from prismrl.policy.token_logprobs import (
    hidden_logprobs_supported,
    output_head,
    policy_logprobs,
    policy_logprobs_and_values,
)
from prismrl.rl.ppo import ValueHead, logprobs_and_values


@pytest.fixture(scope="module")
def tokenizer():
    return load_smollm2_tokenizer()


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, batch, mask, **kwargs):
    """Values, entropies and parameter gradients of the hidden-state path equal the full-logits path."""
    logp, entropy = policy_logprobs(model, batch, 0.8, 5, True, **kwargs)
    assert hidden_logprobs_supported(model)  # the first forward checked the head against the model's logits
    got = _grads(model, (logp * mask).sum())
    naive, naive_entropy = sequence_logprobs(model, batch, 0.8, None, True, **kwargs)
    want = _grads(model, (naive * mask).sum())
    torch.testing.assert_close(logp * mask, naive * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy * mask, naive_entropy * mask, atol=1e-4, rtol=1e-4)
    assert got.keys() == want.keys() and got
    for name in got:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)
    return got


@pytest.mark.parametrize("tied", [False, True])
def test_llama_with_lora_on_lm_head_and_tied_embeddings(tokenizer, tied):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, _ = load_causal_lm(config=tiny_llama_config(tokenizer, tie_word_embeddings=tied), tokenizer=tokenizer)
    targets = ["q_proj"] if tied else ["q_proj", "lm_head"]
    model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    adapter = adapter_for(model, tokenizer)
    batch = adapter.append_completions(adapter.build_prompts(["What is 2+2?", "Say hi"]), [[28, 29, 30], [31]])
    assert hidden_logprobs_supported(model)
    got = _assert_same(model, batch, batch.loss_mask[:, 1:].float())
    assert any("lm_head.lora_A" in name for name in got) != tied
    with model.disable_adapter(), torch.no_grad():  # the reference: adapters off, the LoRA head too
        ref, _ = policy_logprobs(model, batch, 0.8, 5)
        naive_ref, _ = sequence_logprobs(model, batch, 0.8)
    torch.testing.assert_close(ref, naive_ref, atol=1e-5, rtol=1e-5)


def test_packed_qwen2_vl_equals_the_full_logits_path():
    torch.manual_seed(0)
    model, tokenizer = build_policy(PolicySettings(tiny_config={"model_type": "qwen2_vl"}, lora={"r": 2}))
    adapter = adapter_for(model, tokenizer, min_pixels=28 * 28, max_pixels=56 * 56)
    prompts = adapter.build_prompts(["<image>Which digit?", "Say hi"], [[torch.rand(3, 28, 28)], None])
    batch = adapter.append_completions(prompts, [[40, 41, 2], [50]])
    packing = PackingSettings(max_tokens_per_row=256)
    _assert_same(model, batch, batch.loss_mask[:, 1:].float(), packing=packing, rope_index=adapter.rope_index_fn(model))


def test_gemma2_softcap_and_ppo_values(tokenizer):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(**tiny_decoder_kwargs(tokenizer), final_logit_softcapping=0.5)
    model = Gemma2ForCausalLM(config).eval()
    head = output_head(model)
    assert head.softcap == 0.5 and head.logit_scale == 1.0 and head.vocab_size == len(tokenizer)
    input_ids = torch.randint(0, 500, (2, 9))
    attention_mask = torch.tensor([[1] * 9, [1] * 7 + [0] * 2])
    loss_mask = torch.zeros(2, 9, dtype=torch.long)
    loss_mask[0, 5:], loss_mask[1, 3:7] = 1, 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    value_head = ValueHead(config.hidden_size)
    logp, values = policy_logprobs_and_values(model, value_head, inputs, loss_mask, 0.7, chunk_size=3)
    assert hidden_logprobs_supported(model)
    naive, naive_values = logprobs_and_values(model, value_head, inputs, loss_mask, 0.7)
    counted = loss_mask[:, 1:].bool()
    torch.testing.assert_close(logp[counted], naive[counted], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, naive_values)
    assert (logp[:, :2] == 0).all()  # before the first completion's predicting position: not computed


def test_a_head_that_does_not_match_falls_back_with_a_warning(tokenizer):
    torch.manual_seed(0)
    model, _ = load_causal_lm(config=tiny_llama_config(tokenizer), tokenizer=tokenizer)
    model.config.logits_scaling = 4.0  # Granite's setting; Llama ignores it, so the checked head differs
    inputs = {"input_ids": torch.randint(0, 500, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    loss_mask = torch.ones(2, 6, dtype=torch.long)
    with pytest.warns(UserWarning, match="output head on the last hidden state differs from LlamaForCausalLM"):
        logp, _ = policy_logprobs_and_values(model, None, inputs, loss_mask)
    torch.testing.assert_close(logp, logprobs_and_values(model, None, inputs, loss_mask)[0])
    assert not hidden_logprobs_supported(model)
    with pytest.raises(TypeError, match=r"model: expected an HF causal LM with get_output_embeddings\(\)"):
        output_head(torch.nn.Linear(2, 2))
    assert not hidden_logprobs_supported(torch.nn.Linear(2, 2))
