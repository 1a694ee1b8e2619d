"""The baseline-vs-trained generator report on a tiny run's checkpoint: files, rows, and that 'baseline' is the
generator before PPO."""

from __future__ import annotations

import csv
import os

import pytest
import torch

from prismrl.apps.generator_report import load_stage, main, sample_generator
from prismrl.cli import build_cli

TINY = "configs/generator_ppo/tiny.yaml"


def test_report_files_and_rows(tiny_checkpoint, capsys):
    workdir, checkpoint = tiny_checkpoint
    out = workdir / "report"
    main(["--checkpoint", str(checkpoint), "--num-samples", "4", "--batch-size", "4", "--seeds", "0", "1", "--out", str(out)])
    assert "report written" in capsys.readouterr().out
    with open(out / "metrics.csv") as handle:
        rows = {(row["source"], row["seed"]): row for row in csv.DictReader(handle)}
    sources = ("baseline", "trained", "golden")
    assert set(rows) == {(s, k) for s in sources for k in ("0", "1", "mean", "std")}
    for (source, seed), row in rows.items():
        if seed in ("0", "1"):
            assert 0.0 <= float(row["golden_accuracy"]) <= 1.0 and float(row["golden_loss"]) > 0
    for source in sources:
        per_seed = [float(rows[source, k]["golden_loss"]) for k in ("0", "1")]
        assert float(rows[source, "mean"]["golden_loss"]) == pytest.approx(sum(per_seed) / 2, abs=1e-4)
        assert float(rows[source, "std"]["golden_loss"]) == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2, abs=1e-4)
    assert int(rows["golden", "0"]["num_valid"]) == 4 and float(rows["golden", "0"]["parse_failure_rate"]) == 0.0
    golden = rows["golden", "0"]  # 4 real examples, classes alternating: even, no repeats
    assert float(golden["class_balance"]) == 1.0 and float(golden["duplicate_rate"]) == 0.0
    assert float(golden["length_words_mean"]) > 3 and float(golden["length_chars_mean"]) > float(golden["length_words_mean"])
    expected = (float(golden["golden_accuracy"]) + (1 + float(golden["silhouette"])) / 2 + 1 + 1 + 1) / 5
    assert float(golden["quality_score"]) == pytest.approx(expected, abs=1e-3)
    for (source, seed), row in rows.items():
        assert 0.0 <= float(row["quality_score"]) <= 1.0
    report = (out / "report.md").read_text()
    assert "| baseline |" in report and "## Samples: trained" in report and "golden test split" in report
    assert "Class balance (parseable examples per class" in report and "| golden | 2 | 2 | 1.0000 |" in report
    assert "Text length (parseable examples, words)" in report and "quality_score" in report
    assert (out / "metrics.png").stat().st_size > 0 and (out / "embeddings.png").stat().st_size > 0


def test_baseline_is_the_generator_before_ppo(repo_root, tiny_checkpoint):
    workdir, checkpoint = tiny_checkpoint
    trained, data = load_stage(checkpoint)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        fresh = build_cli(["--config", str(repo_root / TINY)], run=False).model  # seed_everything: initial weights
    finally:
        os.chdir(cwd)
    fresh.bind_golden(data.train_set, data.val_set)
    again, _ = load_stage(checkpoint)  # the classifier's starting weights come from the checkpoint, not a new draw
    for key, value in fresh.classifier_start.items():
        assert torch.equal(trained.classifier_start[key], value) and torch.equal(again.reward_fn.initial_state[key], value)
    before = sample_generator(fresh, 4, 4, baseline=False, seed=3)
    assert sample_generator(trained, 4, 4, baseline=True, seed=3) == before
    assert sample_generator(trained, 4, 4, baseline=False, seed=3) != before


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint: expected a checkpoint file, received .*none.ckpt. \(no such file\)"):
        main(["--checkpoint", str(tmp_path / "none.ckpt")])


def test_data_statistics_of_a_source():
    from prismrl.apps.generator_report import data_statistics

    stats = data_statistics(["a good film", "A good film!", "bad", "plain copy"], [1, 1, 0, 1], 2, golden_texts=["plain copy"])
    assert stats["class_counts"] == [1, 3] and 0.0 < stats["class_balance"] < 1.0
    assert stats["duplicate_rate"] == 0.5  # a repeat of an earlier text and a copy of a golden one
    assert stats["length_words_mean"] == pytest.approx((3 + 3 + 1 + 2) / 4)
    assert stats["length_chars_mean"] == pytest.approx((11 + 12 + 3 + 10) / 4)
