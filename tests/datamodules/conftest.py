"""Helpers that write real Parquet files and WebDataset shards for the DataModule tests."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

MODES = ["L", "LA", "P", "RGBA", "RGB", "I;16", "CMYK"]


def image_bytes(mode: str, seed: int = 0, size: tuple[int, int] = (10, 7)) -> bytes:
    """PNG (JPEG for CMYK) bytes of a random image in ``mode``."""
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, size=(h, w), dtype=np.uint16))
    elif mode == "P":
        image = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).quantize(8)
    elif mode == "CMYK":
        image = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).convert("CMYK")
    else:
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
        array = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        image = Image.fromarray(array[..., 0] if channels == 1 else array)
    assert image.mode == mode
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if mode == "CMYK" else "PNG")
    return buffer.getvalue()


def make_rows(n: int, num_classes: int = 3) -> list[dict]:
    return [
        {
            "image": image_bytes(MODES[i % len(MODES)], seed=i),
            "caption": f"picture {i} in mode {MODES[i % len(MODES)]}",
            "label": i % num_classes,
            "label_name": f"class{i % num_classes}",
        }
        for i in range(n)
    ]


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 8) -> Path:
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_shards(folder: Path, shards: list[list[dict]], prefix: str = "train") -> str:
    """One tar per list of samples; returns the brace pattern."""
    for index, samples in enumerate(shards):
        with wds.TarWriter(str(folder / f"{prefix}-{index:06d}.tar")) as sink:
            for sample in samples:
                sink.write(sample)
    return str(folder / f"{prefix}-{{000000..{len(shards) - 1:06d}}}.tar")


def make_sample(key: str, label: int, mode: str = "RGB", seed: int = 0, image_key: str = "png") -> dict:
    return {
        "__key__": key,
        image_key: image_bytes(mode, seed),
        "txt": f"caption of {key}",
        "json": json.dumps({"label": label, "caption": f"json caption of {key}"}),
    }


@pytest.fixture
def parquet_file(tmp_path) -> Path:
    return write_parquet(tmp_path / "train.parquet", make_rows(40))


class Writers:
    """The helpers above, handed to tests as a fixture (conftest modules are not importable by name)."""

    modes = MODES
    image_bytes = staticmethod(image_bytes)
    make_rows = staticmethod(make_rows)
    write_parquet = staticmethod(write_parquet)
    write_shards = staticmethod(write_shards)
    make_sample = staticmethod(make_sample)


@pytest.fixture
def writers() -> type[Writers]:
    return Writers
