"""Checks of a Parquet file before training: it opens, the named columns exist with the right types, captions,
labels and logged feedback are valid (one streamed pass), images decode; and class names from a label_name column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prismrl.data.images import decode_image


def open_parquet(path: str | Path, field: str = "path") -> pq.ParquetFile:
    """``pq.ParquetFile(path)``; FileNotFoundError / ValueError naming ``field`` and the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{field}: expected a Parquet file, received '{path}' (no such file)")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{field}: '{path}' is not a readable Parquet file ({err})") from None


_COLUMN_TYPES = {
    "image_column": ("encoded image bytes", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
    "image_path_column": ("file paths (strings)", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    "caption_column": ("strings", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    "label_column": ("integers", pa.types.is_integer),
    "audio_column": ("WAV file bytes", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
    "reward_column": ("numbers", lambda t: pa.types.is_integer(t) or pa.types.is_floating(t)),
    "action_column": ("integers", pa.types.is_integer),
}


def _check_logged_feedback(batch, start: int, name: str, reward: str | None, action: str | None) -> None:
    """Logged rewards must be finite and non-null, logged actions non-null and >= 0 (checked before training)."""
    for column, ok, what in ((reward, np.isfinite, "a finite number"), (action, lambda v: v >= 0, "an id >= 0")):
        if column is None:
            continue
        values = np.array([np.nan if v is None else v for v in batch.column(column).to_pylist()], dtype=np.float64)
        bad = np.flatnonzero(~(ok(values) & ~np.isnan(values)))
        if len(bad):
            raise ValueError(f"{'reward' if column == reward else 'action'}_column: row {start + int(bad[0])} of "
                             f"{name} holds {values[bad[0]]}, expected {what}")


def check_parquet(path: Path, field: str, columns: dict[str, str | None], num_classes: int | None,
                  optional_captions: bool = False) -> int:
    """Validate one file before training; returns its row count.

    Every named column must exist; captions must be non-empty (or null, with ``optional_captions``); labels
    must be null, -1 or in ``[0, num_classes)``; logged rewards finite and actions >= 0. Only those columns
    are streamed, in one pass.
    """
    file = open_parquet(path, field)
    available = file.schema_arrow.names
    for arg, column in columns.items():
        if column is not None and column not in available:
            raise ValueError(f"{arg}: column '{column}' not found in {path.name}; available columns: {available}")
        if column is not None and not _COLUMN_TYPES[arg][1](file.schema_arrow.field(column).type):
            kind, actual = _COLUMN_TYPES[arg][0], file.schema_arrow.field(column).type
            raise ValueError(f"{arg}: column '{column}' of {path.name} should hold {kind}, got type {actual}")
    caption, label = columns["caption_column"], columns.get("label_column")
    reward, action = columns.get("reward_column"), columns.get("action_column")
    if action is not None and reward is None:
        raise ValueError("action_column: logged actions need their rewards; set reward_column too")
    row = 0
    streamed = [c for c in (caption, label, reward, action) if c is not None]
    for batch in file.iter_batches(batch_size=4096, columns=list(dict.fromkeys(streamed))):
        for offset, text in enumerate(batch.column(caption).to_pylist()):
            if (text is None and not optional_captions) or (text is not None and not str(text).strip()):
                raise ValueError(f"caption_column: caption '{caption}' is empty at row {row + offset} of {path.name}")
        if label is not None:
            values = np.array([-1 if v is None else v for v in batch.column(label).to_pylist()], dtype=np.int64)
            upper = num_classes if num_classes is not None else np.iinfo(np.int64).max
            bad = np.flatnonzero((values < -1) | (values >= upper))
            if len(bad):
                raise ValueError(
                    f"label_column: label {int(values[bad[0]])} at row {row + int(bad[0])} of {path.name} is outside "
                    f"[0, {num_classes}) (the class_names range; -1 or null = no class)"
                )
        _check_logged_feedback(batch, row, path.name, reward, action)
        row += batch.num_rows
    return row


def check_images(path: Path, image_column: str | None, image_path_column: str | None, rows: int | None) -> None:
    """Decode the images of the first ``rows`` rows of ``path`` (None = every row) before training; a bad image
    raises the ValueError of ``decode_image`` naming the row and column (a missing file: FileNotFoundError)."""
    column = image_column or image_path_column
    if rows == 0:
        return
    checked = 0
    for batch in open_parquet(path).iter_batches(batch_size=256, columns=[column]):
        for value in batch.column(column).to_pylist():
            where = f"row {checked} of column '{column}' in {path.name}"
            if image_path_column is not None:
                file = path.parent / str(value)
                if not file.is_file():
                    raise FileNotFoundError(f"{where}: no image file at {file}")
                value = file.read_bytes()
            if value is None:
                raise ValueError(f"{where}: image is null")
            decode_image(value, where)
            checked += 1
            if rows is not None and checked >= rows:
                return


def class_names_from_column(path: Path, label_column: str, name_column: str = "label_name") -> list[str] | None:
    """``names[label]`` from (label, label_name) pairs in the file, or None when it has no such column."""
    if not path.is_file() or name_column not in open_parquet(path).schema_arrow.names:
        return None
    mapping: dict[int, str] = {}
    table = pq.read_table(path, columns=[label_column, name_column])
    for label, name in zip(table.column(label_column).to_pylist(), table.column(name_column).to_pylist()):
        if label is None or label < 0:
            continue
        if mapping.setdefault(int(label), str(name)) != str(name):
            raise ValueError(f"{name_column}: label {label} has two names, '{mapping[int(label)]}' and '{name}'")
    return [mapping.get(i, str(i)) for i in range(max(mapping) + 1)] if mapping else None
