"""Early stopping in the shipped configs checks after validation only, so a short run (``--trainer.max_steps 2``,
ending before the first validation) finishes instead of failing on a metric no validation has logged yet."""

from __future__ import annotations

import pytest
import yaml

from prismrl.cli import build_cli

EARLY_STOPPING = "lightning.pytorch.callbacks.EarlyStopping"


def _early_stopping_entries(repo_root):
    for path in sorted((repo_root / "configs").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        for callback in (config.get("trainer") or {}).get("callbacks") or []:
            if isinstance(callback, dict) and callback.get("class_path") == EARLY_STOPPING:
                yield path.relative_to(repo_root), callback.get("init_args") or {}


def test_every_configured_early_stopping_checks_at_validation_end(repo_root):
    entries = list(_early_stopping_entries(repo_root))
    assert entries, "no config uses EarlyStopping: this test checks nothing"
    for path, init_args in entries:
        assert init_args.get("check_on_train_epoch_end") is False, f"{path}: set check_on_train_epoch_end: false"


@pytest.mark.parametrize("at_epoch_end", [False, True])
def test_a_run_stopped_before_its_first_validation_finishes_only_when_checking_at_validation_end(
        repo_root, tmp_path, monkeypatch, at_epoch_end):
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "early_stopping.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [{"class_path": EARLY_STOPPING, "init_args": {
        "monitor": "val/mean_recall@1", "mode": "max", "patience": 3, "check_on_train_epoch_end": at_epoch_end}}]}}))
    args = ["fit", "--config", str(repo_root / "configs/alignment/tiny.yaml"), "--config", str(overlay),
            "--trainer.max_steps", "2", "--trainer.enable_model_summary", "false"]
    if at_epoch_end:
        with pytest.raises(RuntimeError, match="val/mean_recall@1"):
            build_cli(args)
    else:
        build_cli(args)
        assert list((tmp_path / "runs/alignment/tiny").rglob("metrics.csv"))
