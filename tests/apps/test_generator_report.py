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


@pytest.fixture(scope="module")
def tiny_checkpoint(repo_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        build_cli(["fit", "--config", str(repo_root / TINY), "--trainer.max_epochs", "1"])
    finally:
        os.chdir(cwd)
    return workdir, workdir / "runs/generator_ppo/tiny/version_0/checkpoints/last.ckpt"


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
    report = (out / "report.md").read_text()
    assert "| baseline |" in report and "## Samples: trained" in report and "golden test split" in report
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
