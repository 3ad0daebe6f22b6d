"""The per-pixel parts of full-resolution alpha refinement (guided_filter.cu): the uncertain
band's seeds and He et al.'s colour guided filter written into the band.

band_seed(alpha, low, high) -> H x W uint8 (1 = seed):
    alpha: H x W float32. A seed is a soft pixel (low < alpha < high) or a pixel on the inner side
    of the 0.5 contour (alpha >= 0.5 with a 4-neighbour < 0.5; neighbours outside the array count
    as >= 0.5). The band is the seed dilated by the band radius (morphology.dilate: a separable
    max filter).
box_mean(planes, radius) -> P x H x W float32:
    the mean over the (2r+1)^2 window clipped to the array, per plane, as two separable passes of
    prefix sums in float64 (rows: plain sums rounded to float32; columns: the sum rounded to
    float32, divided by the window's pixel count in float32).
guided_filter_band(guide, p, alpha, band, offset, radius, eps) -> h x w float32:
    guide: H x W x 3 float32 in [0, 1] (the image region), p: H x W float32 (the input to filter);
    alpha, band: h x w float32 / uint8, the output window at offset (top, left) of the region.
    Returns alpha where band == 0 and, where band != 0, He's colour guided filter of p guided by
    the region (window radius `radius`, regulariser `eps`; the guide centred at 0.5, which leaves
    the filter unchanged) clamped to [0, 1]. The window sees the filter of the region: a pixel is
    exact (equal to filtering the whole image) when the region reaches 2 * radius beyond it, or
    to the image's edge.

Each op has its NumPy reference `<op>_reference` (the one NumPy implementation: runtime/refine.py's
host path runs them), a `launch_<op>(backend, ...)` run by CuPy or by the g++ host emulation,
and a CuPy launcher `<op>` with the reference's signature. The kernels do the reference's float32
and float64 operations in the same order (mul_rn: no fused multiply-adds; prefix sums as
NumPy's sequential cumsum), so they equal it bit for bit on the emulation; on a GPU only the
float division and double-to-float conversion of CUDA and NumPy (both IEEE, correctly rounded)
are involved, so they should equal it there too.

Precision: the window statistics are float32 means of float64 sums; the guide is centred so that
the covariances E[I I^T] - E[I] E[I]^T cancel less. With eps = 1e-5 the filter differs from a
float64 evaluation by up to 1.3e-5 on synthetic scenes and 3.7e-5 on a flat guide with 8-bit
noise (tests/test_kernels_guided_filter.py allows 1e-4; a 16-bit alpha's step is 1.5e-5); closed-form
matting's eps of 1e-7 would not survive float32 (see runtime/refine.py: that solve stays on the CPU
in float64).
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
    output_array,
    planes_grid,
)

SOURCE = "guided_filter.cu"
PRODUCT_PLANES = 13  # I0, I1, I2, p, I0 p, I1 p, I2 p, I0 I0, I0 I1, I0 I2, I1 I1, I1 I2, I2 I2
COEFFICIENT_PLANES = 4  # a0, a1, a2, b
GUIDE_CENTRE = np.float32(0.5)


# -- checks shared by references and launchers ------------------------------------------------------
def _radius(op: str, radius: Any) -> int:
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise InputError(f"{op}: radius must be a non-negative integer, got {radius!r}")
    return int(radius)


def _positive_float(op: str, name: str, value: Any) -> np.float32:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{op}: {name} must be a number, got {value!r}") from None
    if not np.isfinite(number) or number <= 0:
        raise InputError(f"{op}: {name} must be a positive finite number, got {value!r}")
    return np.float32(number)


def _thresholds(low: Any, high: Any) -> tuple[np.float32, np.float32]:
    try:
        lo, hi = float(low), float(high)
    except (TypeError, ValueError):
        raise InputError(f"band_seed: low and high must be numbers, got {low!r}, {high!r}") from None
    if not 0.0 <= lo < 0.5 < hi <= 1.0:
        raise InputError(f"band_seed: need 0 <= low < 0.5 < high <= 1, got low={lo}, high={hi}")
    return np.float32(lo), np.float32(hi)


def _offset(op: str, offset: Any) -> tuple[int, int]:
    try:
        top, left = (int(v) for v in offset)
    except (TypeError, ValueError):
        raise InputError(f"{op}: offset must be (top, left) integers, got {offset!r}") from None
    return top, left


def _check_band_args(op: str, guide, p, alpha, band, offset) -> tuple[int, int, int, int, int, int]:
    """(height, width, top, left, out_height, out_width) after checking the shapes agree."""
    height, width = (int(s) for s in p.shape)
    if tuple(guide.shape) != (height, width, 3):
        raise InputError(f"{op}: guide must be H x W x 3 with p's H x W {(height, width)}, got {tuple(guide.shape)}")
    if tuple(band.shape) != tuple(alpha.shape):
        raise InputError(f"{op}: band must have alpha's shape {tuple(alpha.shape)}, got {tuple(band.shape)}")
    top, left = _offset(op, offset)
    out_height, out_width = (int(s) for s in alpha.shape)
    if top < 0 or left < 0 or top + out_height > height or left + out_width > width:
        raise InputError(f"{op}: the output window {out_height} x {out_width} at (top={top}, left={left}) "
                         f"does not lie inside the {height} x {width} region")
    if min(height, width) < 1:
        raise InputError(f"{op}: empty region {height} x {width}")
    return height, width, top, left, out_height, out_width


# -- NumPy references ---------------------------------------------------------------------------------
def band_seed_reference(alpha: np.ndarray, low: float, high: float) -> np.ndarray:
    """NumPy reference of band_seed (see the module docstring)."""
    alpha = host_array("band_seed", "alpha", alpha, layout="H x W", dtypes=(np.float32,))
    lo, hi = _thresholds(low, high)
    hard = alpha >= np.float32(0.5)
    outside = alpha < np.float32(0.5)
    below = np.zeros(alpha.shape, bool)  # some 4-neighbour is < 0.5
    below[1:] |= outside[:-1]
    below[:-1] |= outside[1:]
    below[:, 1:] |= outside[:, :-1]
    below[:, :-1] |= outside[:, 1:]
    seed = ((alpha > lo) & (alpha < hi)) | (hard & below)
    return seed.astype(np.uint8)


def _window_counts(length: int, radius: int) -> np.ndarray:
    x = np.arange(length)
    return (np.minimum(x + radius, length - 1) - np.maximum(x - radius, 0) + 1).astype(np.float32)


def _leading_window_sums(lines: np.ndarray, radius: int) -> np.ndarray:
    """Window sums along the leading axis of a float64 array (overwritten with its prefix sums):
    float32(prefix[min(x + r, n - 1)] - prefix[x - r - 1]), prefix[-1] = 0: the kernel's
    `lead - lag`. The prefix sums add row after row, the kernel's (and cumsum's) sequential order;
    a loop of whole-row additions is about 4x faster than np.cumsum here."""
    n = lines.shape[0]
    for i in range(1, n):
        np.add(lines[i - 1], lines[i], out=lines[i])
    out = np.empty(lines.shape, np.float32)
    no_lag = min(radius + 1, n)  # x < no_lag: the window starts at 0
    unclipped = max(0, n - radius)  # x < unclipped: the window ends at x + r, else at n - 1
    first = min(no_lag, unclipped)
    out[:first] = lines[radius: radius + first]
    if unclipped < no_lag:
        out[unclipped:no_lag] = lines[n - 1]
    elif no_lag < unclipped:
        np.subtract(lines[no_lag + radius: unclipped + radius], lines[: unclipped - no_lag], out=out[no_lag:unclipped])
    rest = max(no_lag, unclipped)
    if rest < n:
        np.subtract(lines[n - 1], lines[rest - radius - 1: n - radius - 1], out=out[rest:])
    return out


def box_mean_reference(planes: np.ndarray, radius: int) -> np.ndarray:
    """NumPy reference of box_mean: P x H x W float32 -> P x H x W window means."""
    planes = host_array("box_mean", "planes", planes, layout="P x H x W", dtypes=(np.float32,))
    r = _radius("box_mean", radius)
    _, height, width = planes.shape
    # rows: the sums along W, with W leading (W x P x H); then columns: along H (H x P x W)
    sums = _leading_window_sums(np.ascontiguousarray(planes.transpose(2, 0, 1), dtype=np.float64), r)
    means = _leading_window_sums(np.ascontiguousarray(sums.transpose(2, 1, 0), dtype=np.float64), r)
    del sums
    means /= (_window_counts(height, r)[:, None] * _window_counts(width, r)[None, :])[:, None, :]
    return np.ascontiguousarray(means.transpose(1, 0, 2))


def _centred(guide: np.ndarray) -> list[np.ndarray]:
    return [guide[..., c] - GUIDE_CENTRE for c in range(3)]


def guided_products_reference(guide: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The 13 planes of guided_products (H x W x 3 and H x W float32 -> 13 x H x W)."""
    i0, i1, i2 = _centred(guide)
    return np.stack([i0, i1, i2, p, i0 * p, i1 * p, i2 * p, i0 * i0, i0 * i1, i0 * i2, i1 * i1, i1 * i2, i2 * i2])


def guided_coefficients_reference(means: np.ndarray, eps: np.float32) -> np.ndarray:
    """a (3 planes) and b from the 13 window means, in the kernel's float32 operation order."""
    m0, m1, m2, mp, m0p, m1p, m2p, m00, m01, m02, m11, m12, m22 = means
    c0, c1, c2 = m0p - m0 * mp, m1p - m1 * mp, m2p - m2 * mp
    a00 = (m00 - m0 * m0) + eps
    a01 = m01 - m0 * m1
    a02 = m02 - m0 * m2
    a11 = (m11 - m1 * m1) + eps
    a12 = m12 - m1 * m2
    a22 = (m22 - m2 * m2) + eps
    k00 = a11 * a22 - a12 * a12
    k01 = a02 * a12 - a01 * a22
    k02 = a01 * a12 - a02 * a11
    k11 = a00 * a22 - a02 * a02
    k12 = a01 * a02 - a00 * a12
    k22 = a00 * a11 - a01 * a01
    det = (a00 * k00 + a01 * k01) + a02 * k02
    e0 = (k00 * c0 + k01 * c1) + k02 * c2
    e1 = (k01 * c0 + k11 * c1) + k12 * c2
    e2 = (k02 * c0 + k12 * c1) + k22 * c2
    a0, a1, a2 = e0 / det, e1 / det, e2 / det
    b = ((mp - a0 * m0) - a1 * m1) - a2 * m2
    return np.stack([a0, a1, a2, b])


def guided_output_reference(coefficient_means: np.ndarray, guide: np.ndarray, alpha: np.ndarray, band: np.ndarray,
                            top: int, left: int) -> np.ndarray:
    h, w = alpha.shape
    window = (slice(top, top + h), slice(left, left + w))
    ma0, ma1, ma2, mb = (plane[window] for plane in coefficient_means)
    i0, i1, i2 = _centred(guide[window])
    q = ((ma0 * i0 + ma1 * i1) + ma2 * i2) + mb
    q = np.fmin(np.fmax(q, np.float32(0)), np.float32(1))  # fminf/fmaxf: NaN-ignoring like CUDA's
    return np.where(band != 0, q, alpha).astype(np.float32)


def guided_filter_band_reference(guide: np.ndarray, p: np.ndarray, alpha: np.ndarray, band: np.ndarray,
                                 offset: Sequence[int], radius: int, eps: float) -> np.ndarray:
    """NumPy reference of guided_filter_band (see the module docstring)."""
    op = "guided_filter_band"
    guide = host_array(op, "guide", guide, layout="H x W x 3", dtypes=(np.float32,))
    p = host_array(op, "p", p, layout="H x W", dtypes=(np.float32,))
    alpha = host_array(op, "alpha", alpha, layout="h x w", dtypes=(np.float32,))
    band = host_array(op, "band", band, layout="h x w", dtypes=(np.uint8,))
    _, _, top, left, _, _ = _check_band_args(op, guide, p, alpha, band, offset)
    r = _radius(op, radius)
    e = _positive_float(op, "eps", eps)
    means = box_mean_reference(guided_products_reference(guide, p), r)
    coefficient_means = box_mean_reference(guided_coefficients_reference(means, e), r)
    return guided_output_reference(coefficient_means, guide, alpha, band, top, left)


# -- launch code (CuPy or the host emulation) ---------------------------------------------------------
def launch_band_seed(backend: Backend, alpha: Any, low: float, high: float, *, out: Any = None) -> Any:
    op = "band_seed"
    alpha = device_array(backend, op, "alpha", alpha, layout="H x W", dtypes=(np.float32,))
    lo, hi = _thresholds(low, high)
    height, width = (int(s) for s in alpha.shape)
    out = output_array(backend, op, out, (height, width), np.uint8)
    if out.size == 0:
        return out
    grid, block = planes_grid(width, height, 1)
    backend.launch(SOURCE, "refine_band_seed", grid, block, (alpha, out, np.int64(height), np.int64(width), lo, hi))
    return out


def _launch_box_mean(backend: Backend, planes: Any, radius: int, out: Any) -> Any:
    count, height, width = (int(s) for s in planes.shape)
    sums = backend.xp.empty_like(planes)
    common = (np.int64(count), np.int64(height), np.int64(width), np.int64(radius))
    grid, block = planes_grid(height, 1, count)
    backend.launch(SOURCE, "box_sum_rows", grid, block, (planes, sums, *common))
    grid, block = planes_grid(width, 1, count)
    backend.launch(SOURCE, "box_mean_cols", grid, block, (sums, out, *common))
    return out


def launch_box_mean(backend: Backend, planes: Any, radius: int, *, out: Any = None) -> Any:
    op = "box_mean"
    planes = device_array(backend, op, "planes", planes, layout="P x H x W", dtypes=(np.float32,))
    r = _radius(op, radius)
    out = output_array(backend, op, out, tuple(int(s) for s in planes.shape), np.float32)
    if out.size == 0:
        return out
    return _launch_box_mean(backend, planes, r, out)


def launch_guided_filter_band(backend: Backend, guide: Any, p: Any, alpha: Any, band: Any, offset: Sequence[int],
                              radius: int, eps: float, *, out: Any = None) -> Any:
    op = "guided_filter_band"
    guide = device_array(backend, op, "guide", guide, layout="H x W x 3", dtypes=(np.float32,))
    p = device_array(backend, op, "p", p, layout="H x W", dtypes=(np.float32,))
    alpha = device_array(backend, op, "alpha", alpha, layout="h x w", dtypes=(np.float32,))
    band = device_array(backend, op, "band", band, layout="h x w", dtypes=(np.uint8,))
    height, width, top, left, out_height, out_width = _check_band_args(op, guide, p, alpha, band, offset)
    r = _radius(op, radius)
    e = _positive_float(op, "eps", eps)
    out = output_array(backend, op, out, (out_height, out_width), np.float32)
    if out.size == 0:
        return out
    xp = backend.xp
    size = (np.int64(height), np.int64(width))
    products = xp.empty((PRODUCT_PLANES, height, width), np.float32)
    grid, block = planes_grid(width, height, 1)
    backend.launch(SOURCE, "guided_products", grid, block, (guide, p, products, *size))
    means = _launch_box_mean(backend, products, r, xp.empty_like(products))
    del products
    coefficients = xp.empty((COEFFICIENT_PLANES, height, width), np.float32)
    backend.launch(SOURCE, "guided_coefficients", grid, block, (means, coefficients, *size, e))
    del means
    coefficient_means = _launch_box_mean(backend, coefficients, r, xp.empty_like(coefficients))
    grid, block = planes_grid(out_width, out_height, 1)
    backend.launch(SOURCE, "guided_output", grid, block,
                   (coefficient_means, guide, alpha, band, out, *size, np.int64(top), np.int64(left),
                    np.int64(out_height), np.int64(out_width)))
    return out


# -- CuPy launchers -------------------------------------------------------------------------------------
def band_seed(alpha: Any, low: float, high: float, *, out: Any = None) -> Any:
    """CuPy launcher of band_seed (same signature and result as band_seed_reference)."""
    return launch_band_seed(cupy_backend(), alpha, low, high, out=out)


def box_mean(planes: Any, radius: int, *, out: Any = None) -> Any:
    """CuPy launcher of box_mean (same signature and result as box_mean_reference)."""
    return launch_box_mean(cupy_backend(), planes, radius, out=out)


def guided_filter_band(guide: Any, p: Any, alpha: Any, band: Any, offset: Sequence[int], radius: int, eps: float,
                       *, out: Any = None) -> Any:
    """CuPy launcher of guided_filter_band (same signature and result as the reference)."""
    return launch_guided_filter_band(cupy_backend(), guide, p, alpha, band, offset, radius, eps, out=out)


__all__ = [
    "band_seed",
    "band_seed_reference",
    "box_mean",
    "box_mean_reference",
    "guided_filter_band",
    "guided_filter_band_reference",
    "launch_band_seed",
    "launch_box_mean",
    "launch_guided_filter_band",
]
