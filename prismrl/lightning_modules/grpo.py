"""GRPO on a (vision-)language policy: group rollouts, group-normalized advantages, clipped objective + KL.

One training step (a batch of P prompt records, G = group_size):
    rollout   y_1..G ~ pi_old(.|x) for every prompt x            (a RolloutEngine: HF generate, temperature / top-p)
    reward    r_i = reward_fn(y_i, record)                       (e.g. a WeightedSumReward of rule rewards)
    advantage A_i = (r_i - mean_group(r)) / (std_group(r) + eps)  (advantage_estimator grpo; or rloo, reinforce_pp)
    for mu = 1..num_iterations, for each minibatch of the P*G rollouts:
        rho_t = pi_theta(y_t|..) / pi_old(y_t|..)
        L = aggregate_t( -min(rho_t A, clip(rho_t, 1-eps_low, 1+eps_high) A) + beta * KL_k3(pi_theta || pi_ref) )
                  (objective ppo_clip; gspo / gspo_token use the sequence ratio, cispo a clipped detached weight)
        one AdamW step
pi_old log-probs are recorded once per rollout (only when several optimizer steps reuse it; with one step
pi_old = pi_theta detached, equal in value and gradient); pi_ref is the policy with its LoRA adapters switched
off (no second copy of the weights), or a frozen copy without LoRA; beta = 0 computes no reference at all.
Every forward over a rollout (pi_old, pi_ref and the training forward and backward) runs each group's shared
prompt once (``prismrl.policy.shared_prefix``, ``share_prompt_prefix``), and the head scores completion positions only. ``trainer.max_steps`` and the learning-rate
schedule count optimizer steps: rollouts x num_iterations x minibatches per rollout.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import Tensor

from prismrl.backbones.sharding import full_state_dict, gathered, is_sharded
from prismrl.choices import (
    check_finite,
    check_positive_float,
    check_positive_int,
    parse_choice,
)
from prismrl.data.records import PromptRecord
from prismrl.lightning_modules.plumbing import RolloutStageModule, built_from_config
from prismrl.optim import OptimizerSettings, adamw_with_schedule
from prismrl.policy.adapters import ProcessorSettings, adapter_for
from prismrl.policy.build import (
    PolicySettings,
    build_policy,
    frozen_copy,
    reference_of,
    uses_adapters,
)
from prismrl.policy.multi_turn import EpisodeSampler, check_turn_rewards, turn_level_advantages
from prismrl.policy.multimodal import MultimodalBatch
from prismrl.policy.rollout import (
    PackingSettings,
    RolloutSettings,
    SamplingSettings,
    eos_token_ids,
    group_indices,
    minibatches,
)
from prismrl.policy.seeding import (
    RolloutSeeding,
    derive_seed,
    prompt_key,
    prompt_seeds,
    seeded,
)
from prismrl.policy.shared_prefix import shared_prefix_logprobs
from prismrl.policy.token_logprobs import policy_logprobs
from prismrl.rewards.environments import build_environment
from prismrl.rewards.functions import RewardScores, build_reward, score_completions
from prismrl.rl.advantages import (
    AdvantageScaling,
    global_std,
    masked_mean,
)
from prismrl.rl.baselines import AdvantageEstimator, estimate_advantages
from prismrl.rl.importance import logprob_mismatch, truncated_importance_weights
from prismrl.rl.kl import KLEstimator
from prismrl.rl.objectives import PolicyObjective
from prismrl.rl.policy_loss import LossAggregation, count_global_tokens, grpo_loss
from prismrl.rl.shaping import DynamicSamplingSettings, OverlongSettings


class GRPOModule(RolloutStageModule):
    """GRPO trainer for causal LMs and VLMs (see the module docstring).

    Args:
        reward: ``fn(completions: list[str], records: list[PromptRecord]) -> [N]`` (``prismrl.rewards.functions``:
            ExactMatchReward, NumericMatchReward, FormatReward, CallableReward, WeightedSumReward).
        policy: PolicySettings: the (vision-)language policy, its dtype, attention, quantization and LoRA.
        group_size: G completions per prompt (>= 2).
        sampling: SamplingSettings (temperature, top-p/k, max_new_tokens).
        rollout: RolloutSettings: the engine that samples ("hf" = the policy's generate, "vllm" = colocated vLLM).
        truncated_is_cap: with an engine reporting its own log-probs (vllm), weight each token's loss by
            min(pi_trainer / pi_engine, C), C = this value; None = off (the gap is logged either way).
        num_iterations: optimization passes (mu) over each rollout.
        minibatch_size: rollouts per optimizer step (None = all P*G at once).
        beta: KL coefficient (0 = no reference model).
        kl_estimator: "k1", "k2" or "k3".
        eps_low: lower clip: ratios below 1 - eps_low are clipped.
        eps_high: upper clip: ratios above 1 + eps_high are clipped.
        loss_aggregation: grpo / bnpo / dapo / dr_grpo (``prismrl.rl.policy_loss``).
        advantage_scaling: group_std / batch_std / none (the GRPO estimator's denominator).
        advantage_estimator: grpo / rloo / reinforce_pp (``prismrl.rl.baselines``).
        objective: ppo_clip / gspo / gspo_token / cispo (``prismrl.rl.objectives``).
        packing: PackingSettings to run the training forwards on packed rows (None = padded batch).
        system_prompt: an optional system turn.
        processor: ProcessorSettings (image processor, chat template; None = the model folder's / defaults).
        logprob_chunk_size: rows per log-softmax block (None = auto).
        share_prompt_prefix: run each group's prompt once in the log-prob forwards (text batches of whole groups;
            false = every row in full, the same values).
        optimizer: OptimizerSettings (AdamW over the trainable policy weights, warmup + cosine, clipping).
        export_dir: where ``on_fit_end`` saves the adapters (or the full model) and tokenizer.
        rollout_seeding: "per_rank" or "per_prompt" (the same completions however prompts split across ranks).
        dynamic_sampling: DAPO's re-rolling of uninformative groups (``prismrl.rl.shaping``; None = off).
        overlong: DAPO's overlong reward shaping and filter (``prismrl.rl.shaping``; None = off).
        environment: multi-turn episodes whose rewards replace ``reward`` (``prismrl.rewards.environments``).
        turn_rewards: with an environment, each turn's tokens get its group-normalized return-to-go
            (``prismrl.rl.turn_rewards``) instead of the episode's advantage (false = the episode reward).

    Across ranks (DDP / FSDP2) each rank rolls out its own prompts, G completions each, so a group never spans
    ranks; ``batch_std`` scaling divides by the std of every rank's rewards, and logged metrics are rank means.
    """

    def __init__(
        self,
        reward: Any,
        policy: PolicySettings,
        group_size: int = 4,
        sampling: SamplingSettings | None = None,
        rollout: RolloutSettings = RolloutSettings(),
        truncated_is_cap: float | None = None,
        num_iterations: int = 1,
        minibatch_size: int | None = None,
        beta: float = 0.04,
        kl_estimator: str = "k3",
        eps_low: float = 0.2,
        eps_high: float = 0.28,
        loss_aggregation: str = "dapo",
        advantage_scaling: str = "group_std",
        advantage_estimator: str = "grpo",
        objective: str = "ppo_clip",
        packing: PackingSettings | None = None,
        system_prompt: str | None = None,
        processor: ProcessorSettings | None = None,
        logprob_chunk_size: int | None = None,
        share_prompt_prefix: bool = True,
        optimizer: OptimizerSettings = OptimizerSettings(lr=1e-5, weight_decay=0.0, betas=(0.9, 0.99), warmup_ratio=0.0,
                                                         min_lr_ratio=0.1, max_grad_norm=1.0),
        export_dir: str | None = None,
        rollout_seeding: str = "per_rank",
        dynamic_sampling: DynamicSamplingSettings | None = None,
        overlong: OverlongSettings | None = None,
        environment: Any = None,
        turn_rewards: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[] if built_from_config() else ["reward", "environment"])
        self.automatic_optimization = False
        self.strict_loading = False  # LoRA checkpoints hold no frozen base weights (see on_save_checkpoint)
        reward = build_reward(reward)
        group_indices(1, group_size)  # validates group_size
        check_positive_int("num_iterations", num_iterations)
        if minibatch_size is not None:
            check_positive_int("minibatch_size", minibatch_size)
        check_positive_float("beta", beta, allow_zero=True)
        if truncated_is_cap is not None:
            check_positive_float("truncated_is_cap", truncated_is_cap)
        self.reward = reward
        self.optimizer_settings = optimizer
        self.sampling = sampling if sampling is not None else SamplingSettings()
        self.rollout_settings = rollout
        self.kl_estimator = parse_choice(KLEstimator, kl_estimator, "kl_estimator")
        self.aggregation = parse_choice(LossAggregation, loss_aggregation, "loss_aggregation")
        self.scaling = parse_choice(AdvantageScaling, advantage_scaling, "advantage_scaling")
        self.objective = parse_choice(PolicyObjective, objective, "objective")
        self.estimator = parse_choice(AdvantageEstimator, advantage_estimator, "advantage_estimator")
        self.seeding = parse_choice(RolloutSeeding, rollout_seeding, "rollout_seeding")
        self._run_seed = 0
        self.policy, self.tokenizer = build_policy(policy)
        self.reference = frozen_copy(self.policy) if beta > 0 and not uses_adapters(self.policy) else None
        self.adapter = adapter_for(self.policy, self.tokenizer, system_prompt=system_prompt, processor=processor)
        self.eos_ids = eos_token_ids(self.policy, self.tokenizer)
        self.packing = packing
        self.rope_index = self.adapter.rope_index_fn(self.policy) if packing is not None else None
        self.sampler = EpisodeSampler(self.adapter, self.eos_ids, group_size, build_environment(environment), overlong,
                                      dynamic_sampling)
        check_turn_rewards(turn_rewards, self.sampler.environment, self.estimator, self.scaling)

    def _logprobs(self, model, batch: MultimodalBatch, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """[B, T-1] log-probs (and entropies) at the completion positions (0 elsewhere; all positions when packed),
        the prompt run once per group where the batch allows (``shared_prefix_logprobs``)."""
        if self.hparams.share_prompt_prefix and self.packing is None:
            shared = shared_prefix_logprobs(model, batch, self.hparams.group_size, self.sampling.temperature,
                                            self.hparams.logprob_chunk_size, with_entropy)
            if shared is not None:
                return shared
        return policy_logprobs(model, batch, self.sampling.temperature, self.hparams.logprob_chunk_size,
                               with_entropy, self.packing, self.rope_index, positions=batch.loss_mask[:, 1:])

    # ----- rollouts -----
    def rollout(self, records: list[PromptRecord], greedy: bool = False) -> tuple[MultimodalBatch, list[str], Any]:
        """G completions or episodes per record (1 when greedy) -> training batch, texts, scores (EpisodeSampler)."""
        if not records or not all(isinstance(r, PromptRecord) for r in records):
            raise TypeError(f"batch: expected a non-empty list of PromptRecord, received {type(records).__name__}")
        with gathered(self.policy):  # FSDP2: weights gathered once for the whole rollout, not per token
            out = self.sampler.sample(records, greedy, lambda *args: self._sample(*args, greedy=greedy),
                                      lambda texts, rows: score_completions(self.reward, texts, rows),
                                      self.rollout_engine, self.sampling.max_new_tokens, self.device, self.policy.dtype)
        self.rollout_stats, self.engine_logprobs, self.sampled = out.stats, out.engine_logprobs, out
        return out.batch, out.texts, RewardScores(out.total, out.components)

    def _sample(self, prompts: MultimodalBatch, records: list[PromptRecord] | None, round_: int = 0, turn: int = 0,
                greedy: bool = False) -> list[list[int]]:
        """Completions of the prompt rows, seeded per rank or prompt (and round / turn; ``prismrl.policy.seeding``)."""
        if greedy:
            return self.rollout_engine.generate(prompts, self.sampling, greedy=True)
        step = self.global_step if round_ == turn == 0 else (self.global_step, round_, turn)
        if self.seeding is RolloutSeeding.PER_RANK or records is None:
            with seeded(derive_seed(self._run_seed, step, "rank", self.global_rank), self.device):
                return self.rollout_engine.generate(prompts, self.sampling)
        group = torch.zeros(self.hparams.group_size, dtype=torch.long)
        seeds = prompt_seeds(self._run_seed, step, [prompt_key(r.prompt, r.images) for r in records])
        completions: list[list[int]] = []
        for record, seed in zip(records, seeds):  # built alone: no padding that depends on the other prompts
            single = self.adapter.build_prompts([record.prompt], [record.images]).select(group)
            with seeded(seed, self.device):
                completions += self.rollout_engine.generate(single.to(self.device, pixel_dtype=self.policy.dtype),
                                                            self.sampling)
        return completions

    @torch.no_grad()
    def _fixed_logprobs(self, batch: MultimodalBatch, needs_old: bool) -> None:
        """Record pi_old (when several steps reuse the rollout) and pi_ref (when beta > 0) log-probs [B, T-1]."""
        if needs_old:
            batch.old_logprobs = self._logprobs(self.policy, batch)[0]
        if self.hparams.beta > 0:
            with reference_of(self.policy, self.reference) as reference:
                batch.ref_logprobs = self._logprobs(reference, batch)[0]

    def training_step(self, records: list[PromptRecord], batch_idx: int) -> Tensor:
        hp = self.hparams
        start = time.perf_counter()
        self.rollout_engine.take_logprobs()  # drop any left from an interrupted step
        batch, _, scores = self.rollout(records)
        rollout_seconds = time.perf_counter() - start
        engine_logprobs = self.engine_logprobs  # the engine's own (vllm) [P*G, T-1], or None
        batch_std = global_std(batch.rewards) if self.scaling is AdvantageScaling.BATCH_STD else None  # all ranks
        if self.estimator is AdvantageEstimator.REINFORCE_PP:  # the std of the group-centered rewards, over all ranks
            batch_std = global_std(estimate_advantages(AdvantageEstimator.GRPO, batch.rewards, hp.group_size,
                                                       AdvantageScaling.NONE))
        batch.advantages = estimate_advantages(self.estimator, batch.rewards, hp.group_size, self.scaling, batch_std) \
            if not hp.turn_rewards else turn_level_advantages(self.sampled, hp.group_size,
                                                              self.scaling is AdvantageScaling.GROUP_STD)  # [B, T-1]
        check_finite("the advantages", batch.advantages, self.global_step)
        one_pass = hp.minibatch_size is None or hp.minibatch_size >= batch.batch_size
        self._fixed_logprobs(batch, needs_old=hp.num_iterations > 1 or not one_pass)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        self.policy.train()
        stats: list[dict[str, Tensor]] = []
        for _ in range(hp.num_iterations):
            for index in minibatches(batch.batch_size, hp.minibatch_size):
                engine_rows = None if engine_logprobs is None else engine_logprobs[index.to(engine_logprobs.device)]
                stats.append(self._optimizer_step(batch.select(index), optimizer, engine_rows) | self.rollout_stats)
                scheduler.step()
        self.rollout_engine.sync_weights(self.policy)
        self._log_step(batch, scores, stats, rollout_seconds, time.perf_counter() - start)
        return stats[-1]["loss"]

    def _optimizer_step(self, minibatch: MultimodalBatch, optimizer,
                        engine_logprobs: Tensor | None = None) -> dict[str, Tensor]:
        hp = self.hparams
        logprobs, entropy = self._logprobs(self.policy, minibatch, with_entropy=True)  # [b, T-1]
        mask = minibatch.loss_mask[:, 1:]  # [b, T-1] completion tokens
        advantages, engine_stats = minibatch.advantages, {}
        if engine_logprobs is not None:  # the sampling engine's own log-probs: log the gap, optionally reweight
            trainer = minibatch.old_logprobs if minibatch.old_logprobs is not None else logprobs.detach()
            engine_stats = logprob_mismatch(trainer, engine_logprobs, mask)
            if hp.truncated_is_cap is not None:
                weights = truncated_importance_weights(trainer, engine_logprobs, hp.truncated_is_cap)  # [b, T-1]
                advantages = advantages.unsqueeze(1) * weights if advantages.dim() == 1 else advantages * weights
                engine_stats["tis_weight_mean"] = masked_mean(weights, mask.to(weights.dtype))
        loss, stats = grpo_loss(
            logprobs, advantages, mask, minibatch.old_logprobs, minibatch.ref_logprobs,
            beta=hp.beta, kl_estimator=self.kl_estimator, eps_low=hp.eps_low, eps_high=hp.eps_high,
            aggregation=self.aggregation, max_completion_length=self.sampling.max_new_tokens,
            global_token_count=count_global_tokens(mask) if self.aggregation is LossAggregation.DAPO else None,
            world_size=self.trainer.world_size, objective=self.objective,
        )
        self.manual_optimizer_step(loss, optimizer)
        return {"loss": loss.detach(), "entropy": masked_mean(entropy, mask.to(entropy.dtype)), **stats.to_dict(),
                **engine_stats}

    def _log_step(self, batch: MultimodalBatch, scores, stats: list[dict[str, Tensor]], rollout_s: float,
                  step_s: float) -> None:
        hp = self.hparams
        lengths = batch.loss_mask.sum(dim=1).float()  # [P*G] completion tokens
        grouped = batch.rewards.view(-1, hp.group_size)
        logged = {
            "train/reward": batch.rewards.mean(),
            "train/reward_std": global_std(batch.rewards) if self.trainer.world_size * batch.batch_size > 1
            else torch.zeros(()),
            "train/frac_zero_std_groups": (grouped.amax(1) == grouped.amin(1)).float().mean(),
            "train/completion_length": lengths.mean(),
            "train/tokens_per_s": lengths.sum() / max(rollout_s, 1e-9),  # no host sync
            "train/step_seconds": torch.tensor(step_s),
            "train/lr": torch.tensor(self.optimizers().param_groups[0]["lr"]),
        }
        logged.update({f"train/reward/{k}": v.float().mean() for k, v in scores.components.items()})
        for key in stats[0]:
            logged[f"train/{key}"] = torch.stack([s[key].float() for s in stats]).mean()
        if "train/kl_mean" in logged:
            logged["train/kl"] = logged.pop("train/kl_mean")
        self.log_dict({k: v.to(self.device) for k, v in logged.items()}, batch_size=batch.batch_size, sync_dist=True)
        self.log("train/completion_length_max", lengths.max().to(self.device), batch_size=batch.batch_size,
                 sync_dist=True, reduce_fx="max")
        self.log("train/reward_step", batch.rewards.mean(), prog_bar=True, logger=False, batch_size=batch.batch_size)

    # ----- evaluation: greedy completions, one per prompt -----
    def validation_step(self, records: list[PromptRecord], batch_idx: int) -> None:
        batch, _, scores = self.rollout(records, greedy=True)
        logged = {"val/reward": scores.total.float().mean(), "val/completion_length": batch.loss_mask.sum(1).float().mean()}
        logged.update({f"val/reward/{k}": v.float().mean() for k, v in scores.components.items()})
        self.log_dict({k: v.to(self.device) for k, v in logged.items()}, batch_size=len(records), sync_dist=True)

    @torch.no_grad()
    def generate(self, records: list[PromptRecord]) -> list[str]:
        """Greedy answers to prompt records (their images included)."""
        return self.rollout(records, greedy=True)[1]

    # ----- Lightning plumbing -----
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # prompt records stay on the host; rollouts move their own tensors

    def setup(self, stage: str) -> None:
        """The run's seed (``seed_everything``'s PL_GLOBAL_SEED, the same on every rank) that rollout seeds derive from."""
        self._run_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))

    def on_train_start(self) -> None:
        super().on_train_start()
        self.rollout_engine.sync_weights(self.policy)  # the weights a resumed run restored

    def configure_optimizers(self):
        settings = self.optimizer_settings
        hp = self.hparams
        total_steps = self.manual_optimizer_steps(hp.num_iterations, hp.minibatch_size, rows_per_sample=hp.group_size)
        config = adamw_with_schedule(settings, [(self.policy.named_parameters(), settings.lr)], total_steps,
                                     no_decay_names=("bias", "norm"), owner="policy")
        return [config["optimizer"]], [config["lr_scheduler"]["scheduler"]]  # stepped by hand (manual optimization)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """With LoRA, checkpoints keep the trainable weights only: the frozen base is rebuilt from its source.
        Sharded (FSDP2 distributed) checkpoints keep every shard: their loader expects each key of the model."""
        super().on_save_checkpoint(checkpoint)
        if uses_adapters(self.policy) and not is_sharded(self.policy):
            frozen = {f"policy.{name}" for name, p in self.policy.named_parameters() if not p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}

    def export(self, folder: str, state_dict: dict[str, Tensor] | None = None) -> None:
        """``save_pretrained`` of the adapters (LoRA) or the full policy, plus the tokenizer; ``state_dict``:
        the policy's consolidated weights when it is FSDP2-sharded (``full_state_dict``)."""
        self.policy.save_pretrained(folder, **({"state_dict": state_dict} if state_dict is not None else {}))
        self.tokenizer.save_pretrained(folder)

    def on_fit_end(self) -> None:
        if self.hparams.export_dir:
            state = full_state_dict(self.policy) if is_sharded(self.policy) else None  # every rank gathers
            if self.trainer.is_global_zero:
                self.export(self.hparams.export_dir, state)
