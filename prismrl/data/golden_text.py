"""Golden labelled text sets: the real examples a synthetic-data generator is judged against.

Built-in sets (``GOLDEN_SETS``) are real text that an installed package ships, so nothing is downloaded:

- ``movie_sentiment``: 200 one-sentence movie-review snippets (Pang & Lee's sentence polarity data, 100
  negative / 100 positive, ~22 words each) that gensim ships as test data (``pang_lee_polarity.cor``);
  needs ``pip install gensim`` (the file is read directly, gensim is never imported).

Any file in the same fastText format (one ``__label__<name> <text>`` per line) loads with
``read_labelled_lines``; a CSV or Parquet table with a text and a label column (names configurable) with
``read_labelled_table``; ``load_golden_file`` picks the reader by the file's suffix. ``split_golden`` makes a deterministic stratified train / val / test split:
train feeds the in-context examples, val the reward's golden loss, test the final report.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prismrl.data.domain_corpus import gensim_test_data_dir

LABEL_PREFIX = "__label__"


@dataclass(frozen=True)
class GoldenSource:
    """A shipped labelled file and readable names for its raw labels."""

    filename: str
    display_names: dict[str, str]
    encoding: str = "latin-1"


GOLDEN_SETS: dict[str, GoldenSource] = {
    "movie_sentiment": GoldenSource("pang_lee_polarity.cor", {"neg": "negative", "pos": "positive"}),
}


@dataclass(frozen=True)
class GoldenTextSet:
    """Texts with class ids ``labels[i]`` in ``[0, len(label_names))``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"labels: expected one label per text ({len(self.texts)}), received {len(self.labels)}")
        bad = [y for y in self.labels if not 0 <= y < len(self.label_names)]
        if bad:
            raise ValueError(f"labels: expected class ids in [0, {len(self.label_names)}), received {bad[0]}")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def class_counts(self) -> list[int]:
        """Examples per class id."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=self.num_classes).tolist()

    def subset(self, indices: Sequence[int]) -> "GoldenTextSet":
        return GoldenTextSet([self.texts[i] for i in indices], [self.labels[i] for i in indices], list(self.label_names))


def read_labelled_lines(lines: Sequence[str], display_names: dict[str, str] | None = None) -> GoldenTextSet:
    """Parse fastText-format lines ``__label__<name> <text>``; class ids follow sorted raw label names.

    Blank lines are skipped; a non-blank line without the prefix or without text raises ValueError naming it.
    """
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        head, _, text = line.strip().partition(" ")
        if not head.startswith(LABEL_PREFIX) or not text.strip():
            raise ValueError(f"line {number}: expected '{LABEL_PREFIX}<name> <text>', received {line[:60]!r}")
        pairs.append((head[len(LABEL_PREFIX):], " ".join(text.split())))
    raw_names = sorted({name for name, _ in pairs})
    index = {name: i for i, name in enumerate(raw_names)}
    names = [(display_names or {}).get(name, name) for name in raw_names]
    return GoldenTextSet([t for _, t in pairs], [index[n] for n, _ in pairs], names)


TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _read_columns(path: Path, columns: Sequence[str], field: str) -> dict[str, list[Any]]:
    """The named columns of a CSV (header row) or Parquet file; ValueError naming a missing column and those found."""
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind == "parquet":
        import pyarrow.parquet as pq

        found = list(pq.read_schema(path).names)
        table = None
    elif kind == "csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            found = list(reader.fieldnames or [])
            table = list(reader) if all(c in found for c in columns) else None
    else:
        raise ValueError(f"{field}: expected a .csv, .parquet or .pq file, received {str(path)!r}")
    for column in columns:
        if column not in found:
            raise ValueError(f"{field}: expected a column {column!r} in {str(path)!r}, received the columns {found}")
    if kind == "parquet":
        table = pq.read_table(path, columns=list(columns))
        return {c: table.column(c).to_pylist() for c in columns}
    return {c: [row[c] for row in table] for c in columns}


def read_labelled_table(
    path: str | Path, text_column: str = "text", label_column: str = "label", field: str = "golden_file"
) -> GoldenTextSet:
    """A golden set from a CSV (with a header row) or Parquet table with a text and a label column.

    Labels may be names or integers; class ids follow the sorted raw labels (numeric order for integers) and the
    class names are the raw labels as text. Rows with an empty text or label raise ValueError naming the row
    (data rows counted from 1)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{field}: expected a CSV or Parquet file, received {str(path)!r} (no such file)")
    columns = _read_columns(path, [text_column, label_column], field)
    texts, raw = columns[text_column], columns[label_column]
    for row, (text, label) in enumerate(zip(texts, raw), start=1):
        if text is None or not str(text).strip():
            raise ValueError(f"{field}: row {row} of {str(path)!r} has an empty {text_column!r}, received {text!r}")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise ValueError(f"{field}: row {row} of {str(path)!r} has an empty {label_column!r}, received {label!r}")
    keys = [label.strip() if isinstance(label, str) else label for label in raw]
    try:
        ordered = sorted(set(keys))
    except TypeError:  # mixed numbers and names: order by text
        ordered = sorted(set(keys), key=str)
    index = {key: i for i, key in enumerate(ordered)}
    return GoldenTextSet([" ".join(str(t).split()) for t in texts], [index[k] for k in keys], [str(k) for k in ordered])


def load_golden_file(
    path: str | Path, text_column: str = "text", label_column: str = "label", field: str = "golden_file"
) -> GoldenTextSet:
    """A golden set from your own file: CSV / Parquet (``read_labelled_table``) by suffix, any other suffix as
    fastText-format lines (``read_labelled_lines``, UTF-8)."""
    path = Path(path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return read_labelled_table(path, text_column, label_column, field)
    if not path.is_file():
        raise FileNotFoundError(f"{field}: expected a labelled text file, received {str(path)!r} (no such file)")
    return read_labelled_lines(path.read_text(encoding="utf-8").splitlines())


def load_golden_texts(name: str = "movie_sentiment", folder: str | Path | None = None) -> GoldenTextSet:
    """A built-in golden set by name (``GOLDEN_SETS``); ``folder`` overrides gensim's test-data folder."""
    if name not in GOLDEN_SETS:
        raise ValueError(f"golden: expected one of {sorted(GOLDEN_SETS)}, received {name!r}")
    source = GOLDEN_SETS[name]
    path = Path(folder) / source.filename if folder is not None else gensim_test_data_dir() / source.filename
    if not path.is_file():
        raise FileNotFoundError(f"golden {name!r}: expected the file {path}")
    return read_labelled_lines(path.read_text(encoding=source.encoding).splitlines(), source.display_names)


def split_golden(
    golden: GoldenTextSet, val_fraction: float = 0.25, test_fraction: float = 0.25, seed: int = 0
) -> tuple[GoldenTextSet, GoldenTextSet, GoldenTextSet]:
    """Stratified (train, val, test): per class, a seeded permutation; the first round(n * test_fraction)
    examples go to test, the next round(n * val_fraction) to val, the rest to train (original order kept)."""
    for field, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{field}: expected a float in [0, 1), received {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction: expected < 1, received {val_fraction + test_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(golden.labels)
    parts: list[list[int]] = [[], [], []]
    for label in range(golden.num_classes):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_test, n_val = round(len(members) * test_fraction), round(len(members) * val_fraction)
        parts[2] += members[:n_test].tolist()
        parts[1] += members[n_test:n_test + n_val].tolist()
        parts[0] += members[n_test + n_val:].tolist()
    train, val, test = (golden.subset(sorted(p)) for p in parts)
    return train, val, test
