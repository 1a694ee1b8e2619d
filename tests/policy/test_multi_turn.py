"""EpisodeSampler: dynamic sampling over hand-built reward groups, overlong shaping and filtering, and multi-turn
episodes with the calculator whose loss mask leaves out exactly the environment's tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from prismrl.backbones.causal_lm import load_causal_lm
from prismrl.backbones.tokenizers import load_smollm2_tokenizer, tiny_llama_config
from prismrl.data.records import PromptRecord
from prismrl.policy.adapters import adapter_for
from prismrl.policy.multi_turn import EpisodeSampler, observation_text
from prismrl.policy.rollout import HFRolloutEngine, SamplingSettings, eos_token_ids
from prismrl.rewards.environments import CalculatorEnvironment
from prismrl.rl.shaping import DynamicSamplingSettings, OverlongSettings

G = 4
SAMPLING = SamplingSettings(max_new_tokens=5)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    tokenizer = load_smollm2_tokenizer()
    model, _ = load_causal_lm(config=tiny_llama_config(tokenizer), tokenizer=tokenizer)
    adapter = adapter_for(model, tokenizer)
    eos = eos_token_ids(model, tokenizer)
    return SimpleNamespace(model=model.eval(), tokenizer=tokenizer, adapter=adapter, eos=eos,
                           engine=HFRolloutEngine(model, adapter, eos))


def records(n: int = 3) -> list[PromptRecord]:
    return [PromptRecord(f"What is {k} + {k}?", answer=str(2 * k)) for k in range(n)]


def scripted_scores(per_round: list[dict[int, list[float]]]):
    """A score function that hands out the rewards of ``per_round[r][group]`` for the r-th call's groups."""
    calls = []

    def score(texts, rows):
        table = per_round[len(calls)]
        prompts = [rows[i].prompt for i in range(0, len(rows), G)]
        calls.append(prompts)
        groups = [int(p.split()[2]) for p in prompts]  # "What is k + k?" -> k
        total = torch.tensor([v for g in groups for v in table[g]])
        return SimpleNamespace(total=total, components={"scripted": total.clone()})

    return score, calls


def sample(parts, sampler, score, recs=None, generate=None, greedy=False):
    def real(batch, chosen, round_, turn):
        return parts.engine.generate(batch, SAMPLING, greedy)

    return sampler.sample(recs or records(), greedy, generate or real, score, parts.engine, SAMPLING.max_new_tokens,
                          "cpu", torch.float32)


def test_dynamic_sampling_resamples_uninformative_groups_until_the_round_cap(parts):
    score, calls = scripted_scores([
        {0: [1, 1, 1, 1], 1: [0, 1, 0, 1], 2: [0, 0, 0, 0]},  # round 1: only group 1 is informative
        {0: [1, 0, 1, 1], 2: [0, 0, 0, 0]},  # round 2: groups 0 and 2 again; 0 becomes informative
        {2: [0.5, 0.5, 0.5, 0.5]},  # round 3: group 2 again, still all equal -> dropped
    ])
    sampler = EpisodeSampler(parts.adapter, parts.eos, G, dynamic=DynamicSamplingSettings(max_rounds=3))
    out = sample(parts, sampler, score)
    assert [len(c) for c in calls] == [3, 2, 1]
    assert out.total.tolist() == [1, 0, 1, 1, 0, 1, 0, 1, 0.5, 0.5, 0.5, 0.5]
    assert out.components["scripted"].tolist() == out.total.tolist()
    assert {k: v.item() for k, v in out.stats.items()} == {"dynamic_rounds": 3.0, "dynamic_resampled_groups": 3.0,
                                                          "dynamic_filtered_groups": 1.0}
    assert out.batch.batch_size == 12  # the batch keeps P * G rows: every rank runs the same optimizer steps
    assert out.batch.loss_mask[8:].sum() == 0 and (out.batch.loss_mask[:8].sum(1) > 0).all()  # group 2 left out
    assert out.batch.rewards.tolist() == out.total.tolist()


def test_dynamic_sampling_stops_at_min_groups_and_is_off_for_greedy(parts):
    score, calls = scripted_scores([{0: [1, 1, 1, 1], 1: [0, 1, 0, 1], 2: [0, 0, 0, 0]}])
    sampler = EpisodeSampler(parts.adapter, parts.eos, G, dynamic=DynamicSamplingSettings(max_rounds=5, min_groups=1))
    out = sample(parts, sampler, score)
    assert len(calls) == 1 and out.stats["dynamic_rounds"].item() == 1.0
    assert out.stats["dynamic_filtered_groups"].item() == 2.0
    assert out.batch.loss_mask[:4].sum() == 0 and out.batch.loss_mask[8:].sum() == 0
    greedy = sampler.sample(records(2), True, lambda b, *a: parts.engine.generate(b, SAMPLING, True),
                            lambda texts, rows: SimpleNamespace(total=torch.zeros(len(texts)), components={}),
                            parts.engine, 5, "cpu", torch.float32)
    assert greedy.batch.batch_size == 2 and greedy.stats == {}


def test_overlong_shaping_and_filter(parts):
    eos = parts.tokenizer.eos_token_id
    word = parts.tokenizer(" a", add_special_tokens=False)["input_ids"][0]
    scripted = [[word, eos], [word] * 4 + [eos], [word] * 5, [word] * 3 + [eos]]  # lengths 2, 5, 5 (cut), 4

    sampler = EpisodeSampler(parts.adapter, parts.eos, G, overlong=OverlongSettings(buffer=2, penalty=0.5, filter=True))
    out = sample(parts, sampler, lambda texts, rows: SimpleNamespace(total=torch.ones(len(texts)),
                                                                     components={"r": torch.ones(len(texts))}),
                 recs=records(1), generate=lambda *a: scripted)
    # L_max = 5, buffer 2: free up to 3 tokens, then -(|y| - 3) / 2, times 0.5
    torch.testing.assert_close(out.components["overlong"], torch.tensor([0.0, -0.5, -0.5, -0.25]))
    torch.testing.assert_close(out.total, torch.tensor([1.0, 0.5, 0.5, 0.75]))
    assert out.batch.loss_mask.sum(1).tolist() == [2, 5, 0, 4]  # the cut completion leaves the loss
    assert out.stats["overlong_filtered"].item() == 1.0


def test_observation_text_extends_the_chat_template(parts):
    text = observation_text(parts.adapter, "<result>12</result>", "<|im_end|>")
    assert text == "\n<|im_start|>user\n<result>12</result><|im_end|>\n<|im_start|>assistant\n"
    cut = observation_text(parts.adapter, "<result>12</result>", None)  # no EOS written: close the turn first
    assert cut == "<|im_end|>" + text


def test_multi_turn_calculator_masks_exactly_the_tool_tokens(parts):
    tok, eos = parts.tokenizer, parts.tokenizer.eos_token_id
    turns = {0: "<calc>3*4</calc>", 1: "12"}
    seen = []

    def generate(batch, chosen, round_, turn):  # the policy's turns, scripted: call the tool, then answer
        seen.append((chosen, turn, batch.batch_size))
        ids = tok(turns[turn], add_special_tokens=False)["input_ids"] + [eos]
        return [list(ids) for _ in range(batch.batch_size)]

    env = CalculatorEnvironment(max_turns=3)
    sampler = EpisodeSampler(parts.adapter, parts.eos, G, environment=env)
    out = sample(parts, sampler, None, recs=[PromptRecord("What is 3 * 4?", answer="12")], generate=generate)
    assert seen == [(None, 0, 4), (None, 1, 4)]  # two turns, every row still active in the second
    assert out.total.tolist() == [1.0] * 4 and out.stats["turns"].item() == 2.0
    first = tok(turns[0], add_special_tokens=False)["input_ids"] + [eos]
    tool = tok(observation_text(parts.adapter, "<result>12</result>", "<|im_end|>"), add_special_tokens=False)
    tool = tool["input_ids"]
    answer = tok(turns[1], add_special_tokens=False)["input_ids"] + [eos]
    prompt = parts.adapter.build_prompts([env.reset(PromptRecord("What is 3 * 4?", answer="12"))])
    start = int(prompt.attention_mask.sum())
    for b in range(4):
        row = out.batch.input_ids[b].tolist()
        assert row[:start] == prompt.input_ids[0].tolist()
        assert row[start:start + len(first) + len(tool) + len(answer)] == first + tool + answer
        expected = [0] * start + [1] * len(first) + [0] * len(tool) + [1] * len(answer)
        assert out.batch.loss_mask[b, :len(expected)].tolist() == expected
        assert out.batch.loss_mask[b, len(expected):].sum() == 0
        assert "<result>12</result>" in tok.decode([t for t, m in zip(row, out.batch.loss_mask[b].tolist())
                                                    if m == 0 and t != parts.adapter.pad_token_id])


def test_multi_turn_ends_rows_independently_and_keeps_engine_sampling(parts):
    """A real (random) policy: rows that call no tool end after one turn; the episode's tokens are the sampled ones."""
    env = CalculatorEnvironment(max_turns=2)
    sampler = EpisodeSampler(parts.adapter, parts.eos, G, environment=env)
    torch.manual_seed(0)
    out = sample(parts, sampler, None, recs=records(2))
    assert out.batch.batch_size == 8 and out.stats["turns"].item() == 1.0
    assert list(out.components) == ["environment"] and torch.equal(out.components["environment"], out.total)
    lengths = out.batch.loss_mask.sum(1)  # one turn each: every completion token is the policy's own
    assert ((lengths >= 1) & (lengths <= SAMPLING.max_new_tokens)).all()
    assert (out.batch.loss_mask * out.batch.attention_mask == out.batch.loss_mask).all()
