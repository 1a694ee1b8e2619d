"""Group rollouts computed once per prompt: the shared-prefix log-probs (no-grad and training), the shared prompt prefill of
generate, and log-probs at the completion positions only, each against the plain path on tiny real models."""

import contextlib

import pytest
import torch

from prismrl.backbones.causal_lm import load_causal_lm
from prismrl.backbones.tokenizers import load_smollm2_tokenizer, tiny_llama_config
from prismrl.policy.adapters import adapter_for
from prismrl.policy.rollout import (
    SamplingSettings,
    repeated_rows,
    sample_completions,
    shared_prompt_cache,
)
from prismrl.policy.shared_prefix import shared_prefix_logprobs
from prismrl.policy.token_logprobs import hidden_logprobs_checked, policy_logprobs

G = 3


@pytest.fixture(scope="module")
def setup():
    from peft import LoraConfig, get_peft_model

    tokenizer = load_smollm2_tokenizer()
    torch.manual_seed(0)
    model, _ = load_causal_lm(config=tiny_llama_config(tokenizer), tokenizer=tokenizer)
    model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False)).eval()
    adapter = adapter_for(model, tokenizer)
    prompts = adapter.build_prompts(["What is 2+2?", "Say hi to the friendly reader"])  # different lengths
    group = prompts.select(torch.arange(2).repeat_interleave(G))  # [2 * G] rows, G copies of each prompt
    completions = [[28, 29, 30], [31], [], [40, 41, 42, 43, 2], [44, 45], [46]]
    return model, adapter, group, adapter.append_completions(group, completions), tokenizer.eos_token_id


def test_completion_positions_only_equal_the_full_path_with_gradients(setup):
    model, _, _, batch, _ = setup
    mask = batch.loss_mask[:, 1:]
    full, full_entropy = policy_logprobs(model, batch, 0.7, 4, True)
    want = torch.autograd.grad((full * mask).sum(), [p for p in model.parameters() if p.requires_grad])
    part, part_entropy = policy_logprobs(model, batch, 0.7, 4, True, positions=mask)
    got = torch.autograd.grad(part.sum(), [p for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(part, full * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part_entropy, full_entropy * mask, atol=1e-4, rtol=1e-4)
    assert (part[mask == 0] == 0).all()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"positions: expected shape \(6, \d+\), received \(6, 2\)"):
        policy_logprobs(model, batch, positions=mask[:, :2])


@pytest.mark.parametrize("adapters_on", [True, False])
def test_shared_prefix_equals_the_full_forward(setup, adapters_on):
    model, _, _, batch, _ = setup
    with torch.no_grad():
        policy_logprobs(model, batch)  # the first forward checks the head
    assert hidden_logprobs_checked(model)
    mask = batch.loss_mask[:, 1:]
    with torch.no_grad(), (contextlib.nullcontext() if adapters_on else model.disable_adapter()):
        want, want_entropy = policy_logprobs(model, batch, 0.7, with_entropy=True)
        got, entropy = shared_prefix_logprobs(model, batch, G, 0.7, chunk_size=3, with_entropy=True)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, want_entropy * mask, atol=1e-4, rtol=1e-4)
    assert (got[mask == 0] == 0).all()


@pytest.mark.parametrize("checkpointing", [False, True])
def test_shared_prefix_training_forward_gives_the_full_paths_values_and_gradients(setup, checkpointing):
    """With grad, each prefix gets the sum of its G rows' gradients; a checkpointed layer's replay in backward sees
    the keys its first forward saw (the prefix cache records, the completion cache only reads)."""
    model, _, _, batch, _ = setup
    policy_logprobs(model, batch)  # the first forward checks the head
    base = model.get_base_model()
    params = [p for p in model.parameters() if p.requires_grad]
    mask = batch.loss_mask[:, 1:]
    weights = torch.linspace(-1.0, 2.0, mask.numel()).view_as(mask)  # a loss that weighs every position differently
    model.train()
    if checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        full, _ = policy_logprobs(model, batch, 0.7, positions=mask)
        want = torch.autograd.grad((full * weights).sum(), params)
        shared, _ = shared_prefix_logprobs(model, batch, G, 0.7, chunk_size=3)
        got = torch.autograd.grad((shared * weights).sum(), params)
        assert all(not getattr(m, "_can_checkpoint_with_cache", False) for m in base.modules())  # switch restored
    finally:
        base.gradient_checkpointing_disable()
        model.eval()
    assert base.model.layers[0].gradient_checkpointing is False
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shared_prefix_declines_what_it_cannot_share(setup):
    model, _, _, batch, _ = setup
    policy_logprobs(model, batch)
    assert shared_prefix_logprobs(model, batch, 2, 1.0) is None  # groups of 2 hold different prompts
    assert shared_prefix_logprobs(model, batch.select(torch.tensor([0, 1, 3, 2, 4, 5])), G, 1.0) is None


def test_generate_with_the_shared_prompt_prefill_samples_the_same_tokens(setup):
    model, adapter, group, _, eos_id = setup
    assert repeated_rows(group.input_ids) == G and repeated_rows(group.input_ids[[0, G]]) == 1
    assert "past_key_values" in shared_prompt_cache(model, group)
    eos = [eos_id]
    sampling = SamplingSettings(max_new_tokens=6, temperature=1.0)
    torch.manual_seed(3)
    shared = sample_completions(model, group, adapter, sampling, eos)
    plain_inputs = group.model_inputs()
    torch.manual_seed(3)
    out = model.generate(**plain_inputs, **sampling.generate_kwargs(), **adapter.generate_kwargs())
    from prismrl.policy.adapters.base import split_completions

    assert shared == split_completions(out, group.seq_len, eos)
    assert len(shared) == 2 * G and any(shared)


def test_a_fresh_model_takes_the_shared_path_on_its_first_call():
    """The head check runs inside the shared forward, so a resumed run (a fresh model) takes the same path at its
    first step as the uninterrupted run did at that step."""
    tokenizer = load_smollm2_tokenizer()
    torch.manual_seed(1)
    model, _ = load_causal_lm(config=tiny_llama_config(tokenizer), tokenizer=tokenizer)
    adapter = adapter_for(model.eval(), tokenizer)
    group = adapter.build_prompts(["What is 2+2?"]).select(torch.zeros(G, dtype=torch.long))
    batch = adapter.append_completions(group, [[28, 29], [31], [40, 41, 42]])
    assert not hidden_logprobs_checked(model)
    with torch.no_grad():
        shared = shared_prefix_logprobs(model, batch, G)
        assert shared is not None and hidden_logprobs_checked(model)
        torch.testing.assert_close(shared[0], policy_logprobs(model, batch)[0] * batch.loss_mask[:, 1:], atol=1e-5,
                                   rtol=1e-5)
