"""PPO on a text generator of labelled examples, rewarded by a classifier trained on them (GenAlign).

One training step = one PPO iteration over a batch of B generation requests (class y_i, request id):
    prompt_i  = template(y_i, in-context examples ICLSampler(request id))   (assistant turn prefilled)
    x_i ~ pi_old(.|prompt_i)                                                (a RolloutEngine: HF generate)
    (text_i, status_i) = parse(x_i)                                         (failures counted, penalized)
    R_i       = ClassifierReward(texts, y, valid)   reset + train k steps + golden eval + distances, normalized
                                                    (over every rank's generations: prismrl.rewards.distributed)
    r_t       = -kl_coef * KL(pi_old || pi_ref)_t, + R_i at the last completion token
    A, G      = GAE(r, V_old, gamma, lam), A whitened over the completion tokens of every rank
    for epoch in 1..ppo_epochs, for each minibatch:  L = PPO-clip(A) + value_coef * clipped value loss(G)
pi_ref is the policy with its LoRA adapters switched off, or a frozen copy without LoRA; V is a linear value
head on the policy's last hidden states. Optimizer steps (``trainer.global_step``) per iteration =
ppo_epochs x minibatches. Logged per step under train/..., and per epoch ``golden/accuracy`` (accuracy on the
golden val split of the classifier trained on the epoch's synthetic batches) and ``reward/mean`` for
EarlyStopping / ModelCheckpoint. The reward normalizer belongs to ``RewardNormalizationCallback`` (checkpointed).
Checkpoints leave out the frozen pretrained weights (the LoRA policy's base, the frozen reference copy, the
classifier's frozen encoder): they are reloaded from their source when the module is built.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from prismrl.backbones.frozen_weights import frozen_pretrained_names
from prismrl.backbones.sharding import gathered
from prismrl.choices import (
    check_finite,
    check_positive_float,
    check_positive_int,
    parse_choice,
)
from prismrl.data.generation_prompts import (
    ParseReport,
    load_prompt_template,
    parse_batch,
)
from prismrl.lightning_modules.plumbing import RolloutStageModule, built_from_config
from prismrl.optim import OptimizerSettings, adamw_with_schedule
from prismrl.policy.adapters.base import ProcessorSettings
from prismrl.policy.adapters.causal_lm import CausalLMAdapter, ResponsePrefixAdapter
from prismrl.policy.adapters.registry import adapter_class_for
from prismrl.policy.build import (
    PolicySettings,
    build_policy,
    frozen_copy,
    reference_of,
    uses_adapters,
)
from prismrl.policy.rollout import (
    HFRolloutEngine,
    RolloutSettings,
    SamplingSettings,
    completion_values,
    eos_token_ids,
    minibatches,
)
from prismrl.policy.seeding import derive_seed, seeded
from prismrl.policy.token_logprobs import policy_logprobs_and_values
from prismrl.rewards.classifier import (
    ClassifierReward,
    ClassifierTraining,
    RewardResult,
    RewardWeights,
)
from prismrl.rewards.distributed import (
    global_classifier_reward,
    run_seed,
    token_share,
    whiten_global,
)
from prismrl.rewards.icl_sampler import ICLSampler, ICLStrategy, parse_strategy
from prismrl.rl.advantages import gae, masked_mean
from prismrl.rl.importance import logprob_mismatch, truncated_importance_weights
from prismrl.rl.kl import KLEstimator, kl_penalty
from prismrl.rl.ppo import (
    ValueHead,
    ppo_loss,
    sequence_end_rewards,
)


class GeneratorPPOModule(RolloutStageModule):
    """See the module docstring.

    Args:
        classifier: the classifier-in-the-loop (``prismrl.backbones.text_classifier.TextClassifier``); its weights
            at construction are the starting weights it is reset to before every reward.
        policy: PolicySettings, the generator: a text-only causal LM (``prismrl.policy.build.build_policy``).
        prompt_template: YAML path / dict / None (default ``PromptTemplate``).
        system_prompt: an optional system turn before each request.
        processor: ProcessorSettings (the chat template; None = the tokenizer's / the model folder's).
        icl_strategy: how in-context examples are drawn: "random", "balanced" (classes evenly) or "diverse"
            (spread in the classifier's starting embedding space).
        icl_examples: in-context examples per prompt.
        sampling: SamplingSettings (max_new_tokens, temperature, top_p, top_k).
        rollout: RolloutSettings, the engine that samples: "hf" = the policy's own generate, "vllm" = a colocated
            vLLM engine (its log-prob gap to the trainer is logged as train/engine_logprob_diff_mean|max).
        truncated_is_cap: with an engine reporting its own log-probs (vllm), weight each token's policy loss by
            min(exp(trainer - engine log-prob), cap) (truncated importance sampling; None = off, e.g. 2.0).
        reward_weights: RewardWeights (w1 inter, w2 intra, w3 golden_loss).
        classifier_steps: optimizer steps of the reward classifier on each batch of generations.
        classifier_lr: the reward classifier's learning rate.
        classifier_batch_size: the reward classifier's batch size (None = all generations at once).
        classifier_training: ClassifierTraining: ``classifier_steps`` steps (default, mode "steps") or early stopping
            on a held-out slice of each batch with its best weights kept (``{mode: early_stopping, patience: 2,
            holdout_fraction: 0.2}``; ``max_steps`` None = ``classifier_steps``).
        distance_metric: "cosine" or "euclidean", for the inter / intra-class distances.
        failure_reward: reward of unparseable / empty / off-class generations (None = -(w2 + w3)).
        kl_coef: weight of the per-token KL penalty to the reference.
        kl_estimator: "k1", "k2" or "k3".
        gamma: GAE discount.
        lam: GAE lambda.
        whiten_advantages: whiten the advantages over the batch's completion tokens.
        ppo_epochs: passes over each rollout batch.
        minibatch_size: rows per PPO minibatch (None = the whole batch).
        clip_range: PPO ratio clip.
        value_clip_range: clip of the value update around the old values.
        value_coef: weight of the value loss.
        optimizer: OptimizerSettings (AdamW at ``lr`` on the policy, warmup + cosine per optimizer step, constant
            by default: ``min_lr_ratio`` 1; gradient clipping).
        value_lr: the value head's learning rate.
        seed: base seed of the in-context example draws.
        logprob_chunk_size: token positions per block of the log-probs from hidden states (None = about 64 MiB
            of float32 logits per block on CPU, 256 MiB on GPU; ``prismrl.rl.hidden_logprobs``).
    """

    def __init__(
        self,
        classifier: nn.Module,
        policy: PolicySettings,
        prompt_template: str | dict[str, Any] | None = None,
        system_prompt: str | None = None,
        processor: ProcessorSettings | None = None,
        icl_strategy: str = "balanced",
        icl_examples: int = 4,
        sampling: SamplingSettings | None = None,
        rollout: RolloutSettings = RolloutSettings(),
        truncated_is_cap: float | None = None,
        reward_weights: RewardWeights | None = None,
        classifier_steps: int = 10,
        classifier_lr: float = 1e-3,
        classifier_batch_size: int | None = None,
        classifier_training: ClassifierTraining | None = None,
        distance_metric: str = "cosine",
        failure_reward: float | None = None,
        kl_coef: float = 0.05,
        kl_estimator: str = "k1",
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten_advantages: bool = True,
        ppo_epochs: int = 2,
        minibatch_size: int | None = None,
        clip_range: float = 0.2,
        value_clip_range: float = 0.2,
        value_coef: float = 0.5,
        optimizer: OptimizerSettings = OptimizerSettings(lr=1e-5, weight_decay=0.0, min_lr_ratio=1.0, max_grad_norm=1.0),
        value_lr: float = 1e-3,
        seed: int = 0,
        logprob_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[] if built_from_config() else ["classifier"])
        self.automatic_optimization = False
        if not callable(getattr(classifier, "embed", None)) or not isinstance(getattr(classifier, "head", None), nn.Module):
            raise TypeError(f"classifier: expected a TextClassifier-like module (embed + head), received {type(classifier).__name__}")
        check_positive_int("ppo_epochs", ppo_epochs)
        check_positive_int("icl_examples", icl_examples)
        if minibatch_size is not None:
            check_positive_int("minibatch_size", minibatch_size)
        check_positive_float("kl_coef", kl_coef, allow_zero=True)
        check_positive_float("value_lr", value_lr)
        if truncated_is_cap is not None:
            check_positive_float("truncated_is_cap", truncated_is_cap)
        parse_strategy(icl_strategy, "icl_strategy")
        self.optimizer_settings = optimizer
        self.rollout_settings = rollout
        self.kl_estimator = parse_choice(KLEstimator, kl_estimator, "kl_estimator")
        self.reward_weights = reward_weights if reward_weights is not None else RewardWeights()
        self.sampling = sampling if sampling is not None else SamplingSettings()
        self.template = load_prompt_template(prompt_template)
        self.classifier = classifier
        self.unsharded_children = ("classifier",)  # FSDP2: each rank resets and retrains it inside the reward
        self._ddp_params_and_buffers_to_ignore = [  # DDP: trained inside the reward, outside the PPO loss
            f"classifier.{n}" for n, _ in [*classifier.named_parameters(), *classifier.named_buffers()]]
        self.classifier_start = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
        self.policy, self.tokenizer = build_policy(policy)
        if not issubclass(adapter_class_for(self.policy), CausalLMAdapter):
            raise ValueError(f"policy: the generator must be a text-only causal LM, "
                             f"received model_type {self.policy.config.model_type!r}")
        self.reference = None if uses_adapters(self.policy) else frozen_copy(self.policy)
        self.adapter = ResponsePrefixAdapter(self.tokenizer, self.policy.config, self.template.response_prefix,
                                             system_prompt=system_prompt, processor=processor)
        self.eos_ids = eos_token_ids(self.policy, self.tokenizer)
        self.value_head = ValueHead(self.policy.config.hidden_size)
        self.reward_normalizer = None  # set by RewardNormalizationCallback.setup
        self.reward_fn: ClassifierReward | None = None
        self.last_samples: list[dict[str, Any]] = []

    # ----- golden data, prompts and the reward (built once the datamodule is known) -----
    def setup(self, stage: str) -> None:
        if self.reward_fn is not None:
            return
        data = getattr(self.trainer, "datamodule", None)
        if getattr(data, "train_set", None) is None or getattr(data, "val_set", None) is None:
            raise ValueError("datamodule: GeneratorPPOModule needs a datamodule with golden `train_set` / `val_set` "
                             "(e.g. prismrl.datamodules.golden_text.GoldenTextDataModule)")
        self.bind_golden(data.train_set, data.val_set)

    def bind_golden(self, train_set, val_set) -> None:
        """Build the ICL sampler over ``train_set`` and the classifier reward evaluated on ``val_set``."""
        hp = self.hparams
        if train_set.num_classes != getattr(self.classifier, "num_classes", train_set.num_classes):
            raise ValueError(f"classifier.num_classes: expected {train_set.num_classes} (golden classes "
                             f"{train_set.label_names}), received {self.classifier.num_classes}")
        self.golden_train, self.label_names = train_set, list(train_set.label_names)
        self.reward_fn = ClassifierReward(
            self.classifier, val_set.texts, val_set.labels, self.reward_weights, hp.classifier_steps, hp.classifier_lr,
            hp.classifier_batch_size, hp.distance_metric, hp.failure_reward, initial_state=self.classifier_start,
            training=hp.get("classifier_training"),
        )
        embeddings = None
        if parse_strategy(hp.icl_strategy) is ICLStrategy.DIVERSE:
            self.reward_fn.reset()
            embeddings = self.reward_fn.embed_texts(train_set.texts)
        self.icl = ICLSampler(train_set.labels, hp.icl_examples, hp.icl_strategy, embeddings, train_set.num_classes, hp.seed)

    def render_request(self, label: int, request_id: int) -> str:
        """The user message asking for class ``label`` with the in-context examples of draw ``request_id``."""
        picks = self.icl.sample(request_id)
        examples = [(self.golden_train.texts[i], self.label_names[self.golden_train.labels[i]]) for i in picks]
        return self.template.render(self.label_names[label], examples)

    @torch.no_grad()
    def generate_examples(self, labels: list[int], request_ids: list[int], greedy: bool = False, baseline: bool = False):
        """Sample one generation per request; returns (prompt batch, completion ids, ParseReport).

        ``baseline=True`` generates with the reference model (the generator before PPO), through HF generate."""
        prompts = self.adapter.build_prompts([self.render_request(y, r) for y, r in zip(labels, request_ids)])
        prompts = prompts.to(self.device)
        with gathered(self.policy, self.reference):  # FSDP2: weights gathered once for the rollout, not per token
            if baseline:
                with reference_of(self.policy, self.reference) as model:
                    completions = HFRolloutEngine(model, self.adapter, self.eos_ids).generate(prompts, self.sampling,
                                                                                             greedy)
            else:
                completions = self.rollout_engine.generate(prompts, self.sampling, greedy)
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return prompts, completions, parse_batch(texts, labels, self.label_names)

    # ----- one PPO iteration -----
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        hp = self.hparams
        start = time.perf_counter()
        labels = batch["label"].tolist()
        self.rollout_engine.take_logprobs()  # drop any left from an interrupted step
        prompts, completions, report = self.generate_examples(labels, batch["request_id"].tolist())
        engine_logprobs = self.rollout_engine.take_logprobs()  # the engine's own, per sampled row (vllm)
        with seeded(derive_seed(run_seed(), self.global_step, "classifier"), self.device):  # the same on every rank
            result = global_classifier_reward(self.reward_fn, [item.text for item in report.items], labels,
                                              report.valid, self.reward_normalizer)
        rollout = self.adapter.append_completions(prompts.to("cpu"), completions).to(self.device)
        mask = rollout.loss_mask[:, 1:].float()  # [B, T-1] completion tokens
        with torch.no_grad():
            old_logprobs, old_values = self._forward(self.policy, self.value_head, rollout)
            with reference_of(self.policy, self.reference) as reference:
                ref_logprobs = self._forward(reference, None, rollout)[0]
            kl = kl_penalty(old_logprobs, ref_logprobs, self.kl_estimator)  # [B, T-1]
            rewards = sequence_end_rewards(result.rewards.to(self.device, old_values.dtype), kl, mask, hp.kl_coef)
            advantages, returns = gae(rewards, old_values, mask, hp.gamma, hp.lam)  # [B, T-1]
            if hp.whiten_advantages:
                advantages = whiten_global(advantages, mask)
            check_finite("the rewards", rewards, self.global_step)
            check_finite("the advantages", advantages, self.global_step)
            engine_stats = {}
            if engine_logprobs is not None:  # the sampling engine's own log-probs: log the gap, optionally reweight
                engine_rows = completion_values(engine_logprobs, rollout.loss_mask).to(old_logprobs.dtype)
                engine_stats = logprob_mismatch(old_logprobs, engine_rows, mask)
                if hp.truncated_is_cap is not None:
                    weights = truncated_importance_weights(old_logprobs, engine_rows, hp.truncated_is_cap)  # [B, T-1]
                    advantages = advantages * weights  # = weighting each token's clipped policy loss (w > 0)
                    engine_stats["tis_weight_mean"] = masked_mean(weights, mask)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        self.policy.train()
        stats: list[dict[str, Tensor]] = []
        for _ in range(hp.ppo_epochs):
            for rows in minibatches(rollout.batch_size, hp.minibatch_size):
                rows = rows.to(self.device)
                sub = rollout.select(rows)
                logprobs, values = self._forward(self.policy, self.value_head, sub)
                loss, step_stats = ppo_loss(logprobs, values, old_logprobs[rows], old_values[rows], advantages[rows],
                                            returns[rows], mask[rows], hp.clip_range, hp.value_clip_range, hp.value_coef)
                self.manual_optimizer_step(loss * token_share(mask[rows]), optimizer)  # global token mean
                scheduler.step()
                stats.append({"loss": loss.detach(), **step_stats, **engine_stats})
        self.rollout_engine.sync_weights(self.policy)
        self._log_iteration(report, result, masked_mean(kl, mask), mask, stats, time.perf_counter() - start)
        self.last_samples = [{"label": self.label_names[y], "status": item.status.value, "text": item.text,
                              "reward": float(r)} for y, item, r in zip(labels, report.items, result.rewards)]
        return stats[-1]["loss"]

    def _forward(self, model: nn.Module, value_head: ValueHead | None, batch) -> tuple[Tensor, Tensor | None]:
        """Completion log-probs [B, T-1] (and values) of a prompt + completion batch."""
        return policy_logprobs_and_values(model, value_head, batch.model_inputs(), batch.loss_mask,
                                          self.sampling.temperature, self.hparams.logprob_chunk_size)

    def _log_iteration(self, report: ParseReport, result: RewardResult, kl: Tensor, mask: Tensor,
                       stats: list[dict[str, Tensor]], seconds: float) -> None:
        batch_size = len(report.items)
        logged = {
            "train/reward": result.rewards.mean(), "train/kl": kl, "train/parse_failure_rate": report.failure_rate,
            "train/golden_accuracy": result.golden_accuracy, "train/golden_loss": result.golden_loss,
            "train/silhouette": result.silhouette, "train/completion_length": mask.sum(1).mean(),
            "train/iteration_seconds": seconds,
        }
        logged.update({f"train/parse/{status}": n / batch_size for status, n in report.counts.items()})
        logged.update({f"train/reward_raw/{k}": v for k, v in result.raw.items()})
        logged.update({f"train/reward_norm/{k}": v for k, v in result.normalized.items()})
        for key in stats[0]:
            logged[f"train/{key}"] = torch.stack([s[key].float() for s in stats]).mean()
        finite = {k: torch.as_tensor(v, dtype=torch.float32, device=self.device) for k, v in logged.items()}
        finite = {k: v for k, v in finite.items() if torch.isfinite(v)}  # e.g. silhouette of a one-class batch
        self.log_dict(finite, on_step=True, on_epoch=False, batch_size=batch_size, sync_dist=True)  # rank means
        self.log("golden/accuracy", result.golden_accuracy, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch_size)
        self.log("reward/mean", result.rewards.mean().to(self.device), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=True)

    # ----- Lightning plumbing -----
    def rebuilt_frozen_children(self) -> tuple[str, ...]:
        return ("policy", "reference", "classifier")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        frozen = {k.removeprefix("classifier.") for k in frozen_pretrained_names(self, ("classifier",))}
        checkpoint["prismrl_generator_ppo"] = {
            "classifier_start": {k: v for k, v in self.classifier_start.items() if k not in frozen}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the classifier's starting weights (a fresh module would draw a new random head); its frozen
        pretrained encoder starts as built."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("prismrl_generator_ppo")
        if saved is not None:
            self.classifier_start = {**self.classifier_start, **saved["classifier_start"]}
            if self.reward_fn is not None:
                self.reward_fn.initial_state = {k: v.detach().clone() for k, v in self.classifier_start.items()}

    def on_fit_start(self) -> None:
        if self.reward_normalizer is None:
            raise ValueError("trainer.callbacks: GeneratorPPOModule needs a "
                             "prismrl.callbacks.reward_normalization.RewardNormalizationCallback (it owns the "
                             "reward normalizer and checkpoints it)")

    def on_train_start(self) -> None:
        super().on_train_start()
        self.rollout_engine.sync_weights(self.policy)  # the weights a resumed run restored

    def configure_optimizers(self):
        if not any(p.requires_grad for p in self.policy.parameters()):
            raise ValueError("policy: has no trainable parameter (LoRA settings or freezing left nothing to train)")
        settings = self.optimizer_settings
        config = adamw_with_schedule(
            settings, [(self.policy.named_parameters(), settings.lr), (self.value_head.named_parameters(), self.hparams.value_lr)],
            self.manual_optimizer_steps(self.hparams.ppo_epochs, self.hparams.minibatch_size), owner="policy",
        )
        return [config["optimizer"]], [config["lr_scheduler"]["scheduler"]]  # stepped by hand (manual optimization)
