"""Trimap fusion in one pass (trimap_fusion.cu; the module is named fusion to keep the function name free).

trimap_fusion(trimap, detail, kind, *, logits=False, band=None, clamp=False):
    trimap: N x 3 x h x w low-resolution trimap (background, unknown, foreground), logits or
            probabilities, float32 or float16;
    detail: N x 1 x H x W raw alpha of the detail stage, float32 or float16;
    returns N x 1 x H x W alpha in detail's dtype, equal to
        FUSIONS[kind](softmax?(F.interpolate(trimap, (H, W), mode="bilinear", align_corners=False)), detail)
    with the softmax over the classes only when logits=True (models/fusion.py has the formulas;
mattrt/fusion_kinds.py lists the kinds and their kernel codes),
    clamped to [0, 1] when clamp=True (the pipeline's final alpha).
    band=(first_row, full_height): detail and the result are rows [first_row, first_row + H) of
    an image of full_height rows; the trimap is upsampled to full_height x W and those rows are
    used (a pipeline fuses band by band as stitching releases rows). Default: (0, H).
Without logits the kernel equals the reference bit for bit (no fused multiply-adds). The
reference is the pipeline's host fusion too (runtime/pixel_ops.py), and bilinear_taps /
upsample_region its bilinear resampling of the low-resolution trimap. The softmax uses
the hardware exp on the GPU (about 1e-6 relative error): float tolerance there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mattrt.errors import InputError
from mattrt.fusion_kinds import FUSION_KINDS, fusion_kind
from mattrt.kernels.launch import Backend, cupy_backend, device_array, host_array, output_array, planes_grid

SOURCE = "trimap_fusion.cu"
OP = "trimap_fusion"
DTYPES = (np.float32, np.float16)
_SUFFIX = {np.dtype(np.float32): "32", np.dtype(np.float16): "16"}


def _band(band: Any, height: int) -> tuple[int, int]:
    """(first_row, full_height) of a band of `height` rows; (0, height) when band is None."""
    if band is None:
        return 0, height
    try:
        first, full = (int(v) for v in band)
    except (TypeError, ValueError):
        raise InputError(f"{OP}: band must be (first_row, full_height), got {band!r}") from None
    if first < 0 or full < 1 or first + height > full:
        raise InputError(f"{OP}: band rows [{first}, {first + height}) do not lie inside an image of {full} rows")
    return first, full


def _check(trimap: Any, detail: Any) -> tuple[int, int, int, int, int]:
    n, classes, low_h, low_w = (int(s) for s in trimap.shape)
    if classes != 3:
        raise InputError(f"{OP}: trimap must be N x 3 x h x w (background, unknown, foreground), got {tuple(trimap.shape)}")
    dn, dc, height, width = (int(s) for s in detail.shape)
    if dn != n or dc != 1:
        raise InputError(f"{OP}: detail must be N x 1 x H x W with N = {n} (the trimap's), got {tuple(detail.shape)}")
    if min(low_h, low_w, height, width) < 1:
        raise InputError(f"{OP}: empty spatial size (trimap {tuple(trimap.shape)}, detail {tuple(detail.shape)})")
    if 3 * low_h * low_w >= 2**31:
        raise InputError(f"{OP}: a low-resolution trimap of {low_h} x {low_w} is too large (3*h*w must be < 2^31)")
    return n, low_h, low_w, height, width


def bilinear_taps(indices: np.ndarray, in_size: int, out_size: int) -> tuple[np.ndarray, ...]:
    """Source taps of output coordinates `indices` (any shape) when resizing in_size -> out_size
    bilinearly with align_corners=False: lower index, upper index and their weights.

    PyTorch's rule in float32: src = max((in / out) * (dst + 0.5) - 0.5, 0), lo = floor(src)
    clamped to the last input, hi = min(lo + 1, in - 1), w_hi = src - lo (always in [0, 1)).
    PyTorch's compiled kernels evaluate src as one fused multiply-add (one rounding); in float64
    the product of two float32 values and (for every src not clamped to 0) the subtraction are
    exact, so rounding once to float32 reproduces it.
    """
    indices = np.asarray(indices, dtype=np.int64)
    scale = np.float32(in_size) / np.float32(out_size)
    half_steps = (indices.astype(np.float32) + np.float32(0.5)).astype(np.float64)
    src = (np.float64(scale) * half_steps - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    lo = np.minimum(src.astype(np.int64), in_size - 1)  # src >= 0: truncation is floor
    hi = np.minimum(lo + 1, in_size - 1)
    w_hi = (src - lo.astype(np.float32)).astype(np.float32)
    w_lo = (np.float32(1) - w_hi).astype(np.float32)
    return lo, hi, w_lo, w_hi


def upsample_region(low: np.ndarray, out_height: int, out_width: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """... x h x w maps -> ... x len(rows) x len(cols) float32: the pixels (rows x cols) of the maps
    resized to out_height x out_width, i.e. F.interpolate(low, (out_height, out_width),
    mode="bilinear", align_corners=False)[..., rows, :][..., cols] without building the
    full-size maps (the kernel's upsampling, the same float32 operations in the same order)."""
    if low.ndim < 2:
        raise InputError(f"upsample_region: expected ... x h x w maps, got shape {low.shape}")
    low = np.asarray(low, dtype=np.float32)
    return resample(low, bilinear_taps(rows, low.shape[-2], out_height), bilinear_taps(cols, low.shape[-1], out_width))


def resample(low: Any, row_taps: tuple, col_taps: tuple) -> Any:
    """... x h x w float32 maps gathered at bilinear taps (bilinear_taps' four arrays per axis,
    1-D): rows first, then columns, then the vertical blend. Only indexing and arithmetic, so the
    maps and taps may be NumPy or CuPy arrays alike (the device pixel ops gather guidance tiles
    on the GPU with it)."""
    y_lo, y_hi, wy_lo, wy_hi = row_taps
    x_lo, x_hi, wx_lo, wx_hi = col_taps
    top = low[..., y_lo, :]
    bottom = low[..., y_hi, :]
    top = top[..., x_lo] * wx_lo + top[..., x_hi] * wx_hi
    bottom = bottom[..., x_lo] * wx_lo + bottom[..., x_hi] * wx_hi
    return (wy_lo[:, None] * top + wy_hi[:, None] * bottom).astype(np.float32)


# models/fusion.py's formulas in NumPy float32 on (background, unknown, foreground, detail), one
# per kind of mattrt/fusion_kinds.py; trimap_fusion.cu computes the same operations by kind code.
def _unknown_blend(background, unknown, foreground, detail):
    return foreground + unknown * detail


def _aim_soft(background, unknown, foreground, detail):
    total = np.maximum((background + unknown) + foreground, np.float32(1e-6))
    unified = (np.float32(0.5) * unknown + foreground) / total
    confidence = np.float32(2) * np.abs(unified - np.float32(0.5))
    return (np.float32(1) - confidence) * detail + confidence * unified


def _argmax_trimap(background, unknown, foreground, detail):
    is_unknown = (unknown > background) & (unknown >= foreground)
    is_foreground = (foreground > background) & (foreground > unknown)
    alpha = np.where(is_unknown, np.clip(detail, np.float32(0), np.float32(1)), np.float32(0))
    return np.where(is_foreground, np.float32(1), alpha)


_FORMULAS = {"unknown_blend": _unknown_blend, "aim_soft": _aim_soft, "argmax_trimap": _argmax_trimap}
NUMPY_FUSIONS = {name: _FORMULAS[name] for name in FUSION_KINDS}  # a kind without a formula fails at import


def fuse(probabilities: np.ndarray, detail: np.ndarray, kind: str) -> np.ndarray:
    """The fusion formula of `kind` in NumPy float32 (probabilities N x 3 x H x W, detail N x 1 x H x W)."""
    formula = NUMPY_FUSIONS[fusion_kind(kind).name]
    background, unknown, foreground = probabilities[:, 0:1], probabilities[:, 1:2], probabilities[:, 2:3]
    return formula(background, unknown, foreground, detail).astype(np.float32)


def trimap_fusion_reference(trimap: np.ndarray, detail: np.ndarray, kind: str, *, logits: bool = False,
                            band: Any = None, clamp: bool = False) -> np.ndarray:
    """NumPy reference: upsample, optional softmax, fusion formula, optional clamp; float32 math,
    detail's dtype out."""
    trimap = host_array(OP, "trimap", trimap, layout="N x 3 x h x w", dtypes=DTYPES)
    detail = host_array(OP, "detail", detail, layout="N x 1 x H x W", dtypes=DTYPES)
    fusion_kind(kind)
    _, _, _, height, width = _check(trimap, detail)
    first, full = _band(band, height)
    probabilities = upsample_region(trimap, full, width, np.arange(first, first + height), np.arange(width))
    if logits:
        e = np.exp(probabilities - probabilities.max(axis=1, keepdims=True))
        probabilities = e / e.sum(axis=1, keepdims=True)
    alpha = fuse(probabilities, detail.astype(np.float32), kind)
    if clamp:
        alpha = np.fmin(np.fmax(alpha, np.float32(0)), np.float32(1))
    return alpha.astype(detail.dtype)


def launch(backend: Backend, trimap: Any, detail: Any, kind: str, *, logits: bool = False, band: Any = None,
           clamp: bool = False, out: Any = None) -> Any:
    trimap = device_array(backend, OP, "trimap", trimap, layout="N x 3 x h x w", dtypes=DTYPES)
    detail = device_array(backend, OP, "detail", detail, layout="N x 1 x H x W", dtypes=DTYPES)
    code = fusion_kind(kind).code
    n, low_h, low_w, height, width = _check(trimap, detail)
    first, full = _band(band, height)
    out = output_array(backend, OP, out, (n, 1, height, width), detail.dtype)
    name = f"trimap_fusion_t{_SUFFIX[np.dtype(trimap.dtype)]}_d{_SUFFIX[np.dtype(detail.dtype)]}"
    grid, block = planes_grid(width, height, n)
    backend.launch(SOURCE, name, grid, block,
                   (trimap, detail, out, np.int64(n), np.int64(low_h), np.int64(low_w), np.int64(height),
                    np.int64(width), np.int64(first), np.int64(full), np.int32(code), np.int32(1 if logits else 0),
                    np.int32(1 if clamp else 0)))
    return out


def trimap_fusion(trimap: Any, detail: Any, kind: str, *, logits: bool = False, band: Any = None, clamp: bool = False,
                  out: Any = None) -> Any:
    """CuPy launcher (same signature and result as trimap_fusion_reference)."""
    return launch(cupy_backend(), trimap, detail, kind, logits=logits, band=band, clamp=clamp, out=out)
