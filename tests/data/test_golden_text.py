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


def test_golden_set_from_csv_and_parquet_with_named_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prismrl.data.golden_text import load_golden_file, read_labelled_table

    rows = [("great fun", "pos"), ("a dull  mess", "neg"), ("warm and bright", "pos"), ("tedious", "neg")]
    csv_path = tmp_path / "golden.csv"
    csv_path.write_text("id,review,sentiment\n" + "".join(f'{i},"{t}",{y}\n' for i, (t, y) in enumerate(rows)))
    golden = read_labelled_table(csv_path, text_column="review", label_column="sentiment")
    assert golden.label_names == ["neg", "pos"] and golden.labels == [1, 0, 1, 0]
    assert golden.texts == ["great fun", "a dull mess", "warm and bright", "tedious"]
    parquet_path = tmp_path / "golden.parquet"
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [3, 1, 3, 1]}), parquet_path)
    numeric = load_golden_file(parquet_path)
    assert numeric.label_names == ["1", "3"] and numeric.labels == [1, 0, 1, 0] and numeric.texts[1] == "a dull mess"
    lines = tmp_path / "golden.txt"
    lines.write_text("__label__pos great fun\n__label__neg tedious\n")
    assert load_golden_file(lines).label_names == ["neg", "pos"]


def test_golden_table_errors_name_the_column_and_what_was_found(tmp_path):
    from prismrl.data.golden_text import read_labelled_table

    path = tmp_path / "golden.csv"
    path.write_text("review,label\ngood,pos\n")
    with pytest.raises(ValueError, match=r"golden_file: expected a column 'text' in .*golden.csv', received the "
                                         r"columns \['review', 'label'\]"):
        read_labelled_table(path)
    path.write_text("text,label\ngood,pos\n  ,neg\n")
    with pytest.raises(ValueError, match="golden_file: row 2 of .* has an empty 'text'"):
        read_labelled_table(path)
    with pytest.raises(FileNotFoundError, match="golden_file: expected a CSV or Parquet file"):
        read_labelled_table(tmp_path / "missing.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sentence": ["x"], "label": [0]}), tmp_path / "g.parquet")
    with pytest.raises(ValueError, match=r"expected a column 'text' .* received the columns \['sentence', 'label'\]"):
        read_labelled_table(tmp_path / "g.parquet")
