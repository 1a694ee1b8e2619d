"""PPO pieces: token rewards + GAE and the clipped losses against hand-computed numbers, windowed log-probs and
values against a naive full forward."""

from __future__ import annotations

import math

import pytest
import torch

from prismrl.backbones.causal_lm import load_causal_lm
from prismrl.backbones.tokenizers import load_smollm2_tokenizer, tiny_llama_config
from prismrl.rl.advantages import gae
from prismrl.rl.ppo import (
    ValueHead,
    logprobs_and_values,
    ppo_loss,
    sequence_end_rewards,
)


def test_sequence_end_reward_and_gae_by_hand():
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    kl = torch.tensor([[5.0, 0.1, -0.2, 0.3], [1.0, 1.0, 1.0, 1.0]])
    rewards = sequence_end_rewards(torch.tensor([1.0, 7.0]), kl, mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, -0.05, 0.1, 0.85], [0.0, 0.0, 0.0, 0.0]]))
    values = torch.tensor([[9.0, 0.5, 0.2, 0.4], [1.0, 2.0, 3.0, 4.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages[0], torch.tensor([0.0, -0.0875, 0.525, 0.45]))
    torch.testing.assert_close(returns[0], torch.tensor([0.0, 0.4125, 0.725, 0.85]))
    assert advantages[1].abs().sum() == 0  # a row without completion tokens gets nothing


def test_ppo_loss_by_hand():
    logprobs = torch.tensor([[math.log(1.5), math.log(0.5)]], requires_grad=True)
    values = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss, stats = ppo_loss(logprobs, values, torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, -1.0]]),
                           torch.tensor([[2.0, 0.0]]), torch.ones(1, 2), clip_range=0.2, value_clip_range=0.2, value_coef=0.5)
    assert stats["policy_loss"].item() == pytest.approx(-0.2)  # mean(-min(1.5, 1.2), -min(-0.5, -0.8))
    assert stats["value_loss"].item() == pytest.approx(0.445)  # 0.5 * mean(max(1, 1.69), max(0, 0.09))
    assert loss.item() == pytest.approx(-0.2 + 0.5 * 0.445, abs=1e-6)
    assert stats["clip_frac"].item() == 1.0 and stats["value_clip_frac"].item() == 1.0
    assert stats["approx_kl"].item() == pytest.approx(0.25 * (math.log(1.5) ** 2 + math.log(0.5) ** 2))
    loss.backward()
    assert logprobs.grad[0, 0] == 0  # the clipped branch has no policy gradient
    assert torch.count_nonzero(values.grad) == 0  # both value losses take the clipped branch: no value gradient


def test_windowed_logprobs_and_values_match_a_full_forward():
    torch.manual_seed(0)
    tokenizer = load_smollm2_tokenizer()
    model, _ = load_causal_lm(config=tiny_llama_config(tokenizer), tokenizer=tokenizer)
    model.eval()
    head = ValueHead(model.config.hidden_size)
    input_ids = torch.randint(0, 500, (3, 9))
    attention_mask = torch.tensor([[1] * 9, [1] * 7 + [0] * 2, [1] * 6 + [0] * 3])  # right padding
    loss_mask = torch.zeros(3, 9, dtype=torch.long)
    loss_mask[0, 5:9], loss_mask[1, 3:7], loss_mask[2, 4:6] = 1, 1, 1  # completions start at 5, 3, 4
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    logprobs, values = logprobs_and_values(model, head, inputs, loss_mask, temperature=0.7)
    out = model(**inputs, output_hidden_states=True)
    naive = torch.log_softmax(out.logits[:, :-1] / 0.7, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, T-1]
    counted = loss_mask[:, 1:].bool()
    torch.testing.assert_close(logprobs[counted], naive[counted], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values, head(out.hidden_states[-1])[:, :-1])
    assert (logprobs[:, :2] == 0).all()  # before the first completion's predicting position: not computed
    reference, none = logprobs_and_values(model, None, inputs, loss_mask)
    assert none is None and reference.shape == (3, 8)


def test_shape_errors():
    with pytest.raises(ValueError, match="scores: expected shape"):
        sequence_end_rewards(torch.zeros(3), torch.zeros(2, 4), torch.ones(2, 4), 0.1)
    with pytest.raises(ValueError, match="kl: expected shape"):
        sequence_end_rewards(torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 4), 0.1)
