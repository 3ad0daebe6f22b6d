"""Memory checks made before large allocations.

An option such as `--tile 100000` or `synth --size 100000` would otherwise fail deep inside
NumPy with a MemoryError traceback (or get the process killed) after work has started. Callers
estimate what they are about to allocate and call `require_memory` first, which refuses with
the estimate and the limit. The limit is the memory the kernel reports as available
(MemAvailable in /proc/meminfo: free memory plus what can be reclaimed without swapping), or
the free physical pages where that file does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path

from mattrt.errors import InputError

GIB = 1 << 30


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now, or None when it cannot be told."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(count: float) -> str:
    return f"{count / GIB:.1f} GiB" if count >= GIB / 10 else f"{count / (1 << 20):.1f} MiB"


def require_memory(needed: float, what: str, hint: str) -> None:
    """Raise InputError when `needed` bytes (an estimate for `what`) exceed the memory available."""
    available = available_memory()
    if available is not None and needed > available:
        raise InputError(f"{what} needs about {format_bytes(needed)} of memory (estimate), more than the "
                         f"{format_bytes(available)} available; {hint}")


__all__ = ["available_memory", "format_bytes", "require_memory"]
