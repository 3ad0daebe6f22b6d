"""Grey erosion and dilation of trimap masks with a square (2r+1) x (2r+1) window (morphology.cu).

erode(mask, radius) / dilate(mask, radius): mask is H x W or N x C x H x W, float32 or uint8;
the window is clipped at the borders (samples outside are ignored), which equals
scipy.ndimage.grey_erosion / grey_dilation(size=(2r+1, 2r+1), mode="nearest") per plane.
The GPU runs two separable passes (rows, then columns); radius 0 returns a copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mattrt.errors import InputError
from mattrt.kernels.launch import Backend, cupy_backend, describe, device_array, host_array, output_array, planes_grid

SOURCE = "morphology.cu"
DTYPES = (np.float32, np.uint8)
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.uint8): "u8"}
_LAYOUTS = ("H x W", "N x C x H x W")


def _radius(op: str, radius: Any) -> int:
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise InputError(f"{op}: radius must be a non-negative integer, got {radius!r}")
    return int(radius)


def _layout(op: str, mask: Any) -> str:
    if getattr(mask, "ndim", None) not in (2, 4):
        raise InputError(f"{op}: mask must be H x W or N x C x H x W with dtype float32 or uint8; got {describe(mask)}")
    return _LAYOUTS[0] if mask.ndim == 2 else _LAYOUTS[1]


def _filter_reference(op: str, mask: Any, radius: Any, reduce: np.ufunc) -> np.ndarray:
    array = mask if hasattr(mask, "__cuda_array_interface__") else np.asarray(mask)
    mask = host_array(op, "mask", array, layout=_layout(op, array), dtypes=DTYPES)
    r = _radius(op, radius)
    result = mask.copy()
    for axis in (-1, -2):  # separable: rows, then columns
        size = result.shape[axis]
        source = result
        result = source.copy()
        for shift in range(1, min(r, size - 1) + 1):
            lower = [slice(None)] * source.ndim
            upper = [slice(None)] * source.ndim
            # out[i] = reduce(out[i], src[i + shift]) and reduce(out[i], src[i - shift]), clipped
            lower[axis], upper[axis] = slice(0, size - shift), slice(shift, size)
            result[tuple(lower)] = reduce(result[tuple(lower)], source[tuple(upper)])
            result[tuple(upper)] = reduce(result[tuple(upper)], source[tuple(lower)])
    return result


def erode_reference(mask: np.ndarray, radius: int) -> np.ndarray:
    """NumPy reference: min over the clipped (2r+1)^2 window."""
    return _filter_reference("erode", mask, radius, np.minimum)


def dilate_reference(mask: np.ndarray, radius: int) -> np.ndarray:
    """NumPy reference: max over the clipped (2r+1)^2 window."""
    return _filter_reference("dilate", mask, radius, np.maximum)


def launch(backend: Backend, mask: Any, radius: int, *, take_max: bool, out: Any = None) -> Any:
    op = "dilate" if take_max else "erode"
    mask = device_array(backend, op, "mask", mask, layout=_layout(op, mask), dtypes=DTYPES)
    r = _radius(op, radius)
    height, width = int(mask.shape[-2]), int(mask.shape[-1])
    planes = int(np.prod(mask.shape[:-2], dtype=np.int64)) if mask.ndim == 4 else 1
    out = output_array(backend, op, out, tuple(int(s) for s in mask.shape), mask.dtype)
    if out.size == 0:
        return out
    kernel = f"morphology_pass_{_SUFFIX[np.dtype(mask.dtype)]}"
    grid, block = planes_grid(width, height, planes)
    rows = backend.xp.empty_like(mask)
    common = (np.int64(planes), np.int64(height), np.int64(width), np.int64(r))
    backend.launch(SOURCE, kernel, grid, block, (mask, rows, *common, np.int32(0), np.int32(int(take_max))))
    backend.launch(SOURCE, kernel, grid, block, (rows, out, *common, np.int32(1), np.int32(int(take_max))))
    return out


def erode(mask: Any, radius: int, *, out: Any = None) -> Any:
    """CuPy launcher of erode (same signature and result as erode_reference)."""
    return launch(cupy_backend(), mask, radius, take_max=False, out=out)


def dilate(mask: Any, radius: int, *, out: Any = None) -> Any:
    """CuPy launcher of dilate (same signature and result as dilate_reference)."""
    return launch(cupy_backend(), mask, radius, take_max=True, out=out)
