"""Generator PPO's reward and advantage statistics over 2 real gloo processes equal one process on the whole batch.

Rank 0 holds 4 generations, rank 1 holds 2 (uneven on purpose). Each rank trains the same classifier on the
gathered 6 (``global_classifier_reward``) and keeps its own rows; the rewards, the golden metrics and the
normalizer state must equal those of ``ClassifierReward`` on all 6 in one process. ``whiten_global`` must equal
``whiten`` of the concatenated batch, and the ``token_share``-scaled token means averaged over ranks must equal the
token mean of the whole batch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dist_workers import spawn_gloo

from prismrl.backbones.text import HFTextEncoder
from prismrl.backbones.text_classifier import TextClassifier
from prismrl.rewards.classifier import ClassifierReward, RewardWeights
from prismrl.rewards.distributed import (
    global_classifier_reward,
    token_share,
    whiten_global,
)
from prismrl.rewards.normalizer import RewardNormalizer
from prismrl.rl.advantages import masked_mean, whiten

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "vocab_size": 30522, "max_position_embeddings": 64}
TEXTS = ["a wonderful warm film", "dull and tedious mess", "great acting and a fine story", "boring , silly plot",
         "bright and funny", "an awful waste of time"]
LABELS = [1, 0, 1, 0, 1, 0]
VALID = [True, True, False, True, True, True]
GOLDEN = (["a fine film", "a dull film", "great fun", "a silly mess"], [1, 0, 1, 0])
ROWS = {0: slice(0, 4), 1: slice(4, 6)}


def _reward() -> ClassifierReward:
    torch.manual_seed(0)
    classifier = TextClassifier(HFTextEncoder(tiny_config=TINY_BERT, max_length=16), num_classes=2, dropout=0.1)
    return ClassifierReward(classifier, *GOLDEN, RewardWeights(), train_steps=3, lr=1e-2)


def _advantages() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g) * 3 + 1  # [B, T]
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()  # ranks hold different token counts
    return x, mask


def _one_process(history: int) -> tuple:
    reward, normalizer = _reward(), RewardNormalizer(window=4)
    results = []
    for step in range(history):  # two batches: the second one normalizes against the first one's history
        torch.manual_seed(100 + step)  # the caller seeds the classifier's RNG (the same on every rank)
        results.append(reward(TEXTS, LABELS, VALID, normalizer))
    return results, normalizer.state_dict()


def _worker(rank: int, out_dir: str) -> None:
    reward, normalizer = _reward(), RewardNormalizer(window=4)
    rows, results = ROWS[rank], []
    for step in range(2):
        torch.manual_seed(100 + step)
        results.append(global_classifier_reward(reward, TEXTS[rows], LABELS[rows], VALID[rows], normalizer))
    x, mask = _advantages()
    share = token_share(mask[rows])
    torch.save({"rewards": [r.rewards for r in results], "golden": [(r.golden_loss, r.golden_accuracy) for r in results],
                "num_valid": [r.num_valid for r in results], "normalizer": normalizer.state_dict(),
                "whitened": whiten_global(x[rows], mask[rows]), "shared_mean": share * masked_mean(x[rows], mask[rows])},
               Path(out_dir) / f"rank{rank}.pt")


def test_two_ranks_compute_the_rewards_and_statistics_of_the_whole_batch(tmp_path):
    spawn_gloo(_worker, tmp_path, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    expected, state = _one_process(2)
    for step, result in enumerate(expected):
        got = torch.cat([r["rewards"][step] for r in ranks])
        torch.testing.assert_close(got, result.rewards, rtol=0, atol=1e-6)
        assert ranks[0]["golden"][step] == ranks[1]["golden"][step]  # one classifier, the same on every rank
        assert ranks[0]["golden"][step] == pytest.approx((result.golden_loss, result.golden_accuracy), abs=1e-6)
        assert ranks[0]["num_valid"][step] == ranks[1]["num_valid"][step] == result.num_valid == 5
    assert ranks[0]["normalizer"] == ranks[1]["normalizer"]  # one history, the same on every rank
    assert ranks[0]["normalizer"]["history"].keys() == state["history"].keys()
    for name, entries in state["history"].items():  # the one-process history, up to thread-count rounding
        assert len(entries) == 2
        for a, b in zip(entries, ranks[0]["normalizer"]["history"][name]):
            assert a == pytest.approx(b, abs=1e-6)
    assert expected[0].rewards[:4].std() > 0  # per-sample rewards, not a constant
    x, mask = _advantages()
    torch.testing.assert_close(torch.cat([r["whitened"] for r in ranks]), whiten(x, mask))
    torch.testing.assert_close(sum(r["shared_mean"] for r in ranks) / 2, masked_mean(x, mask))
    split = torch.stack([masked_mean(x[s], mask[s]) for s in ROWS.values()]).mean()
    assert (split - masked_mean(x, mask)).abs() > 1e-3  # the plain mean of the ranks' token means would differ


def test_one_process_is_unchanged():
    x, mask = _advantages()
    torch.testing.assert_close(whiten_global(x, mask), whiten(x, mask))
    assert token_share(mask) == 1.0
    reward, normalizer = _reward(), RewardNormalizer(window=4)
    torch.manual_seed(100)
    got = global_classifier_reward(reward, TEXTS, LABELS, VALID, normalizer)
    torch.testing.assert_close(got.rewards, _one_process(1)[0][0].rewards, rtol=0, atol=0)
