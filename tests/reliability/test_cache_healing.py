"""Caches heal: a published folder with a deleted or truncated file is found damaged, logged and rebuilt."""

from __future__ import annotations

import logging

import pytest

from prismrl.cache import CONTENTS, MANIFEST, cache_damage, publish_cache_dir


def _builder(calls: list):
    def build(tmp):
        calls.append(tmp)
        (tmp / "data.bin").write_bytes(b"x" * 1000)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("hello")
        (tmp / MANIFEST).write_text("{}")
    return build


@pytest.mark.parametrize("damage", ["delete", "truncate", "no_inventory", "no_marker"])
def test_a_damaged_cache_is_rebuilt_and_logged(tmp_path, caplog, damage):
    calls: list = []
    final = tmp_path / "kind" / "key"
    assert publish_cache_dir(final, _builder(calls)) == final and len(calls) == 1
    assert cache_damage(final) is None
    assert publish_cache_dir(final, _builder(calls)) == final and len(calls) == 1  # whole: reused, not rebuilt
    target = {"delete": "sub/b.txt", "truncate": "data.bin", "no_inventory": CONTENTS, "no_marker": MANIFEST}[damage]
    if damage == "truncate":
        (final / target).write_bytes(b"x" * 10)
    else:
        (final / target).unlink()
    assert cache_damage(final) is not None
    with caplog.at_level(logging.WARNING, logger="prismrl.cache"):
        publish_cache_dir(final, _builder(calls))
    assert len(calls) == 2 and cache_damage(final) is None
    assert (final / "data.bin").stat().st_size == 1000
    assert f"cache {final} is damaged" in caplog.text and "rebuilding" in caplog.text
    assert sorted(p.name for p in final.parent.iterdir()) == ["key"]  # no temp or damaged copy left behind


def test_the_digits_cache_heals_a_deleted_parquet_file(tmp_path, monkeypatch):
    from prismrl.data.digits import ensure_digits_dataset

    monkeypatch.setenv("PRISMRL_CACHE", str(tmp_path))
    first = ensure_digits_dataset()
    parquet = sorted(first.folder.rglob("*.parquet")) if hasattr(first, "folder") else sorted(tmp_path.rglob("*.parquet"))
    assert parquet
    sizes = {p: p.stat().st_size for p in parquet}
    parquet[0].unlink()
    ensure_digits_dataset()
    assert {p: p.stat().st_size for p in parquet} == sizes


def test_a_cache_hit_is_announced_once_per_folder(tmp_path, caplog):
    calls: list = []
    final = tmp_path / "models" / "abc123"
    with caplog.at_level(logging.INFO, logger="prismrl.cache"):
        publish_cache_dir(final, _builder(calls))  # built: no "loading" line
        assert "from the cache" not in caplog.text
        publish_cache_dir(final, _builder(calls))
        publish_cache_dir(final, _builder(calls))
    assert caplog.text.count(f"loading models/abc123 from the cache at {tmp_path}") == 1
