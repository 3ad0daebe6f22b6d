"""Where mattrt keeps what it makes for the user: the cache directory.

    default_cache_dir()    $MATTRT_CACHE, else $XDG_CACHE_HOME/mattrt, else ~/.cache/mattrt

`new_directory(parent, prefix)` makes the staging folders results are built in, and
`swap_in(staging, target)` renames one into place, keeping what it replaces until the rename holds.

Two things live under it: the artifact cache of the deployment chain (deploy/cache.py: one
folder per entry) and the imported models (models/imported.py: `models/<name>/`).
"""

from __future__ import annotations

import errno
import os
import secrets
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


def new_directory(parent: Path, prefix: str) -> Path:
    """A new, uniquely named directory `parent/prefix<random>` with the mode the umask gives
    (tempfile.mkdtemp's is 0700): where a result is staged before it is renamed into place."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(parent / prefix))


def swap_in(staging: Path, target: Path) -> Path | None:
    """Rename the finished `staging` folder to `target`. A `target` already there is first moved
    into a new sibling folder, which is returned for the caller to clear (None: there was none),
    and is put back when the rename fails."""
    if not (target.exists() or target.is_symlink()):
        os.rename(staging, target)
        return None
    retired = new_directory(target.parent, f".{target.name}.replaced-")
    os.rename(target, retired / target.name)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(retired / target.name, target)
        raise
    return retired


__all__ = ["CACHE_ENV", "cache_dir", "default_cache_dir", "new_directory", "swap_in"]
