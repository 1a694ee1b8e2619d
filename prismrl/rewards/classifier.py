"""Classifier-in-the-loop reward for a generator of labelled synthetic examples (GenAlign).

For one rollout batch of B generations with requested class ids y_i and parse results:

1. the classifier is reset to its starting weights and trained for ``train_steps`` AdamW steps on the
   parseable examples (cross-entropy; minibatches of ``batch_size`` drawn with the global torch RNG, or the
   whole batch in a fixed order, so the same examples always give the same classifier); or, with
   ``ClassifierTraining(mode="early_stopping")``, on all but a seeded stratified held-out slice of them, evaluated
   on that slice (cross-entropy) after every step, stopped after ``patience`` steps without improvement and
   rolled back to its best weights (the reset weights count as step 0);
2. it is evaluated on the golden set: golden loss (mean cross-entropy) and golden accuracy;
3. the parseable examples are embedded with the trained classifier's encoder; per sample,
   inter_i / intra_i are its mean distances to the other-class / same-class synthetic examples
   (``prismrl.evaluation.synthetic_quality``), plus the silhouette score of the batch (logged only);
4. every component goes through the normalizer n_c (min-max over a history window, clipped):

       r_i = w1 * n_inter(inter_i) - w2 * n_intra(intra_i) - w3 * n_loss(golden_loss)     (parseable i)
       r_i = failure_reward                                                              (otherwise)

Batch-level -> per-sample assignment: the golden loss is a property of the whole batch (one classifier is
trained on all of it), so every parseable sample gets the same golden-loss term. The distance terms are
batch-level means of per-sample quantities, so each sample gets its own inter_i / intra_i: its own
contribution to class separation and cohesion. That keeps the batch-level objective (the mean over samples
is w1 * inter - w2 * intra - w3 * golden_loss before normalization) while giving PPO a per-sample signal
instead of one number shared by every sample. A per-sample undefined distance (e.g. the only example of its
class has no intra partner) gets the neutral normalized value 0.5. Unparseable, empty and off-class
generations are penalized with ``failure_reward`` instead of being dropped (default -(w2 + w3), the lowest
reward a parseable sample can get). A batch with nothing parseable still gets a defined result: all
rewards = ``failure_reward``, golden metrics of the untrained (reset) classifier, a warning, and the
normalizer is left untouched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prismrl.choices import check_positive_int, checkpoint_safe, parse_choice
from prismrl.evaluation.synthetic_quality import class_distances, parse_metric
from prismrl.rewards.normalizer import RewardNormalizer

log = logging.getLogger(__name__)
COMPONENTS = ("inter", "intra", "golden_loss")


@checkpoint_safe
@dataclass(frozen=True)
class RewardWeights:
    """w1 (inter), w2 (intra), w3 (golden_loss): finite, >= 0, not all zero."""

    inter: float = 1.0
    intra: float = 1.0
    golden_loss: float = 1.0

    def __post_init__(self) -> None:
        values = {"inter": self.inter, "intra": self.intra, "golden_loss": self.golden_loss}
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"reward_weights.{name}: expected a finite float >= 0, received {value!r}")
        if not any(values.values()):
            raise ValueError(f"reward_weights: expected at least one non-zero weight, received {values}")


class ClassifierTrainingMode(str, Enum):
    STEPS = "steps"
    EARLY_STOPPING = "early_stopping"


@checkpoint_safe
@dataclass(frozen=True)
class ClassifierTraining:
    """How the classifier in the loop is trained on each batch of generations.

    mode: "steps" (the default: ``train_steps`` steps on every example) or "early_stopping" (at most
        ``max_steps`` steps on all but a held-out slice, stopped after ``patience`` steps without a lower held-out
        loss, best weights kept).
    patience: early stopping: steps without improvement before stopping.
    holdout_fraction: early stopping: share of each class held out (at least one example of a class with two or
        more; a batch of fewer than two examples trains ``max_steps`` steps on everything).
    max_steps: early stopping: the step budget (None = the reward's ``train_steps``).
    min_delta: early stopping: the held-out loss must drop by more than this to count as an improvement.
    seed: early stopping: seed of the held-out draw (the same examples always give the same split).
    """

    mode: str = "steps"
    patience: int = 2
    holdout_fraction: float = 0.2
    max_steps: int | None = None
    min_delta: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        parse_choice(ClassifierTrainingMode, self.mode, "classifier_training.mode")
        check_positive_int("classifier_training.patience", self.patience)
        if self.max_steps is not None:
            check_positive_int("classifier_training.max_steps", self.max_steps)
        fraction = self.holdout_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
            raise ValueError(f"classifier_training.holdout_fraction: expected a float in (0, 1), received {fraction!r}")
        delta = self.min_delta
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) or delta < 0:
            raise ValueError(f"classifier_training.min_delta: expected a finite float >= 0, received {delta!r}")

    @property
    def early_stopping(self) -> bool:
        mode = parse_choice(ClassifierTrainingMode, self.mode, "classifier_training.mode")
        return mode is ClassifierTrainingMode.EARLY_STOPPING


@dataclass(frozen=True)
class FitSummary:
    """What the last ``fit`` did: ``steps`` taken of a ``budget``, the step whose weights were kept (early stopping:
    the best; 0 = the reset weights) and the held-out losses after steps 0, 1, 2, ... (empty without a held-out
    slice)."""

    steps: int
    budget: int
    kept_step: int
    holdout_losses: tuple[float, ...] = ()
    num_train: int = 0
    num_holdout: int = 0

    @property
    def stopped_early(self) -> bool:
        return self.steps < self.budget


def stratified_holdout(labels: Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows): per class with n >= 2 examples, max(1, round(n * fraction)) of them (at most
    n - 1) drawn with ``torch.Generator().manual_seed(seed)``; classes with one example stay in train."""
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    held: list[int] = []
    labels = labels.cpu()
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        n_held = 0 if len(members) < 2 else min(len(members) - 1, max(1, round(len(members) * fraction)))
        held += members[:n_held]
        train += members[n_held:]
    return sorted(train), sorted(held)


@dataclass(frozen=True)
class RewardResult:
    rewards: Tensor  # [B] per generation
    raw: dict[str, float]  # batch-level inter, intra, golden_loss (NaN where undefined)
    normalized: dict[str, float]  # mean normalized value per component over the parseable samples
    golden_accuracy: float
    golden_loss: float
    silhouette: float
    num_valid: int


class ClassifierReward:
    """See the module docstring. ``classifier`` has ``embed(list[str]) -> [N, H]`` and ``head: [N, H] -> [N, C]``
    (``prismrl.backbones.text_classifier.TextClassifier``); the starting weights are ``initial_state`` (default: its
    weights at construction); ``training`` chooses k steps (default) or early stopping (``ClassifierTraining``)."""

    def __init__(
        self,
        classifier: nn.Module,
        golden_texts: Sequence[str],
        golden_labels: Sequence[int],
        weights: RewardWeights = RewardWeights(),
        train_steps: int = 10,
        lr: float = 1e-3,
        batch_size: int | None = None,
        metric: str = "cosine",
        failure_reward: float | None = None,
        eval_batch_size: int = 64,
        initial_state: dict[str, Tensor] | None = None,
        training: ClassifierTraining | dict | None = None,
    ) -> None:
        if not isinstance(weights, RewardWeights):
            raise TypeError(f"weights: expected RewardWeights, received {type(weights).__name__}")
        check_positive_int("train_steps", train_steps, minimum=0)
        if len(golden_texts) == 0 or len(golden_texts) != len(golden_labels):
            raise ValueError(f"golden_labels: expected one label per golden text (> 0), received "
                             f"{len(golden_labels)} labels for {len(golden_texts)} texts")
        self.classifier, self.weights, self.metric = classifier, weights, parse_metric(metric)
        self.golden_texts, self.golden_labels = list(golden_texts), torch.as_tensor(list(golden_labels)).long()
        self.train_steps, self.lr, self.batch_size = train_steps, lr, batch_size
        if failure_reward is None:
            failure_reward = -(weights.intra + weights.golden_loss)
        self.failure_reward, self.eval_batch_size = float(failure_reward), eval_batch_size
        start = classifier.state_dict() if initial_state is None else initial_state
        self.initial_state = {k: v.detach().clone() for k, v in start.items()}
        self._golden_features: Tensor | None = None
        if isinstance(training, dict):  # as hyperparameters record it
            training = ClassifierTraining(**training)
        if training is not None and not isinstance(training, ClassifierTraining):
            raise TypeError(f"training: expected ClassifierTraining or a dict of its fields, received {type(training).__name__}")
        self.training_settings = training if training is not None else ClassifierTraining()
        self.last_fit: FitSummary | None = None

    @property
    def _frozen(self) -> bool:
        return bool(getattr(self.classifier, "encoder_frozen", False))

    def reset(self) -> None:
        """Load the starting weights back into the classifier."""
        self.classifier.load_state_dict(self.initial_state)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> Tensor:
        """Features [N, H] of ``texts`` from the classifier in eval mode (batches of ``eval_batch_size``)."""
        was_training = self.classifier.training
        self.classifier.eval()
        out = torch.cat([self.classifier.embed(texts[i:i + self.eval_batch_size])
                         for i in range(0, len(texts), self.eval_batch_size)])  # [N, H]
        self.classifier.train(was_training)
        return out

    def fit(self, texts: list[str], labels: Tensor) -> FitSummary:
        """Reset, then train on (texts, labels): ``train_steps`` AdamW steps of cross-entropy, or early stopping on
        a held-out slice (``training``); the summary is also kept as ``last_fit``."""
        self.reset()
        labels = torch.as_tensor(labels).long().to(self.golden_labels.device)
        training = self.training_settings
        budget = (training.max_steps or self.train_steps) if training.early_stopping else self.train_steps
        if not texts or budget == 0:
            self.last_fit = FitSummary(0, budget, 0, num_train=len(texts))
            return self.last_fit
        features = self.embed_texts(texts) if self._frozen else None  # frozen encoder: embed once
        rows = list(range(len(texts)))
        held: list[int] = []
        if training.early_stopping:
            rows, held = stratified_holdout(labels, training.holdout_fraction, training.seed)
        params = [p for p in self.classifier.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr)
        size = min(self.batch_size or len(rows), len(rows))
        losses: list[float] = []
        best_loss, best_step, best_state, since_best, steps = math.inf, 0, None, 0, 0
        if held:
            best_loss, best_state = self._holdout_loss(texts, labels, features, held), self._trainable_state()
            losses.append(best_loss)
        for step in range(1, budget + 1):
            self.classifier.train()
            # the full batch in a fixed order, else a random minibatch
            pick = torch.arange(size) if size == len(rows) else torch.randperm(len(rows))[:size]
            batch = [rows[i] for i in pick.tolist()]
            if features is not None:
                logits = self.classifier.head(features[batch])
            else:
                logits = self.classifier.head(self.classifier.embed([texts[i] for i in batch]))
            loss = F.cross_entropy(logits.float(), labels[batch].to(logits.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps = step
            if not held:
                continue
            losses.append(self._holdout_loss(texts, labels, features, held))
            if losses[-1] < best_loss - training.min_delta:
                best_loss, best_step, best_state, since_best = losses[-1], step, self._trainable_state(), 0
            else:
                since_best += 1
                if since_best >= training.patience:
                    break
        if best_state is not None:
            self.classifier.load_state_dict(best_state, strict=False)
        self.classifier.eval()
        self.last_fit = FitSummary(steps, budget, best_step if held else steps, tuple(losses), len(rows), len(held))
        return self.last_fit

    def _trainable_state(self) -> dict[str, Tensor]:
        """Copies of the trainable parameters and all buffers (a frozen encoder's weights never change)."""
        names = {n for n, p in self.classifier.named_parameters() if p.requires_grad}
        names |= {n for n, _ in self.classifier.named_buffers()}
        return {k: v.detach().clone() for k, v in self.classifier.state_dict().items() if k in names}

    @torch.no_grad()
    def _holdout_loss(self, texts: list[str], labels: Tensor, features: Tensor | None, held: list[int]) -> float:
        self.classifier.eval()
        if features is not None:
            logits = self.classifier.head(features[held])
        else:
            step = self.eval_batch_size
            logits = torch.cat([self.classifier.head(self.classifier.embed([texts[i] for i in held[j:j + step]]))
                                for j in range(0, len(held), step)])
        return float(F.cross_entropy(logits.float(), labels[held].to(logits.device)))

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(golden loss, golden accuracy) of the classifier as it is now."""
        if self._frozen and self._golden_features is None:
            self._golden_features = self.embed_texts(self.golden_texts)
        features = self._golden_features if self._frozen else self.embed_texts(self.golden_texts)
        self.classifier.eval()
        logits = self.classifier.head(features).float()  # [G, C]
        labels = self.golden_labels.to(logits.device)
        return float(F.cross_entropy(logits, labels)), float((logits.argmax(-1) == labels).float().mean())

    def __call__(
        self, texts: Sequence[str], labels: Sequence[int] | Tensor, valid: Sequence[bool], normalizer: RewardNormalizer
    ) -> RewardResult:
        """Rewards [B] for B generations (parsed ``texts``, requested ``labels``, ``valid`` parse flags)."""
        if not len(texts) == len(labels) == len(valid):
            raise ValueError(f"texts / labels / valid: expected equal lengths, received {len(texts)} / {len(labels)} / {len(valid)}")
        missing = [c for c in COMPONENTS if c not in normalizer.components]
        if missing:
            raise ValueError(f"normalizer: expected the components {list(COMPONENTS)}, it lacks {missing}")
        labels = torch.as_tensor(labels).long().flatten()
        keep = torch.as_tensor(list(valid), dtype=torch.bool)
        rewards = torch.full((len(texts),), self.failure_reward)
        idx = keep.nonzero().flatten().tolist()
        if not idx:
            log.warning("ClassifierReward: no parseable generation in a batch of %d; every reward = %s",
                        len(texts), self.failure_reward)
            self.reset()
            loss, acc = self.evaluate()
            nan = float("nan")
            return RewardResult(rewards, {"inter": nan, "intra": nan, "golden_loss": loss}, {}, acc, loss, nan, 0)
        kept_texts, kept_labels = [texts[i] for i in idx], labels[idx]
        self.fit(kept_texts, kept_labels)
        loss, acc = self.evaluate()
        dist = class_distances(self.embed_texts(kept_texts), kept_labels, self.metric)
        per_sample = {"inter": dist.inter_per_sample, "intra": dist.intra_per_sample,
                      "golden_loss": torch.full((len(idx),), loss, dtype=torch.float64)}
        normalized = {}
        for name, values in per_sample.items():
            values = values.cpu()
            normalizer.update(name, values)
            scaled = normalizer.normalize(name, values)
            normalized[name] = torch.where(torch.isnan(values), torch.full_like(scaled, 0.5), scaled)
        w = self.weights
        kept = w.inter * normalized["inter"] - w.intra * normalized["intra"] - w.golden_loss * normalized["golden_loss"]
        rewards[idx] = kept.to(rewards.dtype)
        return RewardResult(rewards, {"inter": dist.inter, "intra": dist.intra, "golden_loss": loss},
                            {k: float(v.mean()) for k, v in normalized.items()}, acc, loss, dist.silhouette, len(idx))
