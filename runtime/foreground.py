"""Foreground colour estimation (blur fusion) and compositing, plain NumPy functions.

Cutting an object out with its alpha keeps the colours of the old background in the
semi-transparent pixels (hair looks haloed on a new background). The blur-fusion estimator of
Forte & Pitie, "Approximate Fast Foreground Colour Estimation" (ICIP 2021) removes them with
box blurs only. One pass, for image I, alpha a, current estimates F and B and window size r:

    Fb = blur(F a) / (blur(a) + eps)               local mean foreground colour
    Bb = blur(B (1 - a)) / (1 - blur(a) + eps)     local mean background colour
    F' = clip(Fb + a (I - a Fb - (1 - a) Bb), 0, 1)

run twice: with F = B = I and a large window, then with (F', Bb) and a small window. The
paper's windows are 90 and 6 px; here windows are centred, so their sides are odd (91 and 7 by
default), and `blur` is the mean over the part of the window inside the image.

`estimate_foreground` works through the image in bands of rows with a halo as high as both
passes reach (r1 // 2 + r2 // 2 rows), so it gives exactly the whole-image result while its
temporaries stay a few float32 copies of one band; `estimate_foreground_reference` is the
straightforward whole-image version with a naive blur, for tests.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from mattrt.errors import InputError
from mattrt.imageio import quantise
from mattrt.runtime.ops import check_rgb, unit_scale

DEFAULT_WINDOWS = (91, 7)
EPSILON = 1e-5
BAND_ROWS = 512


def _check_windows(windows: Sequence[int]) -> tuple[int, int]:
    if len(windows) != 2 or any(not isinstance(w, (int, np.integer)) or w < 1 or w % 2 == 0 for w in windows):
        raise InputError(f"blur-fusion windows must be two odd positive sizes, got {tuple(windows)!r}")
    return int(windows[0]), int(windows[1])


def _check_pair(image: np.ndarray, alpha: np.ndarray) -> None:
    check_rgb(image, "foreground estimation")
    if not isinstance(alpha, np.ndarray) or alpha.shape != image.shape[:2]:
        raise InputError(
            f"foreground estimation: alpha must be H x W = {image.shape[:2]} like the image, got {getattr(alpha, 'shape', None)}"
        )


# -- box blur ---------------------------------------------------------------------------------
def _window_counts(length: int, size: int) -> np.ndarray:
    """How many pixels of a centred window of `size` lie inside an axis of `length`, per position."""
    radius = size // 2
    index = np.arange(length)
    return (np.minimum(index + radius, length - 1) - np.maximum(index - radius, 0) + 1).astype(np.float64)


def box_blur(x: np.ndarray, size: int) -> np.ndarray:
    """Mean of x (H x W or H x W x C) over a centred size x size window clipped to the array."""

    data = np.asarray(x, dtype=np.float32)
    sizes = (size, size) + (1,) * (data.ndim - 2)
    # mode="constant" sums the window's pixels inside the array (zeros outside); dividing by the
    # number of those pixels gives the clipped mean.
    total = ndimage.uniform_filter(data.astype(np.float64), size=sizes, mode="constant", cval=0.0)
    counts = np.outer(_window_counts(data.shape[0], size), _window_counts(data.shape[1], size))
    total *= (size * size) / (counts if data.ndim == 2 else counts[..., None])
    return total.astype(np.float32)


def box_blur_reference(x: np.ndarray, size: int) -> np.ndarray:
    """box_blur by summing every shifted copy of the array (slow, O(size^2) passes)."""
    data = np.asarray(x, dtype=np.float64)
    height, width = data.shape[:2]
    radius = size // 2
    total = np.zeros_like(data)
    count = np.zeros((height, width), dtype=np.float64)
    for dy in range(-min(radius, height - 1), min(radius, height - 1) + 1):
        for dx in range(-min(radius, width - 1), min(radius, width - 1) + 1):
            ys, yd = slice(max(dy, 0), height + min(dy, 0)), slice(max(-dy, 0), height + min(-dy, 0))
            xs, xd = slice(max(dx, 0), width + min(dx, 0)), slice(max(-dx, 0), width + min(-dx, 0))
            total[yd, xd] += data[ys, xs]
            count[yd, xd] += 1
    return (total / (count if data.ndim == 2 else count[..., None])).astype(np.float32)


# -- blur fusion --------------------------------------------------------------------------------
def _blur_fusion_pass(image, foreground, background, alpha, size, blur):
    a = alpha[..., None]
    blurred_alpha = blur(a, size)
    mean_foreground = blur(foreground * a, size) / (blurred_alpha + EPSILON)
    mean_background = blur(background * (1.0 - a), size) / ((1.0 - blurred_alpha) + EPSILON)
    estimate = mean_foreground + a * (image - a * mean_foreground - (1.0 - a) * mean_background)
    return np.clip(estimate, 0.0, 1.0).astype(np.float32), mean_background.astype(np.float32)


def _as_unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / np.float32(unit_scale(image.dtype))


def _blur_fusion(image, alpha, windows, blur):
    large, small = windows
    rgb = _as_unit(image)
    alpha = np.clip(alpha.astype(np.float32), 0.0, 1.0)
    first, background = _blur_fusion_pass(rgb, rgb, rgb, alpha, large, blur)
    second, _ = _blur_fusion_pass(rgb, first, background, alpha, small, blur)
    return second


def estimate_foreground_reference(image: np.ndarray, alpha: np.ndarray, windows: Sequence[int] = DEFAULT_WINDOWS) -> np.ndarray:
    """Blur-fusion foreground of the whole image at once with the naive blur (tests only)."""
    _check_pair(image, alpha)
    return _blur_fusion(image, alpha, _check_windows(windows), box_blur_reference)


def estimate_foreground(
    image: np.ndarray,
    alpha: np.ndarray,
    windows: Sequence[int] = DEFAULT_WINDOWS,
    band_rows: int = BAND_ROWS,
    out_dtype=np.float32,
) -> np.ndarray:
    """Foreground colours H x W x 3 of an RGB image (uint8, uint16 or float32 in [0, 1]) given
    its alpha (H x W in [0, 1]). out_dtype float32 gives [0, 1]; uint8/uint16 give quantised
    pixels (rounded to nearest), produced band by band."""
    _check_pair(image, alpha)
    windows = _check_windows(windows)
    if band_rows < 1:
        raise InputError(f"band_rows must be positive, got {band_rows}")
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in (np.float32, np.uint8, np.uint16):
        raise InputError(f"out_dtype must be float32, uint8 or uint16, got {out_dtype}")
    height = image.shape[0]
    halo = windows[0] // 2 + windows[1] // 2
    out = np.empty(image.shape, dtype=out_dtype)
    for y0 in range(0, height, band_rows):
        y1 = min(y0 + band_rows, height)
        top, bottom = max(0, y0 - halo), min(height, y1 + halo)
        band = _blur_fusion(image[top:bottom], alpha[top:bottom], windows, box_blur)[y0 - top : y1 - top]
        out[y0:y1] = _quantised(band, out_dtype)
    return out


def _quantised(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 values in [0, 1] as `dtype` (float32 kept; uint8/uint16 by imageio.quantise's rule)."""
    if dtype == np.float32:
        return values
    return quantise(values, 8 if dtype == np.uint8 else 16, "foreground")


# -- compositing --------------------------------------------------------------------------------
def composite(
    foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray | Sequence[float], out_dtype=np.float32
) -> np.ndarray:
    """foreground * alpha + background * (1 - alpha). foreground: H x W x 3 (uint8, uint16 or
    float in [0, 1]); background: an H x W x 3 image or one RGB colour as floats in [0, 1]."""
    _check_pair(foreground, alpha)
    out_dtype = np.dtype(out_dtype)
    if isinstance(background, np.ndarray) and background.ndim == 3:
        check_rgb(background, "background")
        if background.shape != foreground.shape:
            raise InputError(f"background is {background.shape[1]}x{background.shape[0]}; it must match the image {foreground.shape[1]}x{foreground.shape[0]}")
        background_image = background
        colour = None
    else:
        colour = np.asarray(background, dtype=np.float32).reshape(-1)
        if colour.shape != (3,) or not np.all((colour >= 0) & (colour <= 1)):
            raise InputError(f"background colour must be three values in [0, 1], got {background!r}")
        background_image = None
    out = np.empty(foreground.shape, dtype=out_dtype)
    for y0 in range(0, foreground.shape[0], BAND_ROWS):
        y1 = min(y0 + BAND_ROWS, foreground.shape[0])
        a = np.clip(alpha[y0:y1].astype(np.float32), 0, 1)[..., None]
        back = colour if background_image is None else _as_unit(background_image[y0:y1])
        mixed = _as_unit(foreground[y0:y1]) * a + back * (1.0 - a)
        out[y0:y1] = _quantised(np.clip(mixed, 0, 1).astype(np.float32), out_dtype)
    return out


__all__ = [
    "DEFAULT_WINDOWS",
    "box_blur",
    "box_blur_reference",
    "composite",
    "estimate_foreground",
    "estimate_foreground_reference",
]
