"""prismrl-convert: a folder of images + captions, or a CSV, becomes a Parquet file / WebDataset shards that the
datamodules read with their default settings."""

from __future__ import annotations

import csv
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from prismrl.apps.convert import convert, main
from prismrl.datamodules import ParquetDataModule, WebDataModule
from prismrl.data.loaders import LoaderSettings

CLASSES = ("circle", "square")


@pytest.fixture
def folder(tmp_path):
    """Eight 16x16 PNGs in class sub-folders, each with a <stem>.txt caption."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for i in range(8):
        name = CLASSES[i % 2]
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
        (root / name / f"{i}.txt").write_text(f"a {name} number {i}\n")
    return root


def test_a_folder_becomes_a_parquet_file_the_datamodule_trains_on(folder, tmp_path, capsys):
    out = tmp_path / "data/train.parquet"
    main(["--images", str(folder), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "8 samples" in printed and "class_names: ['circle', 'square']" in printed and "train_path:" in printed
    table = pq.read_table(out)
    assert table.column_names == ["image", "caption", "label"] and table.num_rows == 8
    assert sorted(table.column("label").to_pylist()) == [0] * 4 + [1] * 4
    assert (tmp_path / "data/classes.txt").read_text().split() == list(CLASSES)
    data = ParquetDataModule(str(out), val_fraction=0.25, class_names=list(CLASSES), image_size=16,
                             loader=LoaderSettings(batch_size=2, num_workers=0))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch.pixel_values.shape == (2, 3, 16, 16) and batch.captions[0].startswith("a ")


def test_a_csv_becomes_webdataset_shards_the_datamodule_reads(folder, tmp_path):
    listing = tmp_path / "photos/list.csv"
    with open(listing, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "label"])
        for i in range(8):
            writer.writerow([f"{CLASSES[i % 2]}/{i}.png", f"caption {i}", i % 2])
    summary = convert(csv_path=listing, out=tmp_path / "shards", format="webdataset", shard_size=3)
    assert [p.name for p in summary["outputs"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(summary["outputs"][0]) as tar:
        names = tar.getnames()
        assert names[:3] == ["00000000.png", "00000000.txt", "00000000.json"]
        assert json.loads(tar.extractfile("00000001.json").read()) == {"label": 1}
    data = WebDataModule(str(tmp_path / "shards/shard-{000000..000001}.tar"),
                         val_shards=str(tmp_path / "shards/shard-000002.tar"), image_size=16, samples_per_epoch=6,
                         loader=LoaderSettings(batch_size=2, num_workers=0))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch.pixel_values.shape == (2, 3, 16, 16) and batch.labels.tolist()[0] in (0, 1)


def test_bad_inputs_are_named(folder, tmp_path):
    (folder / "circle/0.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"--images: expected a caption file '.*0.txt'"):
        convert(images=folder, out=tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="--format: expected one of"):
        convert(images=folder, out=tmp_path / "x.parquet", format="tfrecord")
    with pytest.raises(ValueError, match="exactly one of --images DIR or --csv FILE, received neither"):
        convert(out=tmp_path / "x.parquet")
