import pytest
import torch

from prismrl.backbones.causal_lm import load_causal_lm
from prismrl.backbones.tokenizers import load_smollm2_tokenizer, tiny_llama_config
from prismrl.policy.adapters import adapter_for
from prismrl.policy.build import PolicySettings, build_policy
from prismrl.policy.rollout import (
    HFRolloutEngine,
    RolloutEngine,
    RolloutSettings,
    SamplingSettings,
    build_rollout_engine,
    eos_token_ids,
    group_indices,
    minibatches,
    sample_completions,
    sequence_logprobs,
)


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    tokenizer = load_smollm2_tokenizer()
    model, _ = load_causal_lm(config=tiny_llama_config(tokenizer), tokenizer=tokenizer)
    return model.eval(), tokenizer


@pytest.mark.parametrize("kwargs,field", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"temperature": 0.0}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_k": -1}, "top_k"),
])
def test_sampling_settings_reject_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=f"sampling.{field}"):
        SamplingSettings(**kwargs)


def test_group_indices_repeat_each_prompt():
    assert group_indices(3, 2).tolist() == [0, 0, 1, 1, 2, 2]
    for bad in (1, 0, True):
        with pytest.raises(ValueError, match="group_size"):
            group_indices(3, bad)


def test_minibatches_partition_the_rows():
    g = torch.Generator().manual_seed(0)
    parts = minibatches(10, 4, g)
    assert [len(p) for p in parts] == [4, 4, 2]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert [p.tolist() for p in minibatches(5, None)] == [[0, 1, 2, 3, 4]]


def test_sequence_logprobs_match_a_naive_log_softmax(tiny_llama):
    model, tokenizer = tiny_llama
    adapter = adapter_for(model, tokenizer)
    prompts = adapter.build_prompts(["What is 2+2?", "Say hi"])
    batch = adapter.append_completions(prompts, [[28, 29, 30], []])  # second completion empty
    with torch.no_grad():
        logprobs, entropy = sequence_logprobs(model, batch, temperature=0.7, chunk_size=3, with_entropy=True)
        logits = model(**batch.model_inputs()).logits[:, :-1] / 0.7
    naive = torch.log_softmax(logits.float(), -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(logprobs, naive, rtol=1e-5, atol=1e-5)
    p = torch.softmax(logits.float(), -1)
    torch.testing.assert_close(entropy, -(p * torch.log(p)).sum(-1), rtol=1e-4, atol=1e-4)
    mask = batch.loss_mask[:, 1:]
    assert mask[0].sum() == 3 and mask[1].sum() == 0


def test_sampled_completions_end_at_eos_and_are_reproducible(tiny_llama):
    model, tokenizer = tiny_llama
    adapter = adapter_for(model, tokenizer)
    prompts = adapter.build_prompts(["Count to three"] * 4)
    eos = eos_token_ids(model, tokenizer)
    settings = SamplingSettings(max_new_tokens=5, temperature=1.0)
    torch.manual_seed(1)
    first = sample_completions(model, prompts, adapter, settings, eos)
    torch.manual_seed(1)
    again = sample_completions(model, prompts, adapter, settings, eos)
    assert first == again
    for completion in first:
        assert 1 <= len(completion) <= 5
        assert all(t not in eos for t in completion[:-1])  # nothing after the first EOS
    greedy = sample_completions(model, prompts, adapter, settings, eos, greedy=True)
    assert all(c == greedy[0] for c in greedy)


def test_hf_engine_samples_what_direct_generate_samples(tiny_llama):
    model, tokenizer = tiny_llama
    adapter = adapter_for(model, tokenizer)
    prompts = adapter.build_prompts(["Count to three", "Say hi"] * 2)
    eos = eos_token_ids(model, tokenizer)
    settings = SamplingSettings(max_new_tokens=6, temperature=0.8, top_p=0.9, top_k=20)
    engine = build_rollout_engine(RolloutSettings(), model, adapter, eos)
    assert isinstance(engine, HFRolloutEngine) and isinstance(engine, RolloutEngine)
    torch.manual_seed(3)
    direct = sample_completions(model, prompts, adapter, settings, eos)
    torch.manual_seed(3)
    assert engine.generate(prompts, settings) == direct
    engine.sync_weights(model)  # shares the policy's weights: nothing to load
    torch.manual_seed(3)
    assert engine.generate(prompts, settings) == direct


def test_hf_engine_greedy_decoding_ignores_the_seed(tiny_llama):
    model, tokenizer = tiny_llama
    adapter = adapter_for(model, tokenizer)
    prompts = adapter.build_prompts(["Count to three", "Say hi"])
    engine = HFRolloutEngine(model, adapter, eos_token_ids(model, tokenizer))
    settings = SamplingSettings(max_new_tokens=5)
    torch.manual_seed(0)
    first = engine.generate(prompts, settings, greedy=True)
    torch.manual_seed(1)
    assert engine.generate(prompts, settings, greedy=True) == first
    assert first == sample_completions(model, prompts, adapter, settings, engine.eos_ids, greedy=True)
    assert not model.training  # generation runs in eval mode


def test_unknown_rollout_engine_is_rejected():
    with pytest.raises(ValueError, match=r"rollout.engine: expected one of \['hf', 'vllm'\], received 'sglang'"):
        RolloutSettings(engine="sglang")


@pytest.mark.parametrize("attention", ["block_mask", "position_ids"])
def test_packed_sequence_logprobs_equal_padded_ones_for_qwen2_vl(attention):
    from prismrl.policy.rollout import PackingSettings

    torch.manual_seed(0)
    model, tokenizer = build_policy(PolicySettings(tiny_config={"model_type": "qwen2_vl"}, lora={"r": 2}))
    model.eval()
    adapter = adapter_for(model, tokenizer, min_pixels=28 * 28, max_pixels=56 * 56)
    prompts = adapter.build_prompts(["<image>Which digit?", "Say hi", "<image>And this one?"],
                                    [[torch.rand(3, 28, 28)], None, [torch.rand(3, 56, 28)]])
    batch = adapter.append_completions(prompts, [[40, 41, 2], [50], [60, 61, 62, 63]])
    mask = batch.loss_mask[:, 1:].bool()
    with torch.no_grad():
        padded, _ = sequence_logprobs(model, batch, temperature=0.9)
        packed, entropy = sequence_logprobs(model, batch, temperature=0.9, with_entropy=True,
                                            packing=PackingSettings(max_tokens_per_row=256, attention=attention),
                                            rope_index=adapter.rope_index_fn(model))
    assert packed.shape == padded.shape and entropy.shape == padded.shape
    torch.testing.assert_close(packed[mask], padded[mask], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="packing.attention"):
        PackingSettings(attention="flash")
