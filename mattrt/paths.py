"""Where mattrt keeps what it makes for the user: the cache directory.

    default_cache_dir()    $MATTRT_CACHE, else $XDG_CACHE_HOME/mattrt, else ~/.cache/mattrt

Two things live under it: the artifact cache of the deployment chain (deploy/cache.py: one
folder per entry) and the imported models (models/imported.py: `models/<name>/`).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "MATTRT_CACHE"


def default_cache_dir() -> Path:
    """$MATTRT_CACHE, else the user's cache directory ($XDG_CACHE_HOME or ~/.cache) / mattrt."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mattrt"


def cache_dir(given: str | Path | None = None) -> Path:
    """The cache directory a command uses: --cache-dir when given, else default_cache_dir()."""
    return Path(given).expanduser() if given is not None else default_cache_dir()


__all__ = ["CACHE_ENV", "cache_dir", "default_cache_dir"]
