"""The kernel sources and the one launch path shared by the GPU and the host emulation.

Every op module (max_unpool.py, attention_pool.py, ...) computes its grid and argument list in a
`launch(backend, ...)` function; a backend runs one named kernel of one source. Two backends
exist, both reachable by name through `mattrt.kernels.backends.get_backend`: "cupy" (`CupyBackend`: CuPy arrays, a real
GPU) and "emulate" (the host emulation in emulate.py: NumPy arrays, the same source compiled by
g++; exact but slow, for tests and for running GPU code paths on a machine without a GPU). Both check each argument against the kernel's C
signature (parsed from the source) before launching, so a wrong scalar width or dtype is caught
on the CPU by the emulation tests instead of corrupting memory on a GPU.

Nothing here imports CuPy at module import time.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mattrt.availability import require
from mattrt.errors import InputError
from mattrt.lazy import lazy_import

cupy = lazy_import("cupy")

KERNEL_DIR = Path(__file__).resolve().parent

# One kernel family per source.
SOURCES: tuple[str, ...] = (
    "max_unpool.cu",
    "attention_pool.cu",
    "trimap_fusion.cu",
    "stitch.cu",
    "preprocess.cu",
    "morphology.cu",
    "guided_filter.cu",
)

# Options used for every compilation (NVRTC in compile.py and CuPy's RawModule alike).
COMPILE_OPTIONS: tuple[str, ...] = ("--std=c++17",)

BLOCK_1D = 256  # threads per block for the flat passes
BLOCK_ROW = 128  # threads per block along a row for the row/plane grids
MAX_GRID_YZ = 65535  # CUDA's limit on gridDim.y and gridDim.z; kernels stride past it

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.DOTALL)

# C parameter types of the entry points -> what the launch must pass.
_POINTER_DTYPES = {
    "float": np.dtype(np.float32),
    "mt_half": np.dtype(np.float16),
    "int": np.dtype(np.int32),
    "long long": np.dtype(np.int64),
    "unsigned long long": np.dtype(np.uint64),
    "unsigned char": np.dtype(np.uint8),
    "unsigned short": np.dtype(np.uint16),
}
_SCALAR_TYPES = {"int": np.int32, "long long": np.int64, "float": np.float32}


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str  # without const / restrict
    pointer: bool

    @property
    def dtype(self) -> np.dtype:
        return _POINTER_DTYPES[self.ctype] if self.pointer else np.dtype(_SCALAR_TYPES[self.ctype])


@functools.cache
def source_text(source: str) -> str:
    """The source with its quoted #includes expanded in place (each header once).

    NVRTC, CuPy and g++ all get this one text, so no include path has to be configured anywhere.
    """
    if source not in SOURCES and not source.endswith(".cuh"):
        raise KeyError(f"unknown kernel source {source!r}; known: {', '.join(SOURCES)}")
    seen: set[str] = set()

    def expand(name: str) -> str:
        path = KERNEL_DIR / name
        text = path.read_text()

        def include(match: re.Match[str]) -> str:
            header = match.group(1)
            if header in seen:
                return f"// (already included: {header})"
            seen.add(header)
            return f"// begin {header}\n{expand(header)}\n// end {header}"

        return _INCLUDE.sub(include, text)

    return expand(source)


def _parse_param(text: str, kernel: str) -> Param:
    tokens = text.replace("*", " * ").split()
    tokens = [t for t in tokens if t not in ("const", "__restrict__", "__restrict")]
    if len(tokens) < 2:
        raise ValueError(f"kernel {kernel}: cannot parse parameter {text!r}")
    name, type_tokens = tokens[-1], tokens[:-1]
    pointer = type_tokens[-1] == "*"
    if pointer:
        type_tokens = type_tokens[:-1]
    ctype = " ".join(type_tokens)
    table = _POINTER_DTYPES if pointer else _SCALAR_TYPES
    if ctype not in table:
        raise ValueError(f"kernel {kernel}: parameter {text!r} has a type the launchers do not map ({ctype})")
    return Param(name, ctype, pointer)


@functools.cache
def kernel_signatures(source: str) -> dict[str, tuple[Param, ...]]:
    """The extern "C" entry points of a source and their parameters, in source order."""
    found = {}
    for match in _ENTRY.finditer(source_text(source)):
        name, params = match.group(1), match.group(2)
        found[name] = tuple(_parse_param(p, name) for p in params.split(",") if p.strip())
    if not found:
        raise ValueError(f"{source} defines no extern \"C\" __global__ entry point")
    return found


def kernel_names(source: str) -> list[str]:
    return list(kernel_signatures(source))


def check_launch_args(backend: "Backend", source: str, kernel: str, args: Sequence[Any]) -> None:
    """Raise TypeError unless args match the kernel's C signature exactly (types and widths)."""
    try:
        params = kernel_signatures(source)[kernel]
    except KeyError:
        raise KeyError(f"{source} has no entry point {kernel!r}; it has {', '.join(kernel_names(source))}") from None
    if len(args) != len(params):
        raise TypeError(f"{kernel}: {len(params)} arguments expected, {len(args)} given")
    for param, arg in zip(params, args):
        if param.pointer:
            if not backend.is_array(arg):
                raise TypeError(f"{kernel}: argument {param.name} must be a {backend.array_name}, got {type(arg).__name__}")
            if arg.dtype != param.dtype:
                raise TypeError(f"{kernel}: argument {param.name} must have dtype {param.dtype}, got {arg.dtype}")
            if not arg.flags.c_contiguous:
                raise TypeError(f"{kernel}: argument {param.name} must be C-contiguous")
        elif type(arg) is not _SCALAR_TYPES[param.ctype]:
            raise TypeError(
                f"{kernel}: argument {param.name} ({param.ctype}) must be a numpy.{_SCALAR_TYPES[param.ctype].__name__}, "
                f"got {type(arg).__name__}"
            )


class Backend:
    """Where kernels run: an array module plus a way to launch a named kernel of a source."""

    name: str
    array_name: str  # how errors name the arrays this backend takes
    xp: Any  # numpy or cupy

    def is_array(self, value: Any) -> bool:
        raise NotImplementedError

    def run_kernel(self, source: str, kernel: str, grid: tuple[int, int, int], block: tuple[int, int, int],
                   args: Sequence[Any]) -> None:
        raise NotImplementedError

    def launch(self, source: str, kernel: str, grid: Sequence[int], block: Sequence[int], args: Sequence[Any]) -> None:
        grid3 = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block3 = tuple(int(b) for b in block) + (1,) * (3 - len(block))
        if min(grid3) < 1 or min(block3) < 1:
            raise ValueError(f"{kernel}: empty launch grid {grid3} x block {block3}")
        check_launch_args(self, source, kernel, args)
        self.run_kernel(source, kernel, grid3, block3, args)

    def to_host(self, array: Any) -> np.ndarray:
        raise NotImplementedError

    def from_host(self, array: np.ndarray) -> Any:
        raise NotImplementedError


class CupyBackend(Backend):
    """Launches the kernels with CuPy on the current device and stream."""

    name = "cupy"
    array_name = "CuPy array (GPU memory)"

    def __init__(self) -> None:
        require("cupy_device", "launching the mattrt CUDA kernels")

        self.xp = cupy
        self._modules: dict[tuple[str, int], Any] = {}

    def is_array(self, value: Any) -> bool:
        return isinstance(value, self.xp.ndarray)

    def module(self, source: str) -> Any:
        key = (source, self.xp.cuda.runtime.getDevice())
        if key not in self._modules:
            self._modules[key] = self.xp.RawModule(code=source_text(source), options=COMPILE_OPTIONS)
        return self._modules[key]

    def run_kernel(self, source, kernel, grid, block, args) -> None:
        self.module(source).get_function(kernel)(grid, block, tuple(args))

    def to_host(self, array: Any) -> np.ndarray:
        return self.xp.asnumpy(array)

    def from_host(self, array: np.ndarray) -> Any:
        return self.xp.asarray(array)


@functools.cache
def cupy_backend() -> CupyBackend:
    """The GPU backend; raises MissingDependencyError where CuPy or a device is missing."""
    return CupyBackend()


# ---------------------------------------------------------------------------------------------
# Input checks shared by the launchers (device arrays) and the references (NumPy arrays).


_TO_HOST = "copy it to the host first (.get() for CuPy, .cpu() for torch)"


def describe(value: Any) -> str:
    kind = f"{type(value).__module__}.{type(value).__name__}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        where = "GPU memory" if hasattr(value, "__cuda_array_interface__") else "host memory"
        contiguous = getattr(getattr(value, "flags", None), "c_contiguous", None)
        layout = "" if contiguous is None else (", C-contiguous" if contiguous else ", not C-contiguous")
        return f"{kind} of shape {tuple(value.shape)}, dtype {value.dtype}{layout} ({where})"
    return kind


def _dtype_names(dtypes: Sequence[Any]) -> str:
    return " or ".join(np.dtype(d).name for d in dtypes)


def device_array(backend: Backend, op: str, name: str, value: Any, *, layout: str, dtypes: Sequence[Any]) -> Any:
    """Check that value is a C-contiguous array of this backend with len(layout) dims and an allowed dtype."""
    expected = f"a C-contiguous {backend.array_name} of layout {layout} with dtype {_dtype_names(dtypes)}"
    if not backend.is_array(value):
        hint = ""
        if backend.name == "cupy" and isinstance(value, np.ndarray):
            hint = "; this launcher runs on the GPU: move it with cupy.asarray(...)"
        elif backend.name != "cupy" and hasattr(value, "__cuda_array_interface__"):
            hint = f"; this runs on the host: {_TO_HOST}"
        raise InputError(f"{op}: {name} must be {expected}; got {describe(value)}{hint}")
    ndim = len(layout.split(" x "))
    if value.ndim != ndim or np.dtype(value.dtype) not in [np.dtype(d) for d in dtypes]:
        raise InputError(f"{op}: {name} must be {expected}; got {describe(value)}")
    if not value.flags.c_contiguous:
        raise InputError(f"{op}: {name} must be {expected}; got {describe(value)}: make it contiguous first")
    return value


def host_array(op: str, name: str, value: Any, *, layout: str, dtypes: Sequence[Any]) -> np.ndarray:
    """The NumPy references' check: a host array (any memory layout) of the given rank and dtypes."""
    if hasattr(value, "__cuda_array_interface__"):
        raise InputError(
            f"{op}: {name} must be a NumPy array (host memory) of layout {layout}; got {describe(value)}: "
            f"the reference runs on the host, {_TO_HOST}"
        )
    array = np.asarray(value)
    ndim = len(layout.split(" x "))
    if array.ndim != ndim or array.dtype not in [np.dtype(d) for d in dtypes]:
        raise InputError(
            f"{op}: {name} must be a NumPy array of layout {layout} with dtype {_dtype_names(dtypes)}; got {describe(array)}"
        )
    return array


def output_array(backend: Backend, op: str, out: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """A new output array, or the caller's `out` after checking it matches (for zero-copy callers)."""
    if out is None:
        return backend.xp.empty(shape, dtype=dtype)
    layout = " x ".join(str(s) for s in shape)
    device_array(backend, op, "out", out, layout=layout, dtypes=[dtype])
    if tuple(out.shape) != tuple(shape):
        raise InputError(f"{op}: out must have shape {tuple(shape)}, got {tuple(out.shape)}")
    return out


def host_offsets(op: str, offsets: Any, batch: int | None = None) -> np.ndarray:
    """Tile offsets (top, left) as a B x 2 int32 host array.

    Offsets are part of the tiling plan, which lives on the host; a device array is copied back.
    """
    if hasattr(offsets, "__cuda_array_interface__"):
        offsets = offsets.get() if hasattr(offsets, "get") else offsets.cpu()  # CuPy array or CUDA tensor
    array = np.asarray(offsets)
    if array.ndim != 2 or array.shape[1] != 2 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{op}: offsets must be integer (top, left) pairs of shape B x 2; got {describe(array)}")
    if batch is not None and array.shape[0] != batch:
        raise InputError(f"{op}: offsets has {array.shape[0]} rows but there are {batch} tiles")
    if array.size and (array.min() < -(2**31) or array.max() >= 2**31):
        raise InputError(f"{op}: offsets must fit in int32")
    return np.ascontiguousarray(array, dtype=np.int32)


def planes_grid(columns: int, rows: int, planes: int, block: int = BLOCK_ROW) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Grid and block for kernels whose x covers columns, y rows and z planes (both strided)."""
    return ((max(1, -(-columns // block)), max(1, min(rows, MAX_GRID_YZ)), max(1, min(planes, MAX_GRID_YZ))),
            (block, 1, 1))


def positive_int(op: str, name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{op}: {name} must be a positive integer, got {value!r}")
    return int(value)


def tile_shape(op: str, tile: Any) -> tuple[int, int]:
    """A tile size given as T (square) or (height, width): (height, width), positive integers."""
    if isinstance(tile, (tuple, list)):
        if len(tile) != 2:
            raise InputError(f"{op}: tile must be T or (height, width), got {tile!r}")
        return positive_int(op, "tile height", tile[0]), positive_int(op, "tile width", tile[1])
    size = positive_int(op, "tile", tile)
    return size, size
