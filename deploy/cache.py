"""The artifact cache: each step of the deployment chain makes its product once, later runs reuse it.

`mattrt infer photos/ --model aim --backend onnxruntime` needs ONNX graphs; `--precision int8`
an INT8 variant of them; `--backend tensorrt` plans built from those. Rather than asking users to
export first, the chain's steps (deploy/steps.py) make each on the first run, in an entry of
this cache, and every later run with the same inputs gets the same folder:

    cache = ArtifactCache()                                   # --cache-dir, $MATTRT_CACHE, or ~/.cache/mattrt
    entry = cache.entry(key, "aim-graphs", build)             # build(staging) -> the folder to open

Key. An entry is valid only for everything that shaped it (each step says what: for graphs the
model, its settings overrides, checkpoint SHA-256 per part, canvas and tile sizes, max batch,
opset and the exporter's library versions; for a precision variant the graphs' SHA-256, the
precision and the calibration recipe; for a backend's build the graphs' SHA-256 and the
backend's identity: library version, GPU name and compute capability), plus the mattrt version.
The key's SHA-256 names the entry folder, so an entry made by another mattrt version or on
another GPU is never found, let alone used.

Integrity. Every file of an entry is listed with its SHA-256 in `entry.json`, written last; an
entry whose files do not match (interrupted copy, edited or truncated file) is rebuilt with a
message. Entries are built in a hidden temporary folder beside the cache and renamed into place
under a per-entry file lock (the `filelock` library: works across processes, released if a
process dies), so two concurrent runs neither corrupt nor duplicate an entry: the second waits
and then reuses what the first built.

Bad input: an unwritable or full cache directory is reported before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from filelock import FileLock, Timeout

from mattrt import __version__
from mattrt.errors import InputError
from mattrt.models.checkpoints import file_sha256
from mattrt.paths import CACHE_ENV, default_cache_dir

ENTRY_FILE = "entry.json"
ENTRY_FORMAT = 2
# Free space below which the cache refuses to start a build (a full-size export is ~0.3-0.5 GB).
MIN_FREE_BYTES = 1 << 30
LOCK_TIMEOUT_SECONDS = 3600.0
Log = Callable[[str], None]


def _key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _files_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root (entry.json excluded)."""
    return {
        str(path.relative_to(root)): file_sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != ENTRY_FILE
    }


@dataclass(frozen=True)
class CacheEntry:
    path: Path  # what the backend opens (the export, or the backend's prepared folder)
    root: Path  # the entry folder
    key: dict[str, Any]
    hit: bool  # True when reused, False when built by this call
    seconds: float  # time spent building (0 on a hit)

    def describe(self) -> dict[str, Any]:
        return {"entry": str(self.root), "hit": self.hit, "build_seconds": round(self.seconds, 3)}

    @property
    def step(self) -> str:
        return str(self.key.get("step", ""))


class ArtifactCache:
    """Entries under one cache directory (see the module docstring)."""

    def __init__(self, root: str | Path | None = None, log: Log | None = print):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.log = log or (lambda message: None)

    # -- checks ---------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """InputError unless the cache directory can be created, written and has room."""
        where = f"cache directory {self.root}"
        hint = f"choose another with --cache-dir or ${CACHE_ENV}"
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{where} exists and is not a folder; {hint}")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-check-"):
                pass
        except OSError as exc:
            raise InputError(f"{where} is not writable ({exc.strerror or exc}); {hint}") from None
        free = shutil.disk_usage(self.root).free
        if free < MIN_FREE_BYTES:
            raise InputError(
                f"{where} has {free / 2**20:.0f} MiB free, under the {MIN_FREE_BYTES / 2**20:.0f} MiB an entry may need; "
                f"free space or {hint}"
            )

    # -- entries --------------------------------------------------------------------------------
    @staticmethod
    def full_key(key: Mapping[str, Any]) -> dict[str, Any]:
        """A step's key with what every entry depends on (entry format, mattrt version)."""
        return {"format": ENTRY_FORMAT, "mattrt": __version__, **key}

    def entry_dir(self, key: Mapping[str, Any], label: str) -> Path:
        return self.root / f"{label}-{_key_hash(self.full_key(key))[:16]}"

    def entry(self, key: Mapping[str, Any], label: str, build: Callable[[Path], Path]) -> CacheEntry:
        """The entry for `key`: reused when intact, else made by build(staging folder), which
        returns the folder (inside staging) that users of the entry open."""
        self.check_writable()
        return self._entry(self.full_key(key), self.entry_dir(key, label), build)

    def _entry(self, key: dict[str, Any], root: Path, build: Callable[[Path], Path]) -> CacheEntry:
        lock = FileLock(str(root) + ".lock")
        try:
            with lock.acquire(timeout=LOCK_TIMEOUT_SECONDS):
                reason = self._invalid(root, key)
                if reason is None:
                    record = json.loads((root / ENTRY_FILE).read_text())
                    self.log(f"cache: reusing {root} (no export work)")
                    return CacheEntry(root / record["open"], root, key, hit=True, seconds=0.0)
                if reason != "absent":
                    self.log(f"cache: entry {root.name} {reason}; rebuilding it")
                    shutil.rmtree(root)
                return self._build(root, key, build)
        except Timeout:
            raise InputError(
                f"cache entry {root} stayed locked for {LOCK_TIMEOUT_SECONDS:.0f} s by another mattrt run; "
                f"if none is running, delete {root}.lock"
            ) from None

    @staticmethod
    def _invalid(root: Path, key: Mapping[str, Any]) -> str | None:
        """None when the entry is complete and intact; else why not ("absent", ...)."""
        if not root.exists():
            return "absent"
        try:
            record = json.loads((root / ENTRY_FILE).read_text())
        except (OSError, ValueError):
            return "is incomplete (no readable entry.json)"
        if record.get("key") != json.loads(json.dumps(key, default=str)):
            return "was made for other inputs"
        if _files_digest(root) != record.get("files"):
            return "has files that do not match their recorded SHA-256"
        return None

    def _build(self, root: Path, key: dict[str, Any], build: Callable[[Path], Path]) -> CacheEntry:
        started = time.perf_counter()
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=self.root))
        try:
            opened = build(staging)
            record = {
                "key": json.loads(json.dumps(key, default=str)),
                "open": str(opened.relative_to(staging)),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": _files_digest(staging),
            }
            (staging / ENTRY_FILE).write_text(json.dumps(record, indent=2) + "\n")
            os.chmod(staging, 0o777 & ~_umask())
            os.replace(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        seconds = time.perf_counter() - started
        self.log(f"cache: stored {root} ({seconds:.1f} s)")
        return CacheEntry(root / record["open"], root, key, hit=False, seconds=seconds)

    def indented(self, message: str) -> None:
        self.log(f"  {message}")

    # -- listing and clearing -------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        """One record per entry folder (a folder with an entry.json: other folders are not the
        cache's): name, size, created, key, and whether its files still match their checksums."""
        rows = []
        if not self.root.is_dir():
            return rows
        for root in sorted(p for p in self.root.iterdir() if p.is_dir() and (p / ENTRY_FILE).is_file()):
            try:
                record = json.loads((root / ENTRY_FILE).read_text())
            except (OSError, ValueError):
                record = {}
            size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
            key = record.get("key", {})
            rows.append({
                "name": root.name,
                "model": key.get("model"),
                "step": key.get("step"),
                "precision": key.get("precision"),
                "backend": key.get("backend"),
                "device": key.get("device"),
                "mattrt": key.get("mattrt"),
                "created": record.get("created"),
                "bytes": size,
                "intact": bool(record) and _files_digest(root) == record.get("files"),
            })
        return rows

    def clear(self, model: str | None = None) -> list[str]:
        """Delete entries (all, or one model's); only folders this cache made (with an entry.json or
        a mattrt building prefix) are touched. Returns the names removed."""
        removed = []
        if not self.root.is_dir():
            return removed
        for path in sorted(self.root.iterdir()):
            ours = path.is_dir() and ((path / ENTRY_FILE).is_file() or ".building-" in path.name)
            if not ours:
                continue
            if model is not None:
                try:
                    if json.loads((path / ENTRY_FILE).read_text())["key"].get("model") != model:
                        continue
                except (OSError, ValueError, KeyError):
                    continue
            with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_SECONDS):
                shutil.rmtree(path)
            Path(str(path) + ".lock").unlink(missing_ok=True)
            removed.append(path.name)
        return removed


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


__all__ = ["ArtifactCache", "CACHE_ENV", "CacheEntry", "default_cache_dir"]
