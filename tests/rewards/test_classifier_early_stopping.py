"""The in-loop classifier's early stopping on a held-out slice: it stops after `patience` steps without a lower
held-out loss and keeps its best weights; "k steps" stays the default. Hand-built data and classifiers whose
held-out loss curve is known in advance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prismrl.rewards.classifier import ClassifierReward, ClassifierTraining, stratified_holdout


class QuadraticHead(nn.Module):
    """logits = [-(theta - c)^2, 0] for a feature c: class 0 is most likely at theta = c."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [N, 1] -> [N, 2]
        first = -(self.theta - features[:, 0]) ** 2
        return torch.stack([first, torch.zeros_like(first)], -1)


class LookupClassifier(nn.Module):
    """A frozen 'encoder' that looks each text's features up in a table, and a trainable head."""

    encoder_frozen = True

    def __init__(self, table: dict[str, list[float]], head: nn.Module) -> None:
        super().__init__()
        self.table, self.head = table, head

    def embed(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([self.table[t] for t in texts], dtype=torch.float32)


def _quadratic_setup(train_c: float, held_c: float, training: ClassifierTraining, steps: int = 40, lr: float = 0.25):
    """10 class-0 examples: the held-out ones (drawn as fit will draw them) sit at held_c, the others at train_c."""
    labels = torch.zeros(10, dtype=torch.long)
    _, held = stratified_holdout(labels, training.holdout_fraction, training.seed)
    texts = [f"t{i}" for i in range(10)]
    table = {t: [held_c if i in held else train_c] for i, t in enumerate(texts)}
    classifier = LookupClassifier(table, QuadraticHead())
    reward = ClassifierReward(classifier, texts[:2], [0, 0], train_steps=steps, lr=lr, training=training)
    return reward, texts, labels, held


def _holdout_loss(classifier, texts, labels, held):
    with torch.no_grad():
        logits = classifier.head(classifier.embed([texts[i] for i in held]))
    return float(F.cross_entropy(logits, labels[held]))


def test_stops_after_patience_and_restores_the_best_weights():
    # train pulls theta from 0 towards 3, the held-out examples want theta = 1: the held-out loss falls, then rises
    training = ClassifierTraining(mode="early_stopping", patience=2, holdout_fraction=0.2, seed=0)
    reward, texts, labels, held = _quadratic_setup(3.0, 1.0, training)
    summary = reward.fit(texts, labels)
    losses = list(summary.holdout_losses)
    best = min(range(len(losses)), key=losses.__getitem__)
    assert (summary.num_train, summary.num_holdout) == (8, 2)
    assert 0 < best < summary.steps < summary.budget == 40 and summary.stopped_early
    assert summary.kept_step == best and summary.steps == best + training.patience
    assert all(losses[i + 1] < losses[i] for i in range(best))  # improving until the best step ...
    assert all(loss >= losses[best] for loss in losses[best + 1:])  # ... then `patience` steps without improvement
    theta = float(reward.classifier.head.theta)
    assert 0.5 < theta < 1.5  # the best weights (near the held-out optimum), not the last ones (further towards 3)
    assert _holdout_loss(reward.classifier, texts, labels, held) == pytest.approx(losses[best], abs=1e-6)
    assert reward.last_fit == summary


def test_no_improvement_keeps_the_reset_weights_and_steady_improvement_runs_the_budget():
    training = ClassifierTraining(mode="early_stopping", patience=3, holdout_fraction=0.2, max_steps=6)
    worse, texts, labels, held = _quadratic_setup(-3.0, 1.0, training)  # train pulls theta away from the held-out 1
    summary = worse.fit(texts, labels)
    assert summary.kept_step == 0 and summary.steps == 3 and float(worse.classifier.head.theta) == 0.0
    better, texts, labels, _ = _quadratic_setup(5.0, 5.0, training)  # train and held-out agree: never stops early
    summary = better.fit(texts, labels)
    assert summary.steps == summary.kept_step == 6 and not summary.stopped_early
    assert all(b < a for a, b in zip(summary.holdout_losses, summary.holdout_losses[1:]))


def test_k_steps_stays_the_default():
    reward, texts, labels, _ = _quadratic_setup(3.0, 1.0, ClassifierTraining(), steps=5)
    summary = reward.fit(texts, labels)
    assert reward.training_settings.mode == "steps"
    assert (summary.steps, summary.kept_step, summary.holdout_losses, summary.num_train) == (5, 5, (), 10)
    default = ClassifierReward(reward.classifier, texts[:2], [0, 0], train_steps=5, lr=0.25)
    assert default.training_settings == ClassifierTraining()


def test_stratified_holdout_and_bad_settings():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2])
    train, held = stratified_holdout(labels, 0.2, seed=1)
    assert sorted(train + held) == list(range(9)) and not set(train) & set(held)
    assert [int((labels[held] == c).sum()) for c in range(3)] == [1, 1, 0]  # class 2 (one example) stays in train
    assert stratified_holdout(labels, 0.2, seed=1) == (train, held)
    with pytest.raises(ValueError, match="classifier_training.mode: expected one of \\['steps', 'early_stopping'\\], received 'early'"):
        ClassifierTraining(mode="early")
    with pytest.raises(ValueError, match="classifier_training.holdout_fraction: expected a float in \\(0, 1\\), received 1.0"):
        ClassifierTraining(holdout_fraction=1.0)
    with pytest.raises(ValueError, match="classifier_training.patience: expected an int >= 1, received 0"):
        ClassifierTraining(patience=0)


def test_configured_on_the_stage_and_safe_in_checkpoints(repo_root, tmp_path):
    import io

    from prismrl.cli import build_cli
    from prismrl.datamodules.golden_text import GoldenTextDataModule

    buffer = io.BytesIO()
    torch.save({"classifier_training": ClassifierTraining(mode="early_stopping", patience=3)}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["classifier_training"].patience == 3
    cli = build_cli(["--config", str(repo_root / "configs/generator_ppo/tiny.yaml"), "--model.init_args.classifier_training",
                     "{mode: early_stopping, patience: 2, holdout_fraction: 0.25}"], run=False)
    data = cli.datamodule
    assert isinstance(data, GoldenTextDataModule)
    data.setup("fit")
    cli.model.bind_golden(data.train_set, data.val_set)
    settings = cli.model.reward_fn.training_settings
    assert (settings.mode, settings.patience, settings.holdout_fraction) == ("early_stopping", 2, 0.25)
    labels = torch.tensor(data.train_set.labels[:20])
    summary = cli.model.reward_fn.fit(data.train_set.texts[:20], labels)
    held = stratified_holdout(labels, 0.25, 0)[1]
    assert (summary.num_train, summary.num_holdout) == (20 - len(held), len(held)) and len(held) >= 5
    assert summary.budget == cli.model.hparams.classifier_steps == 3 and len(summary.holdout_losses) == summary.steps + 1
