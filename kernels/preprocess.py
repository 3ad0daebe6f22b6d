"""Tile preprocessing in one pass (preprocess.cu).

preprocess_tiles(image, offsets, tile, mean, std, dtype=float32) -> B x 3 x T x T:
    image: H x W x 3 RGB, uint8, uint16 or float32 (already in [0, 1]); offsets: B x 2 integer
    (top, left) of each tile, which may reach past any edge: pixels outside come from reflection
    padding with NumPy's mode="reflect" (no edge repeat, like torch's reflect pad; continued
    periodically for tiles far outside);
    out[b, c] = (pixel / unit - mean[c]) / std[c] in float32 or float16, unit = 255, 65535 or 1
    (two correctly rounded float32 divisions, in the kernel and in the reference alike).
Offsets are tiling-plan data and live on the host (a device array is copied back).

preprocess_tiles_reference is also the pipeline's host preprocessing (runtime/pixel_ops.py); it
takes rectangular tiles too, tile=(height, width) (the pipeline's whole-image mode, which runs on
the host), where the kernel takes square ones.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mattrt.errors import InputError
from mattrt.kernels.launch import (
    Backend,
    cupy_backend,
    device_array,
    host_array,
    host_offsets,
    output_array,
    planes_grid,
    positive_int,
    tile_shape,
)

SOURCE = "preprocess.cu"
OP = "preprocess_tiles"
OUTPUT_DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}
# Image dtype -> (kernel suffix, the divisor that brings its pixels to [0, 1]).
IMAGE_DTYPES = {np.dtype(np.uint8): ("u8", 255.0), np.dtype(np.uint16): ("u16", 65535.0),
                np.dtype(np.float32): ("f32", 1.0)}


def _check_statistics(mean: Sequence[float], std: Sequence[float], dtype: Any) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    stats = []
    for name, values in (("mean", mean), ("std", std)):
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (3,) or not np.isfinite(array).all():
            raise InputError(f"{OP}: {name} must be 3 finite numbers (R, G, B), got {values!r}")
        stats.append(array.astype(np.float32))
    if (stats[1] == 0).any():
        raise InputError(f"{OP}: std must be non-zero, got {std!r}")
    try:
        out_dtype = np.dtype(dtype)
    except TypeError:
        out_dtype = None
    if out_dtype not in OUTPUT_DTYPES:
        raise InputError(f"{OP}: dtype must be float32 or float16, got {dtype!r}")
    return stats[0], stats[1], out_dtype


def _check_image(image: Any) -> None:
    if int(image.shape[2]) != 3 or min(int(image.shape[0]), int(image.shape[1])) < 1:
        raise InputError(f"{OP}: image must be H x W x 3 RGB (uint8, uint16 or float32), got shape {tuple(image.shape)}")


def reflect_indices(indices: np.ndarray, size: int) -> np.ndarray:
    """Integer coordinates mapped onto [0, size) by reflection without edge repeat (NumPy's
    mode="reflect", period 2 (size - 1), continued for coordinates far outside); an axis of
    length 1 repeats its only pixel. The kernel's reflection rule."""
    indices = np.asarray(indices, dtype=np.int64)
    if size < 1:
        raise InputError(f"reflect_indices: size must be positive, got {size}")
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    folded = np.mod(indices, period)
    return np.where(folded < size, folded, period - folded)


def tile_indices(offsets: Any, tile: Any, height: int, width: int, op: str = OP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """B x 2 int64 offsets, and the reflected image rows (B x th) and columns (B x tw) of each tile."""
    offsets = host_offsets(op, offsets).astype(np.int64)
    tile_h, tile_w = tile_shape(op, tile)
    rows = reflect_indices(offsets[:, :1] + np.arange(tile_h, dtype=np.int64), height)
    cols = reflect_indices(offsets[:, 1:] + np.arange(tile_w, dtype=np.int64), width)
    return offsets, rows, cols


def preprocess_tiles_reference(image: np.ndarray, offsets: Any, tile: Any, mean: Sequence[float],
                               std: Sequence[float], dtype: Any = np.float32) -> np.ndarray:
    """NumPy reference: tiles gathered through reflected coordinates, one float32 crop at a time
    (memory bounded by the tiles, never a padded copy of the image)."""
    image = host_array(OP, "image", image, layout="H x W x 3", dtypes=tuple(IMAGE_DTYPES))
    _check_image(image)
    mean32, std32, out_dtype = _check_statistics(mean, std, dtype)
    offsets, rows, cols = tile_indices(offsets, tile, image.shape[0], image.shape[1])
    unit = np.float32(IMAGE_DTYPES[image.dtype][1])
    out = np.empty((len(offsets), 3, rows.shape[1], cols.shape[1]), dtype=out_dtype)
    for b in range(len(offsets)):
        crop = image[rows[b][:, None], cols[b][None, :]].astype(np.float32)  # th x tw x 3
        crop /= unit
        crop -= mean32
        crop /= std32
        out[b] = crop.transpose(2, 0, 1)
    return out


def normalisation_table(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The 3 x 256 float32 results of (v / 255 - mean[c]) / std[c], in the reference's arithmetic."""
    values = np.arange(256, dtype=np.float32)[None, :] / np.float32(255)
    return np.ascontiguousarray((values - mean[:, None]) / std[:, None], dtype=np.float32)


def launch(backend: Backend, image: Any, offsets: Any, tile: int, mean: Sequence[float], std: Sequence[float],
           dtype: Any = np.float32, *, out: Any = None) -> Any:
    image = device_array(backend, OP, "image", image, layout="H x W x 3", dtypes=tuple(IMAGE_DTYPES))
    _check_image(image)
    tile = positive_int(OP, "tile", tile)
    mean32, std32, out_dtype = _check_statistics(mean, std, dtype)
    suffix, unit = IMAGE_DTYPES[np.dtype(image.dtype)]
    host = host_offsets(OP, offsets)
    batch = host.shape[0]
    height, width = int(image.shape[0]), int(image.shape[1])
    out = output_array(backend, OP, out, (batch, 3, tile, tile), out_dtype)
    if batch == 0:
        return out
    grid, block = planes_grid(tile, tile, batch)
    if suffix == "u8":
        table = normalisation_table(mean32, std32)
    else:  # the kernel divides: it reads the statistics and the unit
        table = np.concatenate([mean32, std32, np.float32([unit])]).astype(np.float32)
    backend.launch(SOURCE, f"preprocess_tiles_{suffix}_{OUTPUT_DTYPES[out_dtype]}", grid, block,
                   (image, backend.from_host(host), backend.from_host(table), out, np.int64(batch), np.int64(tile), np.int64(height),
                    np.int64(width)))
    return out


def preprocess_tiles(image: Any, offsets: Any, tile: int, mean: Sequence[float], std: Sequence[float],
                     dtype: Any = np.float32, *, out: Any = None) -> Any:
    """CuPy launcher (same signature and result as preprocess_tiles_reference)."""
    return launch(cupy_backend(), image, offsets, tile, mean, std, dtype, out=out)
