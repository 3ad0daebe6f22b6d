"""max_unpool2d: PyTorch's max-unpooling with deterministic repeated indices (max_unpool.cu).

Semantics: x and indices are N x C x H x W; each index is a flat position in its own
H_out x W_out output plane; the output is zero except where an input lands. When several
inputs of a plane hold the same index (overlapping 3x3/stride-2 pools, as in AIM), the one
that comes last in row-major input order wins. That is what PyTorch's CPU kernel does on one
thread (it walks the input in order and overwrites; with several threads the winner across a
chunk boundary is a race). An index outside the plane is an error naming the first one (in
row-major input order); nothing is ever written out of bounds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mattrt.errors import InputError
from mattrt.kernels.launch import (
    BLOCK_1D,
    MAX_GRID_YZ,
    Backend,
    cupy_backend,
    device_array,
    host_array,
    output_array,
    positive_int,
)

SOURCE = "max_unpool.cu"
OP = "max_unpool2d"
VALUE_DTYPES = (np.float32, np.float16)
INDEX_DTYPES = (np.int64, np.int32)
_VALUE_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
_INDEX_SUFFIX = {np.dtype(np.int64): "i64", np.dtype(np.int32): "i32"}


def _output_size(output_size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = output_size
    except (TypeError, ValueError):
        raise InputError(f"{OP}: output_size must be (H_out, W_out), got {output_size!r}") from None
    return positive_int(OP, "output_size[0]", height), positive_int(OP, "output_size[1]", width)


def _check_shapes(x: Any, indices: Any) -> None:
    if tuple(indices.shape) != tuple(x.shape):
        raise InputError(f"{OP}: indices must have the shape of x {tuple(x.shape)}, got {tuple(indices.shape)}")


def _bad_index_error(indices: np.ndarray | Any, flat: int, output_size: tuple[int, int]) -> InputError:
    n, c, h, w = np.unravel_index(flat, indices.shape)
    value = int(indices[n, c, h, w])
    height, width = output_size
    return InputError(
        f"{OP}: index {value} at input position (n={n}, c={c}, h={h}, w={w}) is outside the "
        f"{height} x {width} output plane (valid: 0 .. {height * width - 1})"
    )


def max_unpool2d_reference(x: np.ndarray, indices: np.ndarray, output_size: Sequence[int]) -> np.ndarray:
    """NumPy reference: N x C x H x W values and indices -> N x C x H_out x W_out."""
    x = host_array(OP, "x", x, layout="N x C x H x W", dtypes=VALUE_DTYPES)
    indices = host_array(OP, "indices", indices, layout="N x C x H x W", dtypes=INDEX_DTYPES)
    _check_shapes(x, indices)
    out_h, out_w = _output_size(output_size)
    n, c, h, w = x.shape
    plane = out_h * out_w
    flat_indices = indices.reshape(n * c, h * w).astype(np.int64)
    bad = (flat_indices < 0) | (flat_indices >= plane)
    if bad.any():
        raise _bad_index_error(indices, int(np.flatnonzero(bad)[0]), (out_h, out_w))
    out = np.zeros(n * c * plane, dtype=x.dtype)
    targets = (np.arange(n * c, dtype=np.int64)[:, None] * plane + flat_indices).ravel()
    # The last occurrence of each target in input order is the first one in reversed order.
    unique_targets, first_reversed = np.unique(targets[::-1], return_index=True)
    winners = targets.size - 1 - first_reversed
    out[unique_targets] = x.reshape(-1)[winners]
    return out.reshape(n, c, out_h, out_w)


def launch(backend: Backend, x: Any, indices: Any, output_size: Sequence[int], *, out: Any = None,
           check: bool = True) -> Any:
    """Run the two passes on `backend` (CuPy or the host emulation).

    With check=True (default) a bad index raises InputError; that reads one value back from the
    device (a synchronisation). With check=False bad indices are skipped silently.
    """
    x = device_array(backend, OP, "x", x, layout="N x C x H x W", dtypes=VALUE_DTYPES)
    indices = device_array(backend, OP, "indices", indices, layout="N x C x H x W", dtypes=INDEX_DTYPES)
    _check_shapes(x, indices)
    out_h, out_w = _output_size(output_size)
    n, c, h, w = (int(s) for s in x.shape)
    planes, input_plane, output_plane = n * c, h * w, out_h * out_w
    if input_plane >= 2**31 - 1:
        raise InputError(f"{OP}: an input plane of {h} x {w} is too large (the winner pass stores positions as int32)")
    xp = backend.xp
    out = output_array(backend, OP, out, (n, c, out_h, out_w), x.dtype)
    if x.size == 0 or out.size == 0:
        if out.size:
            out[...] = 0
        return out
    winner = xp.zeros((planes, output_plane), dtype=np.int32)
    first_bad = backend.from_host(np.full(1, np.iinfo(np.uint64).max, dtype=np.uint64))  # "none yet"
    scalars = (np.int64(planes), np.int64(input_plane), np.int64(output_plane))
    rows = max(1, min(planes, MAX_GRID_YZ))
    backend.launch(SOURCE, f"max_unpool_winner_{_INDEX_SUFFIX[np.dtype(indices.dtype)]}",
                   (-(-input_plane // BLOCK_1D), rows, 1), (BLOCK_1D, 1, 1), (indices, winner, first_bad, *scalars))
    backend.launch(SOURCE, f"max_unpool_gather_{_VALUE_SUFFIX[np.dtype(x.dtype)]}",
                   (-(-output_plane // BLOCK_1D), rows, 1), (BLOCK_1D, 1, 1), (x, winner, out, *scalars))
    if check:
        flat = int(backend.to_host(first_bad)[0])
        if flat != np.iinfo(np.uint64).max:
            raise _bad_index_error(backend.to_host(indices), flat, (out_h, out_w))
    return out


def max_unpool2d(x: Any, indices: Any, output_size: Sequence[int], *, out: Any = None, check: bool = True) -> Any:
    """CuPy launcher: same signature and result as max_unpool2d_reference, on CuPy arrays."""
    return launch(cupy_backend(), x, indices, output_size, out=out, check=check)
