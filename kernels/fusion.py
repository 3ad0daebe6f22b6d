"""Trimap fusion in one pass (trimap_fusion.cu; the module is named fusion to keep the function name free).

trimap_fusion(trimap, detail, kind, *, logits=False, band=None, clamp=False):
    trimap: N x 3 x h x w low-resolution trimap (background, unknown, foreground), logits or
            probabilities, float32 or float16;
    detail: N x 1 x H x W raw alpha of the detail stage, float32 or float16;
    returns N x 1 x H x W alpha in detail's dtype, equal to
        FUSIONS[kind](softmax?(F.interpolate(trimap, (H, W), mode="bilinear", align_corners=False)), detail)
    with the softmax over the classes only when logits=True (models/fusion.py has the formulas),
    clamped to [0, 1] when clamp=True (the pipeline's final alpha).
    band=(first_row, full_height): detail and the result are rows [first_row, first_row + H) of
    an image of full_height rows; the trimap is upsampled to full_height x W and those rows are
    used (a pipeline fuses band by band as stitching releases rows). Default: (0, H).
Without logits the kernel equals the reference bit for bit (no fused multiply-adds; the
pipeline's CPU fusion, runtime/ops.py, computes the same float32 operations). The softmax uses
the hardware exp on the GPU (about 1e-6 relative error): float tolerance there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mattrt.errors import InputError
from mattrt.kernels.launch import Backend, cupy_backend, device_array, host_array, output_array, planes_grid

SOURCE = "trimap_fusion.cu"
OP = "trimap_fusion"
DTYPES = (np.float32, np.float16)
KINDS = {"unknown_blend": 0, "aim_soft": 1, "argmax_trimap": 2}
_SUFFIX = {np.dtype(np.float32): "32", np.dtype(np.float16): "16"}


def _kind_code(kind: str) -> int:
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise InputError(f"{OP}: unknown fusion kind {kind!r}; known: {', '.join(KINDS)}") from None


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


def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear source taps (lo, hi) and weights (w_lo, w_hi) along one axis, align_corners=False.

    PyTorch's rule in float32: src = (in/out) * (dst + 0.5) - 0.5, clamped at 0; the lower tap is
    floor(src) clamped to the last input; its weight is src - lo clamped to [0, 1]. PyTorch's
    compiled kernels evaluate src as one fused multiply-add (one rounding); in float64 the
    product of two float32 values and (for every src that is not clamped to 0) the subtraction
    are exact, so rounding once to float32
    reproduces it.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    shifted = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(scale) * shifted.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = lo + (lo < in_size - 1)
    w_hi = np.clip(src - lo.astype(np.float32), np.float32(0), np.float32(1))
    return lo, hi, (np.float32(1) - w_hi).astype(np.float32), w_hi.astype(np.float32)


def upsample_bilinear(low: np.ndarray, height: int, width: int, rows: slice = slice(None)) -> np.ndarray:
    """float32 N x C x h x w -> N x C x H x W, F.interpolate(mode="bilinear", align_corners=False);
    only the output rows `rows` when given."""
    y_lo, y_hi, wy_lo, wy_hi = (taps[rows] for taps in linear_taps(low.shape[2], height))
    x_lo, x_hi, wx_lo, wx_hi = linear_taps(low.shape[3], width)
    top = low[:, :, y_lo, :]
    bottom = low[:, :, y_hi, :]
    top = top[..., x_lo] * wx_lo + top[..., x_hi] * wx_hi
    bottom = bottom[..., x_lo] * wx_lo + bottom[..., x_hi] * wx_hi
    return (top * wy_lo[:, None] + bottom * wy_hi[:, None]).astype(np.float32)


def fuse(probabilities: np.ndarray, detail: np.ndarray, kind: str) -> np.ndarray:
    """models/fusion.py's formulas in NumPy float32 (probabilities N x 3 x H x W, detail N x 1 x H x W)."""
    background, unknown, foreground = probabilities[:, 0:1], probabilities[:, 1:2], probabilities[:, 2:3]
    code = _kind_code(kind)
    if code == 0:
        return foreground + unknown * detail
    if code == 1:
        total = np.maximum((background + unknown) + foreground, np.float32(1e-6))
        unified = (np.float32(0.5) * unknown + foreground) / total
        confidence = np.float32(2) * np.abs(unified - np.float32(0.5))
        return (np.float32(1) - confidence) * detail + confidence * unified
    is_unknown = (unknown > background) & (unknown >= foreground)
    is_foreground = (foreground > background) & (foreground > unknown)
    alpha = np.where(is_unknown, np.clip(detail, np.float32(0), np.float32(1)), np.float32(0))
    return np.where(is_foreground, np.float32(1), alpha).astype(np.float32)


def trimap_fusion_reference(trimap: np.ndarray, detail: np.ndarray, kind: str, *, logits: bool = False,
                            band: Any = None, clamp: bool = False) -> np.ndarray:
    """NumPy reference: upsample, optional softmax, fusion formula, optional clamp; float32 math,
    detail's dtype out."""
    trimap = host_array(OP, "trimap", trimap, layout="N x 3 x h x w", dtypes=DTYPES)
    detail = host_array(OP, "detail", detail, layout="N x 1 x H x W", dtypes=DTYPES)
    _kind_code(kind)
    _, _, _, height, width = _check(trimap, detail)
    first, full = _band(band, height)
    probabilities = upsample_bilinear(trimap.astype(np.float32), full, width, slice(first, first + height))
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
    code = _kind_code(kind)
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
