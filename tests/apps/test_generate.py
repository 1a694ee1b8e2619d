"""prismrl-generate on a tiny generator PPO run: Parquet + CSV with the right columns, rows and labels, the same
files for the same seed, balanced totals, the baseline flag, clear errors, atomic writes; the quality helpers."""

from __future__ import annotations

import csv
import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from prismrl.apps.generate import (
    generate_dataset,
    interleaved_labels,
    label_counts,
    main,
    parse_balance,
)
from prismrl.apps.generator_report import load_stage
from prismrl.apps.synthetic_dataset import (
    COLUMNS,
    class_balance,
    duplicate_sources,
    quality_score,
    write_dataset,
)

TINY_GENERATOR = "configs/generator_ppo/tiny.yaml"


@pytest.fixture(scope="module")
def generated(tiny_checkpoint):
    workdir, checkpoint = tiny_checkpoint
    out = workdir / "generated"
    rows, stats, paths = generate_dataset(out, checkpoint, per_label=3, seed=5, batch_size=4)
    return checkpoint, out, rows, stats, paths


def test_parquet_and_csv_columns_rows_and_labels(generated):
    checkpoint, out, rows, stats, paths = generated
    module, data = load_stage(checkpoint)
    table = pq.read_table(paths["parquet"])
    assert table.column_names == list(COLUMNS) and table.num_rows == 6
    records = table.to_pylist()
    assert [r["label"] for r in records] == ["negative", "positive"] * 3  # requests alternate over the classes
    assert [r["label_id"] for r in records] == [0, 1] * 3
    for r in records:
        assert r["text"].strip() and r["length_chars"] == len(r["text"]) and r["length_words"] == len(r["text"].split())
        assert len(r["icl_ids"]) == module.hparams.icl_examples
        assert r["icl_ids"] == module.icl.sample(r["request_id"])  # the prompt's in-context examples, reproducible
        assert all(0 <= i < len(data.train_set) for i in r["icl_ids"])
        assert 0.0 <= r["confidence"] <= 1.0
        assert r["classifier_agrees"] == (r["confidence"] > 0.5)  # two classes: agrees iff the intended one wins
        assert r["duplicate"] == bool(r["duplicate_of"]) and r["duplicate_of"] in ("", "golden", "output")
    with open(paths["csv"], newline="") as handle:
        from_csv = list(csv.DictReader(handle))
    assert [row["text"] for row in from_csv] == [r["text"] for r in records]
    assert [json.loads(row["icl_ids"]) for row in from_csv] == [r["icl_ids"] for r in records]
    assert [float(row["confidence"]) for row in from_csv] == [r["confidence"] for r in records]
    assert [row["classifier_agrees"] for row in from_csv] == [str(r["classifier_agrees"]).lower() for r in records]
    saved = json.loads(paths["stats"].read_text())
    assert saved["written"] == 6 and saved["per_label"] == {"negative": 3, "positive": 3} and saved["class_balance"] == 1.0
    assert saved["classifier_agreement"] == pytest.approx(sum(r["classifier_agrees"] for r in records) / 6)
    assert saved["length_words"]["mean"] == pytest.approx(sum(r["length_words"] for r in records) / 6)
    assert 0.0 <= saved["judge_golden_val_accuracy"] <= 1.0 and saved["generator"] == "trained"
    assert json.loads(table.schema.metadata[b"prismrl"])["seed"] == 5
    assert sorted(p.name for p in out.iterdir()) == ["dataset.csv", "dataset.parquet", "dataset.stats.json"]  # no temp


def test_same_seed_same_files_other_seed_other_texts(generated, tmp_path):
    checkpoint, out, rows, stats, paths = generated
    main(["--checkpoint", str(checkpoint), "--per-label", "3", "--seed", "5", "--batch-size", "4",
          "--out", str(tmp_path / "again")])
    assert (tmp_path / "again/dataset.csv").read_bytes() == paths["csv"].read_bytes()
    assert pq.read_table(tmp_path / "again/dataset.parquet").equals(pq.read_table(paths["parquet"]))
    other, _, _ = generate_dataset(tmp_path / "other", checkpoint, per_label=3, seed=6, batch_size=4)
    assert [r["text"] for r in other] != [r["text"] for r in rows]


def test_total_with_a_label_balance_from_the_baseline(generated, repo_root, tmp_path, capsys):
    checkpoint, _, trained, _, _ = generated
    # an even balance over 6 = the same requests (ids, labels, batches) as the trained run's --per-label 3
    main(["--checkpoint", str(checkpoint), "--baseline", "--total", "6", "--balance", "negative=1,positive=1",
          "--seed", "5", "--batch-size", "4", "--out", str(tmp_path), "--name", "base"])
    assert "parquet:" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "base.parquet").to_pylist()
    assert [r["label"] for r in table] == ["negative", "positive"] * 3
    assert [r["request_id"] for r in table] == [r["request_id"] for r in trained]
    assert [r["icl_ids"] for r in table] == [r["icl_ids"] for r in trained]
    stats = json.loads((tmp_path / "base.stats.json").read_text())
    assert stats["generator"].startswith("baseline") and stats["per_label"] == {"negative": 3, "positive": 3}
    assert [r["text"] for r in table] != [r["text"] for r in trained]  # the generator before PPO writes other texts
    # the baseline is the untrained base generator: built from the stage config it writes the same dataset
    base, stats, _ = generate_dataset(tmp_path / "base", config=repo_root / TINY_GENERATOR, total=6, seed=5,
                                      batch_size=4)
    assert stats["generator"] == "untrained base"
    assert [(r["text"], r["confidence"]) for r in base] == [(r["text"], r["confidence"]) for r in table]


def test_clear_errors_for_bad_n_and_a_wrong_stage_checkpoint(generated, tmp_path, capsys):
    checkpoint = generated[0]
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(checkpoint), "--per-label", "0", "--out", str(tmp_path)])
    assert "per_label: expected an int >= 1, received 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="total: expected an int >= 1, received -2"):
        generate_dataset(tmp_path, checkpoint, total=-2)
    with pytest.raises(ValueError, match=r"balance: expected class names among \['negative', 'positive'\], received \['neutral'\]"):
        generate_dataset(tmp_path, checkpoint, total=4, balance={"neutral": 1.0})
    other = tmp_path / "grpo.ckpt"
    torch.save({"prismrl": {"stage": "prismrl.lightning_modules.grpo.GRPOModule", "version": "0.1.0"},
                "state_dict": {}, "hyper_parameters": {}}, other)
    with pytest.raises(ValueError, match="checkpoint: the checkpoint was written by stage prismrl.lightning_modules."
                                         "grpo.GRPOModule .*GeneratorPPOModule"):
        generate_dataset(tmp_path, other, per_label=1)
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "none.ckpt"), "--per-label", "1", "--out", str(tmp_path)])
    assert "checkpoint: expected a checkpoint file" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob("*.csv"))


def test_writes_are_atomic(tmp_path):
    good = {"text": "fine", "label": "positive", "label_id": 1, "icl_ids": [0, 1], "request_id": 7, "confidence": 0.9,
            "classifier_agrees": True, "length_chars": 4, "length_words": 1, "duplicate": False, "duplicate_of": ""}
    write_dataset([good], {"written": 1}, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(Exception):
        write_dataset([good, {**good, "label_id": "not an int"}], {"written": 2}, tmp_path)  # Parquet refuses the row
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files intact, no temporary left


def test_sizes_balance_duplicates_and_quality_helpers():
    names = ["neg", "neu", "pos"]
    assert label_counts(names, per_label=2) == [2, 2, 2]
    assert label_counts(names, total=7) == [3, 2, 2]
    assert label_counts(names, total=10, balance=parse_balance("neg=0.2,pos=0.8")) == [2, 0, 8]
    assert interleaved_labels([2, 0, 3]) == [0, 2, 0, 2, 2]
    with pytest.raises(ValueError, match="per_label / total: expected exactly one"):
        label_counts(names, per_label=1, total=3)
    with pytest.raises(ValueError, match="balance: expected 'label=weight,label=weight', received 'neg:1'"):
        parse_balance("neg:1")
    assert duplicate_sources(["Great fun!", "new text", "great   FUN", "New text."], ["great fun"]) == \
        ["golden", "", "golden", "output"]
    assert class_balance([5, 5]) == pytest.approx(1.0) and class_balance([4, 0]) == 0.0
    assert 0.0 < class_balance([3, 1]) < 1.0
    assert quality_score(1.0, 1.0, 0.0, 0.0, 1.0) == 1.0
    assert quality_score(0.5, float("nan"), 0.5, 0.0, 1.0) == pytest.approx((0.5 + 0.5 + 1.0 + 1.0) / 4)
    assert math.isnan(quality_score(float("nan"), float("nan"), float("nan"), float("nan"), float("nan")))
