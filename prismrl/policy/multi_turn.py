"""Episodes of an RL stage: single-turn completions or multi-turn conversations with an environment, DAPO's
dynamic sampling and overlong shaping / filtering, assembled into one training batch.

Multi-turn (an ``environment``, duck-typed as ``prismrl.rewards.environments.Environment``):

    prompt_1 = env.reset(record)
    for turn = 1..env.max_turns:   y_t ~ pi(. | prompt_1, y_1, o_1, .., o_{t-1})
                                   o_t, r_t, done = env.step(text(y_t));  stop when done
    row tokens = prompt_1 y_1 o_1 y_2 o_2 .. y_k      loss_mask = 1 on the y tokens only, 0 on every o
    reward = sum_t r_t            (per turn r_t kept too: ``SampledRollout.turn_rewards``, ``prismrl.rl.turn_rewards``)

An observation may carry images (``Observation(text, images)``, one "<image>" each in its text): they are processed
once, their image tokens join the user turn (masked out of the loss like all of o_t), and the row's image inputs
(``prismrl.policy.episode_images``) hold the first prompt's images, then each later turn's, in text order.

Each observation o_t is rendered as a user turn of the chat template: the tokens that close the assistant turn
(what follows the EOS the model wrote, e.g. "\\n" in ChatML; the whole closing when it was cut without EOS), the
user turn and the next assistant generation prompt. Model tokens are kept exactly as sampled (never re-tokenized).

Dynamic sampling (``DynamicSamplingSettings``): after the first round, the groups whose G rewards are all equal are
sampled again (new seeds), round after round, until ``min_groups`` groups are informative or ``max_rounds`` rounds
ran; every rank runs the same number of rounds (an all-reduce). The batch keeps its P*G rows so every rank runs
the same optimizer steps; groups still uninformative leave the loss (their loss_mask is zeroed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from prismrl.policy.episode_images import (
    RowImages,
    attach_images,
    episode_batch,
    observation_images,
    prompt_row_images,
)
from prismrl.policy.multimodal import MultimodalBatch
from prismrl.policy.rollout import completion_values, group_indices
from prismrl.rl.shaping import (
    DynamicSamplingSettings,
    OverlongSettings,
    any_rank,
    groups_to_resample,
    informative_groups,
    overlong_filter_mask,
    overlong_penalty,
)
from prismrl.rl.turn_rewards import token_advantages, turn_advantages

ASSISTANT_SENTINEL = "\u2063prismrl-assistant-turn\u2063"


@dataclass
class Episodes:
    """Per row: tokens after the first prompt, which of them the policy wrote, and how the episode ended."""

    completions: list[list[int]]
    own: list[list[int]]  # 1 = a policy token, 0 = an environment token
    finished: list[bool]  # the last policy turn ended with EOS (not cut at the token budget)
    texts: list[str]  # the last policy turn, decoded
    last_lengths: list[int]  # tokens of the last policy turn
    turns: list[int]
    engine_logprobs: list[list[float]] | None = None  # per row, over its policy tokens (engines that report them)
    rewards: list[float] | None = None  # environment rewards (multi-turn)
    turn_rewards: list[list[float]] | None = None  # per row, per assistant turn (multi-turn)
    token_turns: list[list[int]] | None = None  # per completion token its turn (-1 = an environment token)
    images: list[RowImages] | None = None  # per row its images in text order (multi-turn)

    def replace(self, rows: list[int], other: Episodes) -> None:
        """Rows ``rows`` take ``other``'s rows (in order)."""
        for name in ("completions", "own", "finished", "texts", "last_lengths", "turns", "engine_logprobs", "rewards",
                     "turn_rewards", "token_turns", "images"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None or theirs is None:
                setattr(self, name, None)
                continue
            for row, value in zip(rows, theirs):
                mine[row] = value


@dataclass
class SampledRollout:
    """What ``EpisodeSampler.sample`` returns: the training batch (rewards set), the last turns' texts, reward total
    [B] and components, the engine's log-probs [B, T-1] (or None) and per-step statistics; multi-turn also gives
    turn_rewards / turn_mask [B, K] (sum_k = total) and token_turn [B, T-1] (the turn of each target token, -1 off
    the policy's tokens)."""

    batch: MultimodalBatch
    texts: list[str]
    total: Tensor
    components: dict[str, Tensor]
    engine_logprobs: Tensor | None
    stats: dict[str, Tensor] = field(default_factory=dict)
    turn_rewards: Tensor | None = None
    turn_mask: Tensor | None = None
    token_turn: Tensor | None = None


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-padded [B, T] ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids[b, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[b, width - len(row):] = 1
    return ids, mask


def continuation_batch(adapter, prompts: MultimodalBatch, rows: list[int], histories: list[list[int]],
                       images: list[RowImages] | None = None) -> MultimodalBatch:
    """A left-padded prompt batch of ``histories`` (prompt + turns so far) for prompt rows ``rows``, with their
    images: the prompts' own, or ``images`` (per row of ``rows``) when given."""
    base = prompts.select(rows)
    input_ids, attention_mask = left_pad(histories, adapter.pad_token_id)
    input_ids, attention_mask = input_ids.to(prompts.input_ids.device), attention_mask.to(prompts.input_ids.device)
    extra = {k: v for k, v in base.extra_model_kwargs.items() if k not in adapter.token_kwarg_keys}
    extra.update(adapter.token_kwargs(input_ids))
    batch = MultimodalBatch(input_ids=input_ids, attention_mask=attention_mask,
                            loss_mask=torch.zeros_like(attention_mask), pixel_values=base.pixel_values,
                            extra_model_kwargs=extra,
                            images_per_sample=base.images_per_sample, pixel_rows_per_image=base.pixel_rows_per_image,
                            per_image_keys=base.per_image_keys)
    return batch if images is None else attach_images(batch, images)


def observation_text(adapter, observation: str, ended_with: str | None) -> str:
    """The text after an assistant turn that holds ``observation`` as the next user turn and opens the next assistant
    turn; ``ended_with``: the EOS text the assistant turn ended with (None = cut without one)."""
    if not adapter.use_chat_template:
        return f"\n{observation}\n"
    system = [{"role": "system", "content": adapter.system_prompt}] if adapter.system_prompt else []
    turns = system + [{"role": "user", "content": "q"}, {"role": "assistant", "content": ASSISTANT_SENTINEL}]
    render = adapter.tokenizer.apply_chat_template
    base = render(turns, tokenize=False)
    full = render(turns + [{"role": "user", "content": observation}], tokenize=False, add_generation_prompt=True)
    if not full.startswith(base) or ASSISTANT_SENTINEL not in base:
        raise ValueError("environment: this tokenizer's chat template does not extend a conversation by appending "
                         "turns; multi-turn rollouts need one that does")
    closing = base[base.rindex(ASSISTANT_SENTINEL) + len(ASSISTANT_SENTINEL):]
    if ended_with and closing.startswith(ended_with):
        closing = closing[len(ended_with):]
    return closing + full[len(base):]


def observation_parts(observation: Any) -> tuple[str, list]:
    """(text, images) of an observation: a str, or an object with ``text`` and ``images`` (``Observation``)."""
    if isinstance(observation, str):
        return observation, []
    if not isinstance(getattr(observation, "text", None), str) or not isinstance(getattr(observation, "images", None),
                                                                                  (list, tuple)):
        raise TypeError(f"environment.step observation: expected None, a str or an Observation(text, images), "
                        f"received {type(observation).__name__}")
    return observation.text, list(observation.images)


class EpisodeSampler:
    """Samples a step's episodes (see the module docstring) through a stage's ``generate`` and ``score``.

    generate(prompt_batch, records or None, round, turn) -> completion ids per row (the stage's seeding; records is
    None for multi-turn turns, whose prompt rows are conversations); score(texts, records) -> object with ``total``
    [N] and ``components``; engine: the stage's RolloutEngine (its per-row log-probs are collected per call).
    """

    def __init__(self, adapter, eos_ids: list[int], group_size: int, environment: Any = None,
                 overlong: OverlongSettings | None = None, dynamic: DynamicSamplingSettings | None = None) -> None:
        self.adapter, self.eos_ids, self.group_size = adapter, set(eos_ids), group_size
        self.environment, self.overlong, self.dynamic = environment, overlong or OverlongSettings(), dynamic
        self.eos_text = {i: adapter.tokenizer.decode([i]) for i in self.eos_ids}

    def first_prompts(self, records: list) -> MultimodalBatch:
        prompts = [r.prompt for r in records] if self.environment is None else \
            [self.environment.reset(r) for r in records]
        return self.adapter.build_prompts(prompts, [r.images for r in records])

    def sample(self, records: list, greedy: bool, generate: Callable, score: Callable, engine,
               max_new_tokens: int, device, dtype) -> SampledRollout:
        g = 1 if greedy else self.group_size
        first = self._round(records, list(range(len(records))), g, 0, greedy, generate, score, engine, max_new_tokens,
                            device, dtype)
        episodes, total, components = first
        rounds, resampled = 1, 0
        dynamic = None if greedy else self.dynamic
        while dynamic is not None and rounds < dynamic.max_rounds:
            todo = groups_to_resample(informative_groups(total, g), dynamic.min_groups).tolist()
            if not any_rank(bool(todo), device):
                break
            if todo:
                again, again_total, again_components = self._round(records, todo, g, rounds, greedy, generate, score,
                                                                   engine, max_new_tokens, device, dtype)
                rows = [q * g + k for q in todo for k in range(g)]
                episodes.replace(rows, again)
                total[rows] = again_total
                for name, value in again_components.items():
                    components[name][rows] = value.to(components[name].dtype)
            rounds, resampled = rounds + 1, resampled + len(todo)
        index = torch.arange(len(records)) if g == 1 else group_indices(len(records), g)
        prompts = self.first_prompts(records).select(index).to(device, pixel_dtype=dtype)
        prompt_images = 0 if prompts.images_per_sample is None else int(prompts.images_per_sample.sum())
        if episodes.images is not None and sum(len(r.pixels) for r in episodes.images) > prompt_images:  # later turns
            batch = episode_batch(self.adapter, prompts, episodes.completions, episodes.own, episodes.images)
            batch = batch.to(device, dtype)
        else:
            batch = self.adapter.append_completions(prompts, episodes.completions).to(device, dtype)
        for b, own in enumerate(episodes.own):  # environment tokens leave the loss
            start = int(prompts.attention_mask[b].sum())
            batch.loss_mask[b, start:start + len(own)] = torch.tensor(own, dtype=batch.loss_mask.dtype)
        engine_logprobs = None if episodes.engine_logprobs is None else \
            completion_values(episodes.engine_logprobs, batch.loss_mask)
        stats: dict[str, Tensor] = {}
        if not greedy and self.overlong.filter:
            finished = torch.tensor(episodes.finished, device=batch.loss_mask.device)
            batch.loss_mask = overlong_filter_mask(batch.loss_mask, finished)
            stats["overlong_filtered"] = (~finished).float().sum()
        if dynamic is not None:
            keep = informative_groups(total, g)  # [P]
            batch.loss_mask = batch.loss_mask * keep.repeat_interleave(g).to(batch.loss_mask).unsqueeze(1)
            stats.update(dynamic_rounds=torch.tensor(float(rounds)), dynamic_resampled_groups=torch.tensor(float(
                resampled)), dynamic_filtered_groups=(~keep).float().sum())
        if self.environment is not None:
            stats["turns"] = torch.tensor(episodes.turns, dtype=torch.float32).mean()
        batch.rewards = total.to(device)
        out = SampledRollout(batch, episodes.texts, total, components, engine_logprobs, stats)
        if episodes.turn_rewards is not None:
            out.turn_rewards, out.turn_mask, out.token_turn = self._turn_tensors(episodes, prompts, batch)
        return out

    @staticmethod
    def _turn_tensors(episodes: Episodes, prompts: MultimodalBatch, batch: MultimodalBatch):
        """turn_rewards, turn_mask [B, K] and token_turn [B, T-1] (see ``SampledRollout``)."""
        width = max(len(r) for r in episodes.turn_rewards)
        rewards = torch.zeros(len(episodes.turn_rewards), width)
        mask = torch.zeros(len(episodes.turn_rewards), width, dtype=torch.bool)
        token_turn = torch.full(tuple(batch.input_ids.shape), -1, dtype=torch.long)
        for b, (values, turns) in enumerate(zip(episodes.turn_rewards, episodes.token_turns)):
            rewards[b, :len(values)], mask[b, :len(values)] = torch.tensor(values), True
            start = int(prompts.attention_mask[b].sum())
            token_turn[b, start:start + len(turns)] = torch.tensor(turns, dtype=torch.long)
        token_turn = torch.where(batch.loss_mask.cpu().bool(), token_turn, -1)
        device = batch.input_ids.device
        return rewards.to(device), mask.to(device), token_turn[:, 1:].to(device)

    def _round(self, records, groups: list[int], g: int, round_: int, greedy: bool, generate, score, engine,
               max_new_tokens: int, device, dtype) -> tuple[Episodes, Tensor, dict[str, Tensor]]:
        """Episodes of ``groups`` (record indices), G rows each, with their (shaped) rewards."""
        chosen = [records[i] for i in groups]
        index = torch.arange(len(chosen)) if g == 1 else group_indices(len(chosen), g)
        prompts = self.first_prompts(chosen).select(index).to(device, pixel_dtype=dtype)
        rows = [r for r in chosen for _ in range(g)]
        if self.environment is None:
            completions = generate(prompts, chosen, round_, 0)
            logprobs = engine.take_logprobs()  # greedy calls keep none
            episodes = self._single_turn(completions, None if greedy else logprobs)
            scores = score(episodes.texts, rows)
            total = scores.total.to(torch.float32).clone()
            components = {k: v.to(torch.float32).clone() for k, v in scores.components.items()}
        else:
            episodes = self._multi_turn(prompts, rows, generate, round_, engine, greedy, dtype)
            total = torch.tensor(episodes.rewards, dtype=torch.float32)
            components = {"environment": total.clone()}
        if self.overlong.buffer is not None and not greedy:
            penalty = self.overlong.penalty * overlong_penalty(torch.tensor(episodes.last_lengths), max_new_tokens,
                                                               min(self.overlong.buffer, max_new_tokens))
            total = total + penalty.to(total.device)
            components["overlong"] = penalty
            for b, value in enumerate(penalty.tolist() if episodes.turn_rewards is not None else []):
                episodes.turn_rewards[b][-1] += value  # the last turn's length is the one penalized
        return episodes, total, components

    def _ended(self, completion: list[int]) -> bool:
        return bool(completion) and completion[-1] in self.eos_ids

    def _single_turn(self, completions: list[list[int]], logprobs) -> Episodes:
        texts = self.adapter.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return Episodes([list(c) for c in completions], [[1] * len(c) for c in completions],
                        [self._ended(c) for c in completions], texts, [len(c) for c in completions],
                        [1] * len(completions), logprobs)

    def _multi_turn(self, prompts: MultimodalBatch, rows: list, generate, round_: int, engine,
                    greedy: bool = False, dtype: torch.dtype | None = None) -> Episodes:
        from copy import deepcopy

        n, tokenizer = len(rows), self.adapter.tokenizer
        envs = [deepcopy(self.environment) for _ in range(n)]
        for env, record in zip(envs, rows):
            env.reset(record)
        history = [prompts.input_ids[b][prompts.attention_mask[b].bool()].tolist() for b in range(n)]
        out = Episodes([[] for _ in range(n)], [[] for _ in range(n)], [False] * n, [""] * n, [0] * n, [0] * n,
                       [[] for _ in range(n)], [0.0] * n, [[] for _ in range(n)], [[] for _ in range(n)],
                       prompt_row_images(prompts))
        active = list(range(n))
        for turn in range(self.environment.max_turns):
            if not active:
                break
            batch = continuation_batch(self.adapter, prompts, active, [history[b] + out.completions[b] for b in active],
                                       [out.images[b] for b in active])
            completions = generate(batch, None, round_, turn)
            logprobs = engine.take_logprobs()
            if logprobs is None or greedy:
                out.engine_logprobs = None
            still = []
            for k, b in enumerate(active):
                completion = list(completions[k])
                text = tokenizer.decode(completion, skip_special_tokens=True)
                observation, reward, done = envs[b].step(text)
                out.rewards[b] += float(reward)
                out.turn_rewards[b].append(float(reward))
                out.completions[b] += completion
                out.own[b] += [1] * len(completion)
                out.token_turns[b] += [turn] * len(completion)
                if out.engine_logprobs is not None:
                    out.engine_logprobs[b] += list(logprobs[k])
                out.finished[b], out.texts[b], out.last_lengths[b] = self._ended(completion), text, len(completion)
                out.turns[b] += 1
                if done or observation is None or turn + 1 == self.environment.max_turns:
                    continue
                said, shown = observation_parts(observation)
                ended = self.eos_text.get(completion[-1]) if self._ended(completion) else None
                text = observation_text(self.adapter, said, ended)
                text, images = observation_images(self.adapter, text, shown, dtype)
                tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
                out.images[b] = out.images[b].extended(images)
                out.completions[b] += list(tokens)
                out.own[b] += [0] * len(tokens)
                out.token_turns[b] += [-1] * len(tokens)
                still.append(b)
            active = still
        return out


def check_turn_rewards(turn_rewards: bool, environment: Any, estimator: Any, scaling: Any) -> bool:
    """``turn_rewards`` needs an environment (its per-step rewards) and the grpo estimator with group_std or none."""
    if not isinstance(turn_rewards, bool):
        raise TypeError(f"turn_rewards: expected true or false, received {turn_rewards!r}")
    if turn_rewards and environment is None:
        raise ValueError("turn_rewards: expected an environment (per-turn rewards come from its steps), received none")
    if turn_rewards and (getattr(estimator, "value", estimator) != "grpo" or getattr(scaling, "value", scaling)
                         not in ("group_std", "none")):
        raise ValueError(f"turn_rewards: expected advantage_estimator grpo with advantage_scaling group_std or none, "
                         f"received {getattr(estimator, 'value', estimator)} / {getattr(scaling, 'value', scaling)}")
    return turn_rewards


def turn_level_advantages(rollout: SampledRollout, group_size: int, scale: bool) -> Tensor:
    """[B, T-1] per-token advantages: each turn's group-normalized return-to-go (``prismrl.rl.turn_rewards``)."""
    per_turn = turn_advantages(rollout.turn_rewards, rollout.turn_mask, group_size, scale)  # [B, K]
    return token_advantages(per_turn, rollout.token_turn)  # [B, T-1]
