"""GoldenTextDataModule: golden splits, balanced request batches with epoch-dependent ids, exact resume, bad sets."""

from __future__ import annotations

import pytest

from prismrl.data.loaders import LoaderSettings
from prismrl.datamodules.golden_text import GoldenTextDataModule


def test_splits_and_balanced_requests_with_epoch_dependent_ids():
    data = GoldenTextDataModule(loader=LoaderSettings(batch_size=4), iterations_per_epoch=3)
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (100, 50, 50)
    loader = data.train_dataloader()
    batches = list(loader)
    assert len(batches) == 3
    assert [b["label"].tolist() for b in batches] == [[0, 1, 0, 1]] * 3
    assert batches[1]["request_id"].tolist() == [4, 5, 6, 7]
    loader.set_epoch(2)
    assert next(iter(loader))["request_id"].tolist() == [24, 25, 26, 27]  # epoch * 12 + index


def test_mid_epoch_state_resumes_at_the_next_batch():
    data = GoldenTextDataModule(loader=LoaderSettings(batch_size=2), iterations_per_epoch=4)
    loader = data.train_dataloader()
    loader.set_epoch(1)
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = loader.state_dict()
    fresh = GoldenTextDataModule(loader=LoaderSettings(batch_size=2), iterations_per_epoch=4).train_dataloader()
    fresh.load_state_dict(state)
    assert next(iter(fresh))["request_id"].tolist() == [12, 13]


def test_bad_golden_sets_fail_with_named_errors(tmp_path):
    one_class = tmp_path / "one.txt"
    one_class.write_text("__label__a first text\n__label__a second text\n")
    with pytest.raises(ValueError, match="golden: expected at least 2 classes"):
        GoldenTextDataModule(golden_file=str(one_class)).setup("fit")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("__label__a one\n__label__a two\n__label__a three\n__label__a four\n__label__b only\n")
    with pytest.raises(ValueError, match="the val split has no example of class\\(es\\) \\['b'\\]"):
        GoldenTextDataModule(golden_file=str(tiny)).setup("fit")
    with pytest.raises(FileNotFoundError, match="golden_file"):
        GoldenTextDataModule(golden_file=str(tmp_path / "missing.txt")).setup("fit")
    with pytest.raises(ValueError, match="iterations_per_epoch: expected an int >= 1, received 0"):
        GoldenTextDataModule(iterations_per_epoch=0)


def test_golden_file_as_csv_with_configured_columns(tmp_path):
    from prismrl.data.golden_text import load_golden_texts

    shipped = load_golden_texts("movie_sentiment")
    path = tmp_path / "reviews.csv"
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "polarity"])
        writer.writerows((t, shipped.label_names[y]) for t, y in zip(shipped.texts, shipped.labels))
    data = GoldenTextDataModule(golden_file=str(path), text_column="sentence", label_column="polarity")
    data.setup("fit")
    assert data.train_set.label_names == ["negative", "positive"]
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (100, 50, 50)
    reference = GoldenTextDataModule()
    reference.setup("fit")
    assert data.train_set.texts == reference.train_set.texts and data.val_set.labels == reference.val_set.labels
    with pytest.raises(ValueError, match=r"golden_file: expected a column 'text' .* received the columns \['sentence', 'polarity'\]"):
        GoldenTextDataModule(golden_file=str(path)).setup("fit")
