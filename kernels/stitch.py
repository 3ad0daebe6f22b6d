"""Window-weighted stitching of alpha tiles (stitch.cu).

stitch_accumulate(acc, weight_sum, tiles, window, offsets, window_index=None) adds, in place and
in batch order, window_b * tile_b to acc and window_b to weight_sum over the pixels tile b covers:
    acc, weight_sum: H x W float32 accumulators (start at zero for a new image);
    tiles: B x T x T float32 or float16 alpha tiles;
    window: the blending weights (float32), one of
        T x T      one window for every tile (window_index must be None);
        K x T x T  a stack of windows; window_index (B integers in [0, K)) picks tile b's
                   window, or, when window_index is None, K must be B (one window per tile).
               A tiling plan's tiles use at most 9 distinct windows (TilePlan.window_stack), so a
               stack plus an index moves far fewer bytes than one window per tile.
    offsets: B x 2 integer (top, left) of each tile in the image; tiles may reach past any
             edge and are clipped.
    Offsets and window indices are tiling-plan data and live on the host (a device array is
    copied back): the launcher needs them to size the launch and checks them there.
The kernel gathers (one thread per image pixel, tiles visited in batch order), so the sums are
bit-identical to the NumPy reference and to each other run to run.

stitch_finalize(acc, weight_sum, dtype, *, uncovered="error", clamp=True) -> H x W alpha:
    alpha = clamp(acc / weight_sum, 0, 1) as uint8 (rint(alpha * 255)), uint16 (rint(alpha *
    65535)) or float32, rounding half to even: mattrt.imageio.quantise's rule, the one every
    float-to-integer conversion of mattrt uses; clamp=False (float32 only) keeps the plain ratio,
    the stitched raw alpha that a fusion step clamps later. A pixel with weight_sum <= 0 (no tile
    covered it) is an error naming the first such pixel (uncovered="error", the default), or 0
    (uncovered="zero"). The kernel always writes 0 there and records the first such pixel in a
    flag; the launcher reads the flag (one synchronisation) only when asked to raise.

The references are the pipeline's host stitching too (runtime/pixel_ops.py); stitch_accumulate_reference
also takes rectangular B x th x tw tiles (the pipeline's whole-image mode, which runs on the
host), where the kernel takes square ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mattrt.errors import InputError
from mattrt.imageio import quantise
from mattrt.kernels.launch import (
    BLOCK_ROW,
    MAX_GRID_YZ,
    Backend,
    cupy_backend,
    describe,
    device_array,
    host_array,
    host_offsets,
    output_array,
    planes_grid,
)

SOURCE = "stitch.cu"
TILES_PER_LAUNCH = 64  # the kernel's per-column tile mask has 64 bits
ROWS_PER_THREAD = 8  # each thread reuses its column's tile mask over this many rows
TILE_DTYPES = (np.float32, np.float16)
OUTPUT_DTYPES = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16", np.dtype(np.float32): "f32"}
UNCOVERED = ("error", "zero")
_TILE_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}


def _check_accumulate(acc: Any, weight_sum: Any, tiles: Any, window: Any, offsets: Any,
                      window_index: Any) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Host offsets (B x 2 int32), host window indices (B int32), batch, tile height and width."""
    op = "stitch_accumulate"
    if tuple(weight_sum.shape) != tuple(acc.shape):
        raise InputError(f"{op}: weight_sum must have acc's shape {tuple(acc.shape)}, got {tuple(weight_sum.shape)}")
    batch, tile_h, tile_w = (int(s) for s in tiles.shape)
    expected = f"T x T = {(tile_h, tile_w)} like the tiles, or K x T x T"
    if window.ndim not in (2, 3) or tuple(window.shape[-2:]) != (tile_h, tile_w):
        raise InputError(f"{op}: window must be {expected}, got {tuple(window.shape)}")
    host = host_offsets(op, offsets, batch)
    kinds = 1 if window.ndim == 2 else int(window.shape[0])
    if window_index is None:
        if window.ndim == 3 and kinds != batch:
            raise InputError(f"{op}: a stack of {kinds} windows needs window_index (one per tile), "
                             f"or exactly one window per tile ({batch})")
        index = np.zeros(batch, np.int32) if window.ndim == 2 else np.arange(batch, dtype=np.int32)
    else:
        if window.ndim == 2:
            raise InputError(f"{op}: window_index picks windows from a K x T x T stack; "
                             f"the window is one T x T window {tuple(window.shape)}")
        index = host_window_index(op, window_index, batch, kinds)
    return host, index, batch, tile_h, tile_w


def host_window_index(op: str, window_index: Any, batch: int, kinds: int) -> np.ndarray:
    """window_index as B int32 on the host, each in [0, kinds)."""
    if hasattr(window_index, "__cuda_array_interface__"):
        window_index = window_index.get() if hasattr(window_index, "get") else window_index.cpu()
    index = np.asarray(window_index)
    if index.shape != (batch,) or not np.issubdtype(index.dtype, np.integer):
        raise InputError(f"{op}: window_index must be {batch} integers (one per tile); got {describe(index)}")
    if index.size and (index.min() < 0 or index.max() >= kinds):
        bad = int(np.flatnonzero((index < 0) | (index >= kinds))[0])
        raise InputError(f"{op}: window_index[{bad}] = {int(index[bad])} is not a window of the stack (0 .. {kinds - 1})")
    return np.ascontiguousarray(index, dtype=np.int32)


def _clipped(top: int, left: int, tile_h: int, tile_w: int, height: int, width: int) -> tuple[int, int, int, int] | None:
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + tile_h, height), min(left + tile_w, width)
    return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None


def stitch_accumulate_reference(acc: np.ndarray, weight_sum: np.ndarray, tiles: np.ndarray, window: np.ndarray,
                                offsets: Any, window_index: Any = None) -> None:
    """NumPy reference; updates acc and weight_sum in place."""
    op = "stitch_accumulate"
    for name, array in (("acc", acc), ("weight_sum", weight_sum)):
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 2:
            raise InputError(f"{op}: {name} must be an H x W float32 NumPy array (it is updated in place); "
                             f"got {describe(array)}")
    tiles = host_array(op, "tiles", tiles, layout="B x T x T", dtypes=TILE_DTYPES)
    window = host_array(op, "window", window, layout="K x T x T" if np.ndim(window) == 3 else "T x T",
                        dtypes=(np.float32,))
    offsets, index, _, tile_h, tile_w = _check_accumulate(acc, weight_sum, tiles, window, offsets, window_index)
    stack = window[None] if window.ndim == 2 else window
    height, width = acc.shape
    for b, (top, left) in enumerate(offsets.tolist()):
        box = _clipped(top, left, tile_h, tile_w, height, width)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        ty, tx = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
        weights = stack[index[b], ty, tx]
        acc[y0:y1, x0:x1] += tiles[b, ty, tx].astype(np.float32) * weights
        weight_sum[y0:y1, x0:x1] += weights


def launch_accumulate(backend: Backend, acc: Any, weight_sum: Any, tiles: Any, window: Any, offsets: Any,
                      window_index: Any = None) -> None:
    op = "stitch_accumulate"
    acc = device_array(backend, op, "acc", acc, layout="H x W", dtypes=(np.float32,))
    weight_sum = device_array(backend, op, "weight_sum", weight_sum, layout="H x W", dtypes=(np.float32,))
    tiles = device_array(backend, op, "tiles", tiles, layout="B x T x T", dtypes=TILE_DTYPES)
    window = device_array(backend, op, "window", window,
                          layout="K x T x T" if getattr(window, "ndim", 2) == 3 else "T x T",
                          dtypes=(np.float32,))
    host, index, batch, tile, tile_w = _check_accumulate(acc, weight_sum, tiles, window, offsets, window_index)
    if tile != tile_w:
        raise InputError(f"{op}: the kernel takes square tiles B x T x T, got {tuple(tiles.shape)}")
    stack = window[None] if window.ndim == 2 else window
    height, width = (int(s) for s in acc.shape)
    kernel = f"stitch_accumulate_{_TILE_SUFFIX[np.dtype(tiles.dtype)]}"
    # The kernel tracks the tiles crossing a column in a 64-bit mask: launch 64 tiles at a time,
    # in batch order, which keeps the summation order of the reference.
    for first in range(0, batch, TILES_PER_LAUNCH):
        part = host[first:first + TILES_PER_LAUNCH]
        boxes = [box for top, left in part.tolist() if (box := _clipped(top, left, tile, tile, height, width)) is not None]
        if not boxes:
            continue
        top, bottom = min(b[0] for b in boxes), max(b[1] for b in boxes)
        left, right = min(b[2] for b in boxes), max(b[3] for b in boxes)
        region_h, region_w = bottom - top, right - left
        grid = (-(-region_w // BLOCK_ROW), max(1, min(-(-region_h // ROWS_PER_THREAD), MAX_GRID_YZ)), 1)
        backend.launch(SOURCE, kernel, grid, (BLOCK_ROW, 1, 1),
                       (acc, weight_sum, tiles[first:first + TILES_PER_LAUNCH], stack,
                        backend.from_host(index[first:first + TILES_PER_LAUNCH]), backend.from_host(part),
                        np.int64(len(part)), np.int64(tile), np.int64(height), np.int64(width), np.int64(top),
                        np.int64(left), np.int64(region_h), np.int64(region_w)))


def _output_dtype(dtype: Any) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in OUTPUT_DTYPES:
        raise InputError(f"stitch_finalize: dtype must be uint8, uint16 or float32, got {dtype!r}")
    return resolved


def _uncovered_mode(uncovered: str) -> str:
    if uncovered not in UNCOVERED:
        raise InputError(f"stitch_finalize: uncovered must be one of {UNCOVERED}, got {uncovered!r}")
    return uncovered


def _uncovered_error(flat: int, width: int) -> InputError:
    y, x = divmod(flat, width)
    return InputError(f"stitch_finalize: pixel (y={y}, x={x}) has zero blending weight: no tile covered it "
                      "(check the tiling plan, or pass uncovered='zero' to accept 0 there)")


def _check_clamp(clamp: bool, dtype: np.dtype) -> None:
    if not clamp and dtype != np.float32:
        raise InputError(f"stitch_finalize: clamp=False keeps the raw ratio and needs dtype float32, got {dtype.name}")


def stitch_finalize_reference(acc: np.ndarray, weight_sum: np.ndarray, dtype: Any, *, uncovered: str = "error",
                              clamp: bool = True) -> np.ndarray:
    op = "stitch_finalize"
    acc = host_array(op, "acc", acc, layout="H x W", dtypes=(np.float32,))
    weight_sum = host_array(op, "weight_sum", weight_sum, layout="H x W", dtypes=(np.float32,))
    if weight_sum.shape != acc.shape:
        raise InputError(f"{op}: weight_sum must have acc's shape {acc.shape}, got {weight_sum.shape}")
    out_dtype = _output_dtype(dtype)
    _check_clamp(clamp, out_dtype)
    mode = _uncovered_mode(uncovered)
    covered = weight_sum > 0
    if mode == "error" and not covered.all():
        raise _uncovered_error(int(np.flatnonzero(~covered)[0]), acc.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = acc / np.where(covered, weight_sum, np.float32(1))
    if not clamp:
        return np.where(covered, ratio, np.float32(0)).astype(np.float32)
    # fmin/fmax ignore NaN like CUDA's fminf/fmaxf
    alpha = np.where(covered, np.fmin(np.fmax(ratio, np.float32(0)), np.float32(1)), np.float32(0)).astype(np.float32)
    if out_dtype == np.float32:
        return alpha
    return quantise(alpha, 8 if out_dtype == np.uint8 else 16, "alpha")


def launch_finalize(backend: Backend, acc: Any, weight_sum: Any, dtype: Any, *, uncovered: str = "error",
                    clamp: bool = True, out: Any = None) -> Any:
    op = "stitch_finalize"
    acc = device_array(backend, op, "acc", acc, layout="H x W", dtypes=(np.float32,))
    weight_sum = device_array(backend, op, "weight_sum", weight_sum, layout="H x W", dtypes=(np.float32,))
    if tuple(weight_sum.shape) != tuple(acc.shape):
        raise InputError(f"{op}: weight_sum must have acc's shape {tuple(acc.shape)}, got {tuple(weight_sum.shape)}")
    out_dtype = _output_dtype(dtype)
    _check_clamp(clamp, out_dtype)
    mode = _uncovered_mode(uncovered)
    height, width = (int(s) for s in acc.shape)
    out = output_array(backend, op, out, (height, width), out_dtype)
    if out.size == 0:
        return out
    first_uncovered = backend.from_host(np.full(1, np.iinfo(np.uint64).max, dtype=np.uint64))  # "none yet"
    grid, block = planes_grid(width, height, 1)
    kernel = f"stitch_finalize_{OUTPUT_DTYPES[out_dtype]}" if clamp else "stitch_finalize_ratio_f32"
    backend.launch(SOURCE, kernel, grid, block, (acc, weight_sum, out, first_uncovered, np.int64(height), np.int64(width)))
    if mode == "error":
        flat = int(backend.to_host(first_uncovered)[0])
        if flat != np.iinfo(np.uint64).max:
            raise _uncovered_error(flat, width)
    return out


def stitch_accumulate(acc: Any, weight_sum: Any, tiles: Any, window: Any, offsets: Any, window_index: Any = None) -> None:
    """CuPy launcher of stitch_accumulate (in place; same signature as the reference)."""
    launch_accumulate(cupy_backend(), acc, weight_sum, tiles, window, offsets, window_index)


def stitch_finalize(acc: Any, weight_sum: Any, dtype: Any, *, uncovered: str = "error", clamp: bool = True,
                    out: Any = None) -> Any:
    """CuPy launcher of stitch_finalize (same signature and result as the reference)."""
    return launch_finalize(cupy_backend(), acc, weight_sum, dtype, uncovered=uncovered, clamp=clamp, out=out)
