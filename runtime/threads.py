"""Thread counts chosen on purpose, the same way for torch and onnxruntime.

A serving machine runs several model instances side by side, and CI shares two cores with other
jobs: a library that assumes the whole machine is idle collapses. Measured on this project's
2-core machine with the cores busy: torch with 2 OpenMP threads ran `aim_synthetic`'s detail
stage in 3.7-5.8 s instead of 0.1-0.9 s single-threaded, because OpenMP's waiting threads spin
on cores another process needs (ENVIRONMENT.md; benchmarks/threads.py measures it).

So, for both libraries:
- the default thread count is the number of cores this process may use
  (`os.sched_getaffinity`: a container's or `taskset`'s limit, not the machine's core count);
- waiting threads sleep instead of spinning: OMP_WAIT_POLICY=PASSIVE for torch's OpenMP (read
  when the library loads, so `prefer_passive_waiting()` runs before torch is imported: the CLI
  calls it first thing; a value the user set is kept), and onnxruntime's
  `session.intra_op.allow_spinning = 0`;
- one inter-op thread: the pipeline runs one network call at a time.
"""

from __future__ import annotations

import os

from mattrt.errors import InputError
from mattrt.lazy import is_loaded, lazy_import

torch = lazy_import("torch", probe="torch")

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None) -> int:
    """The thread count to use: `threads` when given (a positive integer), else available_cores()."""
    if threads is None:
        return available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"--threads must be a positive whole number, got {threads!r}")
    return threads


def prefer_passive_waiting() -> bool:
    """Ask OpenMP to let waiting threads sleep (unless the user chose a policy); True when the
    setting can still take effect (torch not imported yet)."""
    os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")
    return not is_loaded(torch)


def configure_torch(threads: int | None) -> int:
    """Set torch's intra-op threads (process-wide); returns the count used."""
    count = resolve_threads(threads)
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first inter-op parallel work; keep what is set
        pass
    return count


def configure_onnxruntime(options, threads: int | None) -> int:
    """Set an onnxruntime SessionOptions' threads the same way; returns the count used."""
    count = resolve_threads(threads)
    options.intra_op_num_threads = count
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return count


def describe() -> dict:
    """What is in force, for summaries and benchmark records."""
    return {
        "available_cores": available_cores(),
        "omp_wait_policy": os.environ.get(WAIT_POLICY_ENV, "(library default)"),
        "torch_threads": torch.get_num_threads() if is_loaded(torch) else None,
    }


__all__ = [
    "available_cores",
    "configure_onnxruntime",
    "configure_torch",
    "describe",
    "prefer_passive_waiting",
    "resolve_threads",
]
