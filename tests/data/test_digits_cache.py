import io
import json
import multiprocessing
import tarfile

import braceexpand
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import prismrl.data.digits as digits
from prismrl.data.digits import (
    DIGIT_NAMES,
    ZERO_SHOT_TEMPLATES,
    digits_cache_path,
    ensure_digits_dataset,
    stratified_split,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return ensure_digits_dataset(tmp_path_factory.mktemp("cache"))


def _snapshot(folder):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_built_once_then_reused(tmp_path):
    first = ensure_digits_dataset(tmp_path)
    before = _snapshot(first.root)
    second = ensure_digits_dataset(tmp_path)
    assert second == first
    assert _snapshot(second.root) == before  # nothing rewritten
    assert [p.name for p in (tmp_path / "digits").iterdir()] == [first.root.name]  # no temp dirs left


def test_cache_key_tracks_version_and_options(tmp_path, monkeypatch):
    base = digits_cache_path(tmp_path)
    assert base.parent == tmp_path / "digits"
    assert digits_cache_path(tmp_path, val_fraction=0.3) != base
    assert digits_cache_path(tmp_path, seed=1) != base
    monkeypatch.setattr(digits, "DIGITS_VERSION", digits.DIGITS_VERSION + 1)
    assert digits_cache_path(tmp_path) != base


def test_a_copy_without_manifest_is_never_used(tmp_path):
    final = digits_cache_path(tmp_path)
    final.mkdir(parents=True)
    (final / "train.parquet").write_bytes(b"half written")
    dataset = ensure_digits_dataset(tmp_path)
    assert dataset.root == final
    assert pq.ParquetFile(dataset.train_parquet).metadata.num_rows == dataset.num_train


def _build_in(root):
    dataset = ensure_digits_dataset(root)
    return str(dataset.root), pq.ParquetFile(dataset.train_parquet).metadata.num_rows


def test_concurrent_builders_agree(tmp_path):
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_build_in, [tmp_path] * 3)
    assert len(set(results)) == 1
    assert results[0][1] == 1438
    assert len(list((tmp_path / "digits").iterdir())) == 1


def test_stratified_split_is_deterministic():
    labels = load_digits().target
    train, val = stratified_split(labels, 0.2, seed=0)
    train2, val2 = stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(train, train2) and np.array_equal(val, val2)
    assert not np.array_equal(val, stratified_split(labels, 0.2, seed=1)[1])
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == len(labels)
    for label in range(10):
        assert (labels[val] == label).sum() == round((labels == label).sum() * 0.2)


def test_parquet_contents(built):
    file = pq.ParquetFile(built.train_parquet)
    assert file.schema_arrow.names == ["image", "caption", "label", "label_name"]
    assert file.metadata.num_row_groups > 5  # several row groups
    table = pq.read_table(built.train_parquet)
    assert table.num_rows + pq.read_table(built.val_parquet).num_rows == 1797
    labels, names = table.column("label").to_pylist(), table.column("label_name").to_pylist()
    assert all(DIGIT_NAMES[l] == n for l, n in zip(labels, names))
    assert labels[:50] != sorted(labels[:50])  # rows are shuffled, not grouped by class
    captions = table.column("caption").to_pylist()
    assert len(set(captions)) > 40
    assert all(DIGIT_NAMES[l] in c or str(l) in c for l, c in zip(labels, captions))
    image = Image.open(io.BytesIO(table.column("image")[0].as_py()))
    assert image.mode == "L" and image.size == (32, 32)
    pixels = np.asarray(image)
    assert pixels[0, 0] > 200 and pixels.min() < 100  # dark digit on a light background
    assert built.class_names == DIGIT_NAMES
    assert all("{}" in t for t in ZERO_SHOT_TEMPLATES)


def test_webdataset_shards(built):
    train = list(braceexpand.braceexpand(built.train_shards))
    assert len(train) == 8 and train[0].endswith("train-000000.tar")
    with tarfile.open(train[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
        caption = tar.extractfile(next(n for n in names if n.endswith(".txt"))).read().decode()
    assert {n.rsplit(".", 1)[1] for n in names} == {"png", "txt", "json"}
    assert DIGIT_NAMES[meta["label"]] == meta["label_name"]
    assert DIGIT_NAMES[meta["label"]] in caption or str(meta["label"]) in caption
    total = 0
    for shard in train + list(braceexpand.braceexpand(built.val_shards)):
        with tarfile.open(shard) as tar:
            total += len(tar.getnames()) // 3
    assert total == 1797
