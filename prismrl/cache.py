"""A content-keyed cache directory for slow-to-rebuild artifacts (rendered datasets, converted models)."""

from __future__ import annotations

import hashlib
import json
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


def publish_cache_dir(final: Path, build: Callable[[Path], None], marker: str = MANIFEST) -> Path:
    """Build a cache folder once, atomically: ``build(tmp)`` fills a temp folder beside ``final`` (writing
    ``marker`` last), which is then renamed to ``final``.

    A folder without ``marker`` was never published (a crashed build) and is replaced; when two processes
    build at once, the loser of the rename finds the winner's complete copy and uses it.
    """
    if (final / marker).is_file():
        return final
    import shutil
    import tempfile

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the published cache is readable like any other
        build(tmp)
        if not (tmp / marker).is_file():
            raise RuntimeError(f"cache build for {final}: the builder did not write its marker file {marker!r}")
        if final.exists() and not (final / marker).is_file():
            shutil.rmtree(final, ignore_errors=True)  # not published by a builder: a damaged copy
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / marker).is_file():  # the rename lost to no complete copy: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
