"""A synthetic labelled dataset's quality measures, statistics and files (``prismrl-generate``, the generator report).

- quality: duplicate sources (against golden texts and earlier rows), length statistics, class balance (normalized
  entropy) and ``quality_score`` (the mean of golden accuracy, separation, validity, novelty and balance);
- ``dataset_stats``: the ``<name>.stats.json`` summary of scored rows;
- ``write_dataset``: ``<name>.parquet``, ``<name>.csv`` (columns ``COLUMNS``) and ``<name>.stats.json``, atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

COLUMNS = ("text", "label", "label_id", "icl_ids", "request_id", "confidence", "classifier_agrees", "length_chars",
           "length_words", "duplicate", "duplicate_of")


# ----- quality -----
def text_key(text: str) -> str:
    """What duplicates compare: the words of ``text``, case-folded, joined by single spaces."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def duplicate_sources(texts: Sequence[str], golden_texts: Sequence[str]) -> list[str]:
    """Per text: "golden" (same key as a golden text), "output" (same key as an earlier text) or ""."""
    golden = {text_key(t) for t in golden_texts}
    seen: set[str] = set()
    out = []
    for text in texts:
        key = text_key(text)
        out.append("golden" if key in golden else "output" if key in seen else "")
        seen.add(key)
    return out


def length_stats(values: Sequence[float]) -> dict[str, float]:
    """mean, std (population), min, median, max of ``values`` (NaN for none)."""
    if not values:
        return {k: float("nan") for k in ("mean", "std", "min", "median", "max")}
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "min": float(t.min()),
            "median": float(t.median()), "max": float(t.max())}


def quality_score(golden_accuracy: float, silhouette: float, parse_failure_rate: float, duplicate_rate: float,
                  balance: float) -> float:
    """One number in [0, 1] for a set of synthetic examples, the mean of the defined factors among

        golden_accuracy,  (1 + silhouette) / 2,  1 - parse_failure_rate,  1 - duplicate_rate,  class_balance

    (usefulness for a classifier, class separation, validity, novelty, balance); NaN factors are left out."""
    factors = [golden_accuracy, (1.0 + silhouette) / 2.0, 1.0 - parse_failure_rate, 1.0 - duplicate_rate, balance]
    factors = [float(f) for f in factors if f is not None and math.isfinite(f)]
    return sum(factors) / len(factors) if factors else float("nan")


def class_balance(counts: Sequence[int]) -> float:
    """Normalized entropy of the class distribution: 1 = even, 0 = one class only (NaN without examples)."""
    total = sum(counts)
    if total == 0 or len(counts) < 2:
        return float("nan")
    p = torch.tensor([c / total for c in counts if c > 0], dtype=torch.float64)
    return float(-(p * p.log()).sum() / math.log(len(counts)))


# ----- statistics -----
def dataset_stats(rows: list[dict[str, Any]], label_names: Sequence[str], requested: Sequence[int]) -> dict[str, Any]:
    counts = [sum(r["label_id"] == c for r in rows) for c in range(len(label_names))]
    n = len(rows)
    mean = (lambda key: sum(float(r[key]) for r in rows) / n if n else float("nan"))
    return {
        "requested": dict(zip(label_names, requested)), "written": n, "per_label": dict(zip(label_names, counts)),
        "class_balance": class_balance(counts), "classifier_agreement": mean("classifier_agrees"),
        "confidence_mean": mean("confidence"),
        "agreement_per_label": {name: (sum(r["classifier_agrees"] for r in rows if r["label_id"] == c) / counts[c]
                                       if counts[c] else float("nan")) for c, name in enumerate(label_names)},
        "length_chars": length_stats([r["length_chars"] for r in rows]),
        "length_words": length_stats([r["length_words"] for r in rows]),
        "duplicates": {"golden": sum(r["duplicate_of"] == "golden" for r in rows),
                       "output": sum(r["duplicate_of"] == "output" for r in rows)},
        "duplicate_rate": mean("duplicate"),
    }


# ----- writing -----
def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        values = {**row, "icl_ids": json.dumps(row["icl_ids"]),
                  "classifier_agrees": str(row["classifier_agrees"]).lower(), "duplicate": str(row["duplicate"]).lower()}
        writer.writerow([values[c] for c in COLUMNS])
    return buffer.getvalue()


def _parquet_table(rows: list[dict[str, Any]], metadata: dict[str, Any]):
    import pyarrow as pa

    schema = pa.schema([("text", pa.string()), ("label", pa.string()), ("label_id", pa.int64()),
                        ("icl_ids", pa.list_(pa.int64())), ("request_id", pa.int64()), ("confidence", pa.float64()),
                        ("classifier_agrees", pa.bool_()), ("length_chars", pa.int64()), ("length_words", pa.int64()),
                        ("duplicate", pa.bool_()), ("duplicate_of", pa.string())],
                       metadata={"prismrl": json.dumps(metadata)})
    return pa.Table.from_pydict({c: [r[c] for r in rows] for c in COLUMNS}, schema=schema)


def write_dataset(rows: list[dict[str, Any]], stats: dict[str, Any], out: str | Path, name: str = "dataset") -> dict[str, Path]:
    """``<name>.parquet``, ``<name>.csv`` and ``<name>.stats.json`` under ``out``: each written to a temporary file in
    the same folder first and renamed into place only when all three are complete."""
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = {"parquet": out / f"{name}.parquet", "csv": out / f"{name}.csv", "stats": out / f"{name}.stats.json"}
    temps: dict[str, Path] = {}
    try:
        for kind, target in targets.items():
            handle, temp = tempfile.mkstemp(dir=out, prefix=f".{target.name}.", suffix=".tmp")
            os.close(handle)
            temps[kind] = Path(temp)
        mask = os.umask(0)
        os.umask(mask)
        for temp in temps.values():
            os.chmod(temp, 0o666 & ~mask)  # as a plain open() would create them
        pq.write_table(_parquet_table(rows, stats), temps["parquet"])
        temps["csv"].write_text(_csv_text(rows), encoding="utf-8")
        temps["stats"].write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        for kind, target in targets.items():
            os.replace(temps[kind], target)
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return targets
