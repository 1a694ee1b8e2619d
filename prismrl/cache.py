"""A content-keyed cache directory for slow-to-rebuild artifacts (rendered datasets, converted models)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """``$PRISMRL_CACHE`` if set, else ``~/.cache/prismrl``."""
    root = os.environ.get("PRISMRL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prismrl")
    return Path(root)


def content_key(**parts: object) -> str:
    """A short stable hash of JSON-serializable parts (builder version, sizes, seeds...)."""
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def cache_dir(kind: str, **parts: object) -> Path:
    """``<cache_root>/<kind>/<content_key(parts)>``; not created."""
    return cache_root() / kind / content_key(**parts)


MANIFEST = "manifest.json"
CONTENTS = ".contents.json"  # {relative path: size in bytes} of every file, written at publication
log = logging.getLogger(__name__)


def _inventory(folder: Path) -> dict[str, int]:
    return {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name != CONTENTS}


def record_contents(folder: Path) -> None:
    """Re-record the inventory of a published folder after a deliberate in-place repair of one of its files."""
    (folder / CONTENTS).write_text(json.dumps(_inventory(folder), indent=1))


def cache_damage(folder: Path, marker: str = MANIFEST) -> str | None:
    """Why the published cache folder is not whole (a file missing, a size changed, no inventory), or None."""
    if not (folder / marker).is_file():
        return f"its marker {marker!r} is missing"
    try:
        expected = json.loads((folder / CONTENTS).read_text())
    except (OSError, ValueError):
        return f"its inventory {CONTENTS!r} is missing or unreadable"
    for name, size in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name!r} is missing"
        if path.stat().st_size != size:
            return f"{name!r} has {path.stat().st_size} bytes, {size} when it was built"
    return None


_ANNOUNCED: set[Path] = set()


def publish_cache_dir(final: Path, build: Callable[[Path], None], marker: str = MANIFEST) -> Path:
    """Build a cache folder once, atomically: ``build(tmp)`` fills a temp folder beside ``final`` (writing
    ``marker`` last); the size of every file is recorded in ``CONTENTS`` and the folder is renamed to ``final``.

    A published folder is checked on every call (every recorded file present with its size; no file is read): a
    damaged one (a crashed build, a deleted or truncated file) is logged and rebuilt. When two processes build at
    once, the loser of the rename finds the winner's complete copy and uses it.
    """
    damage = cache_damage(final, marker) if final.exists() else "not built yet"
    if damage is None:
        if final not in _ANNOUNCED:  # one line per folder and process
            _ANNOUNCED.add(final)
            log.info("loading %s/%s from the cache at %s", final.parent.name, final.name, final.parent.parent)
        return final
    import shutil
    import tempfile

    if final.exists():
        log.warning("cache %s is damaged (%s); rebuilding it", final, damage)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the published cache is readable like any other
        build(tmp)
        if not (tmp / marker).is_file():
            raise RuntimeError(f"cache build for {final}: the builder did not write its marker file {marker!r}")
        (tmp / CONTENTS).write_text(json.dumps(_inventory(tmp), indent=1))
        if final.exists() and cache_damage(final, marker) is not None:
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}-damaged-", dir=final.parent))
            os.rename(final, old / final.name)  # out of the way in one step; removed below
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if cache_damage(final, marker) is not None:  # the rename lost to no complete copy: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
