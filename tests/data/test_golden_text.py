"""Golden labelled text: the shipped movie-sentiment set, the fastText-format reader and the stratified split."""

from __future__ import annotations

import pytest

from prismrl.data.golden_text import (
    GoldenTextSet,
    load_golden_texts,
    read_labelled_lines,
    split_golden,
)


def test_shipped_movie_sentiment_set_is_real_and_balanced():
    golden = load_golden_texts("movie_sentiment")
    assert len(golden) == 200 and golden.label_names == ["negative", "positive"]
    assert golden.class_counts() == [100, 100]
    assert golden.texts[0].startswith("simplistic , silly and tedious")
    assert all(t and "__label__" not in t for t in golden.texts)


def test_reader_orders_classes_and_reports_bad_lines(tmp_path):
    lines = ["__label__b second  text ", "", "__label__a first"]
    golden = read_labelled_lines(lines, {"a": "Alpha"})
    assert golden.label_names == ["Alpha", "b"] and golden.labels == [1, 0] and golden.texts == ["second text", "first"]
    with pytest.raises(ValueError, match="line 2: expected '__label__<name> <text>'"):
        read_labelled_lines(["__label__a ok", "no label here"])
    with pytest.raises(ValueError, match="line 1"):
        read_labelled_lines(["__label__a   "])
    with pytest.raises(FileNotFoundError, match="pang_lee_polarity.cor"):
        load_golden_texts("movie_sentiment", folder=tmp_path)
    with pytest.raises(ValueError, match="golden: expected one of"):
        load_golden_texts("imdb")
    with pytest.raises(ValueError, match="labels: expected class ids in \\[0, 2\\)"):
        GoldenTextSet(["x"], [2], ["a", "b"])


def test_split_is_stratified_disjoint_and_deterministic():
    golden = load_golden_texts()
    train, val, test = split_golden(golden, val_fraction=0.2, test_fraction=0.3, seed=1)
    assert (train.class_counts(), val.class_counts(), test.class_counts()) == ([50, 50], [20, 20], [30, 30])
    assert not (set(train.texts) & set(val.texts) or set(train.texts) & set(test.texts) or set(val.texts) & set(test.texts))
    again = split_golden(golden, val_fraction=0.2, test_fraction=0.3, seed=1)
    assert again[1].texts == val.texts
    assert split_golden(golden, val_fraction=0.2, test_fraction=0.3, seed=2)[1].texts != val.texts
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction"):
        split_golden(golden, 0.6, 0.5)
