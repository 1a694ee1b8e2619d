"""A content-keyed cache directory for slow-to-rebuild artifacts (rendered datasets, converted models)."""

from __future__ import annotations

import hashlib
import json
import os
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
