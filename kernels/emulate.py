"""Run the CUDA kernel sources on the CPU: g++ host emulation of the thread grid.

The same expanded source that NVRTC and CuPy compile is compiled by g++ after host_emulation.h,
which turns __global__/__device__ into plain functions, blockIdx/threadIdx/blockDim/gridDim
into host globals, binary16 into _Float16 and atomics into plain read-modify-writes. A generated
trampoline per entry point loops over the grid and the block and calls the kernel once per
thread, one thread after another. That schedule is valid because every kernel here keeps its
threads independent (no shared memory, barriers or warp operations: host_emulation.h leaves
them undefined, so using one fails to compile) and its atomics (atomicMax/atomicMin) give the
same final value in any order.

The shared libraries are cached under a directory keyed by the hash of everything compiled
(source, header, trampolines, compiler and flags), so a test run compiles each source once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mattrt.errors import MissingDependencyError
from mattrt.kernels.launch import KERNEL_DIR, Backend, kernel_signatures, source_text

HOST_HEADER = "host_emulation.h"
# No FMA contraction and no fast-math: host float arithmetic must round like NumPy's.
CXX_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math")

_SCALAR_CTYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
                  np.dtype(np.float32): ctypes.c_float}


def compiler() -> str | None:
    """The C++ compiler ($CXX, else g++ on PATH), or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


@functools.cache
def _supports_float16(cxx: str) -> bool:
    """Whether cxx compiles C++17 with the _Float16 type (g++ >= 12 on x86-64 and arm64)."""
    probe = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-x", "c++", "-"], input="_Float16 h = 1.0f;\n",
                           capture_output=True, text=True)
    return probe.returncode == 0


def skip_reason() -> str:
    """Why the emulation cannot run here (empty when it can); the tests skip with it."""
    cxx = compiler()
    if cxx is None or not _supports_float16(cxx):
        return "needs a C++17 compiler with _Float16 (g++ >= 12) on PATH or in $CXX for the host emulation"
    return ""


def cache_dir() -> Path:
    env = os.environ.get("MATTRT_KERNEL_CACHE")
    base = Path(env) if env else Path(tempfile.gettempdir()) / f"mattrt-kernel-emulation-{os.getuid()}"
    base.mkdir(parents=True, exist_ok=True)
    return base


def translation_unit(source: str) -> str:
    """The C++ text g++ compiles for one source: header, the kernel source, one launcher per entry point."""
    header = (KERNEL_DIR / HOST_HEADER).read_text()
    launchers = [
        f'extern "C" void mt_launch_{name}(const unsigned int* grid, const unsigned int* block, void** args) '
        f"{{ mt_run_grid({name}, grid, block, args); }}"
        for name in kernel_signatures(source)
    ]
    return "\n".join([header, f"// ---- {source}", source_text(source), "// ---- launchers", *launchers, ""])


@functools.cache
def _compiler_identity(cxx: str) -> str:
    result = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0] if result.stdout else cxx


@functools.cache
def library(source: str) -> ctypes.CDLL:
    """The compiled emulation of one source (built on first use, then loaded from the cache)."""
    cxx = compiler()
    if cxx is None or not _supports_float16(cxx):
        raise MissingDependencyError(f"running {source} on the host {skip_reason()[len('needs '):]}")
    text = translation_unit(source)
    key = hashlib.sha256("\0".join([text, _compiler_identity(cxx), *CXX_FLAGS]).encode()).hexdigest()[:20]
    target = cache_dir() / f"{Path(source).stem}-{key}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as work:
            cpp = Path(work) / f"{Path(source).stem}.cpp"
            cpp.write_text(text)
            built = Path(work) / "out.so"
            result = subprocess.run([cxx, *CXX_FLAGS, "-o", str(built), str(cpp)], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"g++ failed to compile the host emulation of {source}:\n{result.stderr[-4000:]}")
            os.replace(built, target)  # atomic: concurrent test processes never see a partial file
        for stale in cache_dir().glob(f"{Path(source).stem}-*.so"):
            if stale != target:  # builds of older versions of this source (safe to unlink when loaded)
                stale.unlink(missing_ok=True)
    lib = ctypes.CDLL(str(target))
    for name in kernel_signatures(source):
        fn = getattr(lib, f"mt_launch_{name}")
        fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p)]
        fn.restype = None
    return lib


class HostEmulationBackend(Backend):
    """Runs kernels on NumPy arrays through the g++ emulation (sequential threads)."""

    name = "host-emulation"
    array_name = "NumPy array (host memory)"
    xp = np

    def is_array(self, value: Any) -> bool:
        return isinstance(value, np.ndarray)

    def run_kernel(self, source: str, kernel: str, grid: tuple[int, int, int], block: tuple[int, int, int],
                   args: Sequence[Any]) -> None:
        fn = getattr(library(source), f"mt_launch_{kernel}")
        holders = []  # keeps every pointed-to value alive until the call returns
        for arg in args:
            if isinstance(arg, np.ndarray):
                holders.append(ctypes.c_void_p(arg.ctypes.data))
            else:
                holders.append(_SCALAR_CTYPES[np.dtype(type(arg))](arg))
        pointers = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        fn((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), pointers)

    def to_host(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)


@functools.cache
def host_backend() -> HostEmulationBackend:
    """The emulation backend; its kernels compile on first launch (MissingDependencyError without g++)."""
    return HostEmulationBackend()
