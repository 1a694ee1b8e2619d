"""Classifier-in-the-loop reward for a generator of labelled synthetic examples (GenAlign).

For one rollout batch of B generations with requested class ids y_i and parse results:

1. the classifier is reset to its starting weights and trained for ``train_steps`` AdamW steps on the
   parseable examples (cross-entropy; minibatches of ``batch_size`` drawn with the global torch RNG, or the
   whole batch in a fixed order, so the same examples always give the same classifier);
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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prismrl.choices import check_positive_int, checkpoint_safe
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
    weights at construction)."""

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

    def fit(self, texts: list[str], labels: Tensor) -> None:
        """Reset, then ``train_steps`` AdamW steps of cross-entropy on (texts, labels)."""
        self.reset()
        if not texts or self.train_steps == 0:
            return
        params = [p for p in self.classifier.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr)
        features = self.embed_texts(texts) if self._frozen else None  # frozen encoder: embed once
        labels = labels.to(self.golden_labels.device)
        self.classifier.train()
        size = min(self.batch_size or len(texts), len(texts))
        for _ in range(self.train_steps):
            rows = torch.arange(size) if size == len(texts) else torch.randperm(len(texts))[:size]  # full batch: fixed order
            if features is not None:
                logits = self.classifier.head(features[rows])
            else:
                logits = self.classifier.head(self.classifier.embed([texts[i] for i in rows.tolist()]))
            loss = F.cross_entropy(logits.float(), labels[rows].to(logits.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.classifier.eval()

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
