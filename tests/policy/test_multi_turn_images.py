"""Multi-turn VLM episodes on a tiny real Qwen2-VL: a second image arrives in the second user turn
(``DigitCompareEnvironment``); the whole episode's forward sees both images at their places, every environment token
(image tokens included) is out of the loss, per-turn rewards add up to the episode's, and packing gives the same
log-probs as the padded batch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import transformers as tf

from prismrl.data.records import PromptRecord
from prismrl.policy.adapters import adapter_for, tiny_policy_config
from prismrl.policy.multi_turn import EpisodeSampler, turn_level_advantages
from prismrl.policy.rollout import HFRolloutEngine, PackingSettings, SamplingSettings, eos_token_ids
from prismrl.policy.token_logprobs import policy_logprobs
from prismrl.rewards.environments import DigitCompareEnvironment, Observation, digit_image
from prismrl.rl.shaping import OverlongSettings

G = 4
SAMPLING = SamplingSettings(max_new_tokens=4)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    config, tokenizer = tiny_policy_config({"model_type": "qwen2_vl"})
    model = tf.Qwen2VLForConditionalGeneration(config).eval()
    adapter = adapter_for(model, tokenizer, min_pixels=56 * 56, max_pixels=56 * 56)  # 4 image tokens per digit
    eos = eos_token_ids(model, tokenizer)
    return SimpleNamespace(model=model, tokenizer=tokenizer, adapter=adapter, eos=eos,
                           engine=HFRolloutEngine(model, adapter, eos))


def digit_record(label: int) -> PromptRecord:
    return PromptRecord("<image>Which digit?", images=[digit_image(label, 0)], answer=str(label), meta={"label": label})


def scripted(parts, replies, seen):
    """Runs the real policy on each turn's prompt batch (images included), then returns ``replies[turn][row]``."""
    tok = parts.tokenizer

    def generate(batch, chosen, round_, turn):
        parts.engine.generate(batch, SAMPLING)  # generate must accept the conversation with all its images
        seen.append(batch)
        return [tok(replies[turn][b % len(replies[turn])], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                for b in range(batch.batch_size)]

    return generate


def rollout(parts, sampler, record, replies, seen):
    return sampler.sample([record], False, scripted(parts, replies, seen), None, parts.engine, SAMPLING.max_new_tokens,
                          "cpu", torch.float32)


def test_second_image_arrives_in_turn_two_and_stays_out_of_the_loss(parts):
    record = digit_record(3)
    env = DigitCompareEnvironment(identify_reward=0.25)
    env.reset(record)
    right = "yes" if env.second > 3 else "no"
    wrong = "no" if right == "yes" else "yes"
    seen = []
    out = rollout(parts, EpisodeSampler(parts.adapter, parts.eos, G, environment=env), record,
                  {0: ["three", "seven"], 1: [right, wrong]}, seen)
    image_id = parts.adapter.image_token_id
    assert [b.images_per_sample.tolist() for b in seen] == [[1] * G, [2] * G]  # turn 2 sees both digits
    assert [int((b.input_ids == image_id).sum(1)[0]) for b in seen] == [4, 8]
    second = parts.adapter.process_images([env.second_image])
    batch = out.batch
    assert batch.images_per_sample.tolist() == [2] * G and batch.extra_model_kwargs["image_grid_thw"].shape[0] == 2 * G
    rows = int(batch.pixel_rows_per_image[0])
    torch.testing.assert_close(batch.pixel_values[rows:2 * rows], second.pixel_values)  # row 0's second image
    vision = torch.isin(batch.input_ids, torch.tensor(parts.adapter.image_token_ids))
    assert int((batch.input_ids == image_id).sum()) == 8 * G
    assert batch.loss_mask[vision].sum() == 0  # image, vision start / end tokens: all environment tokens
    tok = parts.tokenizer
    for b in range(G):
        own = tok.decode(batch.input_ids[b][batch.loss_mask[b].bool()])
        assert own == ("three" if b % 2 == 0 else "seven") + "<|im_end|>" + (right if b % 2 == 0 else wrong) + \
            "<|im_end|>"
    torch.testing.assert_close(out.total, torch.tensor([1.25, 0.0, 1.25, 0.0]))
    torch.testing.assert_close(out.turn_rewards, torch.tensor([[0.25, 1.0], [0.0, 0.0]] * 2))
    assert out.turn_mask.all() and out.stats["turns"].item() == 2.0
    assert set(out.token_turn[batch.loss_mask[:, 1:].bool()].tolist()) == {0, 1}
    assert (out.token_turn[~batch.loss_mask[:, 1:].bool()] == -1).all()
    advantages = turn_level_advantages(out, G, True)  # [B, T-1]; turn 1 of the right rows beats everything else
    assert advantages[0][out.token_turn[0] == 0].unique().numel() == 1 and advantages[0].max() > 0 > advantages[1].min()


def test_the_episode_forward_sees_each_image_at_its_place(parts):
    record = digit_record(5)
    out = rollout(parts, EpisodeSampler(parts.adapter, parts.eos, G, environment=DigitCompareEnvironment()), record,
                  {0: ["five"], 1: ["no"]}, [])
    batch = out.batch.select([0])
    turn = out.token_turn[:1]  # [1, T-1]
    with torch.no_grad():
        base, _ = policy_logprobs(parts.model, batch)
        rows = int(batch.pixel_rows_per_image[0])
        for image, changed_turns in [(0, {0, 1}), (1, {1})]:
            moved = batch.select([0])
            moved.pixel_values = batch.pixel_values.clone()
            moved.pixel_values[image * rows:(image + 1) * rows] += 1.0
            other, _ = policy_logprobs(parts.model, moved)
            for k in (0, 1):
                differs = not torch.allclose(other[turn == k], base[turn == k], atol=1e-6)
                assert differs == (k in changed_turns), (image, k)


def test_multi_turn_with_images_packs_like_the_padded_batch(parts):
    seen = []
    out = rollout(parts, EpisodeSampler(parts.adapter, parts.eos, G, environment=DigitCompareEnvironment()),
                  digit_record(7), {0: ["seven", "one two"], 1: ["yes", "no no"]}, seen)
    batch, mask = out.batch, out.batch.loss_mask[:, 1:].bool()
    width = int(batch.attention_mask.sum(1).max())
    packing = PackingSettings(max_tokens_per_row=2 * width + 1)  # two episodes per packed row
    rope = parts.adapter.rope_index_fn(parts.model)
    with torch.no_grad():
        padded, _ = policy_logprobs(parts.model, batch)
        packed, _ = policy_logprobs(parts.model, batch, packing=packing, rope_index=rope)
    torch.testing.assert_close(packed[mask], padded[mask], atol=2e-5, rtol=1e-4)


def test_overlong_penalty_goes_to_the_last_turn_and_turns_add_up(parts):
    sampler = EpisodeSampler(parts.adapter, parts.eos, G, environment=DigitCompareEnvironment(identify_reward=0.5),
                             overlong=OverlongSettings(buffer=2, penalty=1.0))
    out = rollout(parts, sampler, digit_record(2), {0: ["two"], 1: ["a b c", "yes"]}, [])
    torch.testing.assert_close(out.turn_rewards.sum(1), out.total)
    # L_max 4, buffer 2: free up to 2 tokens; "a b c" + EOS = 4 tokens -> -1, "yes" + EOS = 2 -> 0
    assert out.components["overlong"].tolist() == [-1.0, 0.0, -1.0, 0.0]
    assert out.turn_rewards[:, 1].tolist() == [-1.0, out.total[1].item() - 0.5] * 2  # on the last turn
    assert out.turn_rewards[:, 0].tolist() == [0.5] * G


def test_observation_errors_are_named(parts):
    with pytest.raises(ValueError, match="Observation.text: expected 1 '<image>' placeholder"):
        Observation("no placeholder", [digit_image(1, 0)])

    class Bad(DigitCompareEnvironment):
        def step(self, completion):
            return 42, 0.0, False

    with pytest.raises(TypeError, match="environment.step observation: expected None, a str or an Observation"):
        rollout(parts, EpisodeSampler(parts.adapter, parts.eos, G, environment=Bad()), digit_record(1),
                {0: ["one"]}, [])
    with pytest.raises(ValueError, match="record: expected a PromptRecord with one image and an int meta"):
        DigitCompareEnvironment().reset(PromptRecord("What?"))
