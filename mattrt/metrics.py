"""Alpha-matte error metrics: SAD, MSE, MAD, gradient, connectivity, PSNR.

Plain functions, NumPy in and out (pymatting's style). Every metric takes `pred` and `gt`, two
H x W float arrays in [0, 1], and an optional `trimap`: without it the whole image counts;
with it only its unknown band does. The unknown band is

- trimap value 128 for integer trimaps (the Deep Image Matting convention, values 0/128/255);
- values within 0.01 of 0.5 for float trimaps in [0, 1] (so 0.5, and 128/255 or 127/255 from an
  8-bit trimap divided by 255, all count);
- True for a boolean array, which is taken as the region itself.

Definitions (Rhemann et al., "A Perceptually Motivated Online Benchmark for Image Matting",
CVPR 2009), in the form of the Deep Image Matting (DIM, Xu et al. 2017) MATLAB evaluation code,
which is the standard that published tables follow:

- SAD  = sum |pred - gt| over the region, / 1000.
- MSE  = mean (pred - gt)^2 over the region's pixels.  MAD = mean |pred - gt| over them.
- Gradient = sum over the region of (|grad pred| - |grad gt|)^2, / 1000, where grad is the
  derivative-of-Gaussian filter of DIM's `gaussgradient` (sigma 1.4): a (2h+1)^2 kernel with
  h = ceil(sigma * sqrt(-2 ln(sqrt(2 pi) sigma 0.01))) = 4, G(y) * G'(x) normalised to unit L2
  norm, applied as a convolution with replicated borders. The kernel is separable, so it is
  applied as two 1-D convolutions (the same numbers up to rounding).
- Connectivity = sum over the region of |phi(pred) - phi(gt)|, / 1000, with thresholds
  t_k = k * step (step 0.1): for k = 1..n, omega_k is the largest 4-connected component of
  (pred >= t_k) & (gt >= t_k); a pixel's level l is t_{k-1} for the first k whose omega_k does
  not contain it (1 if every omega_k does); d = alpha - l and phi = 1 - d * [d >= 0.15].
  When the intersection is empty at some level, its largest component is empty, so every
  still-unassigned pixel takes that level's t_{k-1}. Among equally large components the one
  whose first pixel comes first in column-major order is kept, as MATLAB's bwconncomp + max do.
- PSNR = 10 log10(1 / MSE) in dB with peak 1; math.inf when the region matches exactly (no cap).

The /1000 of SAD, gradient and connectivity is the DIM reporting convention (errors are given
"in thousands"); MSE and MAD are plain means. DIM's gradient code first rescales each matte by
its own min and max (MATLAB's mat2gray); mattrt does not, because alphas are already in
[0, 1] (the two agree whenever a matte contains both 0 and 1).

Where the AIM evaluation code (JizhiziLi/AIM core/evaluate.py) differs, and mattrt does not
follow it:
- its trimap SAD/MSE/MAD first force pred to 0/1 in the known trimap regions and then sum over
  the whole image (MSE/MAD divided by the unknown pixel count); DIM's sum only the band (the
  two agree when gt matches the trimap in its known regions);
- its gradient uses scipy's gaussian_filter derivative (radius 6 for sigma 1.4, the derivative of
  a unit-sum Gaussian, mirrored borders) and divides by 10, on the whole image only; that kernel's
  gain is about a tenth of DIM's unit-L2 one, so the /10 brings its values close to (not equal
  to) DIM's /1000 ones;
- its connectivity runs on the whole image only, skips a threshold whose intersection is empty
  (those pixels end at level 1 instead of t_{k-1}), breaks ties between largest components in
  row-major order, and builds thresholds with np.arange(0, 1.1, 0.1), whose values such as
  0.6000000000000001 put a float64 alpha of exactly 0.6 (153/255) below the 0.6 level; mattrt
  uses k / 10 exactly.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from scipy import ndimage

from mattrt.errors import InputError

GRADIENT_SIGMA = 1.4
CONNECTIVITY_STEP = 0.1
CONNECTIVITY_THETA = 0.15
UNKNOWN_TOLERANCE = 0.01

METRIC_NAMES = ("sad", "mse", "mad", "grad", "conn", "psnr")


def unknown_region(trimap: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Boolean H x W mask of a trimap's unknown band (see the module docstring)."""
    trimap = np.asarray(trimap)
    if trimap.ndim == 3 and trimap.shape[2] == 1:
        trimap = trimap[..., 0]
    if trimap.ndim != 2:
        raise InputError(f"trimap: expected an H x W array, got shape {trimap.shape}")
    if shape is not None and trimap.shape != tuple(shape):
        raise InputError(f"trimap has shape {trimap.shape} but the mattes have shape {tuple(shape)}")
    if trimap.dtype == np.bool_:
        return trimap
    if np.issubdtype(trimap.dtype, np.integer):
        if trimap.size and (trimap.min() < 0 or trimap.max() > 255):
            raise InputError("trimap: integer trimaps hold 0 (background), 128 (unknown) and 255 "
                             f"(foreground); found values in [{trimap.min()}, {trimap.max()}]")
        return trimap == 128
    if np.issubdtype(trimap.dtype, np.floating):
        if not np.isfinite(trimap).all():
            raise InputError("trimap: contains NaN or infinite values")
        if trimap.size and (trimap.min() < 0 or trimap.max() > 1):
            raise InputError("trimap: float trimaps hold 0 (background), 0.5 (unknown) and 1 (foreground); "
                             f"found values in [{trimap.min():.4g}, {trimap.max():.4g}] (divide 8-bit trimaps by 255)")
        return np.abs(trimap - 0.5) <= UNKNOWN_TOLERANCE
    raise InputError(f"trimap: unsupported dtype {trimap.dtype}; use uint8 (0/128/255), float (0/0.5/1) or bool")


def sad(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> float:
    """Sum of absolute differences over the region, divided by 1000."""
    pred, gt, region = _prepare(pred, gt, trimap)
    return float(np.abs(pred - gt)[region].sum() / 1000.0)


def mse(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> float:
    """Mean squared difference over the region's pixels (NaN when the region is empty)."""
    pred, gt, region = _prepare(pred, gt, trimap)
    return _mean(np.square(pred - gt), region)


def mad(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> float:
    """Mean absolute difference over the region's pixels (NaN when the region is empty)."""
    pred, gt, region = _prepare(pred, gt, trimap)
    return _mean(np.abs(pred - gt), region)


def psnr(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB for peak 1; math.inf for an exact match, NaN for an empty region."""
    error = mse(pred, gt, trimap)
    if math.isnan(error):
        return math.nan
    if error == 0.0:
        return math.inf
    return float(10.0 * math.log10(1.0 / error))


def gradient_error(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None,
                   sigma: float = GRADIENT_SIGMA) -> float:
    """Sum over the region of the squared difference of Gaussian-gradient magnitudes, / 1000."""
    pred, gt, region = _prepare(pred, gt, trimap)
    if not sigma > 0:
        raise InputError(f"sigma must be positive, got {sigma}")
    error = np.square(gradient_magnitude(pred, sigma) - gradient_magnitude(gt, sigma))
    return float(error[region].sum() / 1000.0)


def connectivity_error(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None,
                       step: float = CONNECTIVITY_STEP, theta: float = CONNECTIVITY_THETA) -> float:
    """Rhemann et al.'s connectivity error over the region, / 1000 (see the module docstring)."""
    pred, gt, region = _prepare(pred, gt, trimap)
    level = connectivity_levels(pred, gt, step)
    phi_pred = _phi(pred - level, theta)
    phi_gt = _phi(gt - level, theta)
    return float(np.abs(phi_pred - phi_gt)[region].sum() / 1000.0)


def evaluate(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> dict[str, float]:
    """All metrics over the whole image, plus "<name>_trimap" over the unknown band when a trimap is given."""
    pred, gt, _ = _prepare(pred, gt, None)
    results: dict[str, float] = {}
    regions: list[tuple[str, np.ndarray | None]] = [("", None)]
    if trimap is not None:
        regions.append(("_trimap", unknown_region(trimap, pred.shape)))
    magnitude_pred = gradient_magnitude(pred)
    magnitude_gt = gradient_magnitude(gt)
    level = connectivity_levels(pred, gt)
    gradient_map = np.square(magnitude_pred - magnitude_gt)
    connectivity_map = np.abs(_phi(pred - level, CONNECTIVITY_THETA) - _phi(gt - level, CONNECTIVITY_THETA))
    difference = pred - gt
    for suffix, region in regions:
        mask = np.ones(pred.shape, dtype=bool) if region is None else region
        squared = _mean(np.square(difference), mask)
        results["sad" + suffix] = float(np.abs(difference)[mask].sum() / 1000.0)
        results["mse" + suffix] = squared
        results["mad" + suffix] = _mean(np.abs(difference), mask)
        results["grad" + suffix] = float(gradient_map[mask].sum() / 1000.0)
        results["conn" + suffix] = float(connectivity_map[mask].sum() / 1000.0)
        results["psnr" + suffix] = (math.nan if math.isnan(squared) else
                                    math.inf if squared == 0.0 else float(10.0 * math.log10(1.0 / squared)))
    return results


def gaussian_gradient_kernels(sigma: float = GRADIENT_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D factors (smoothing, derivative) of DIM's normalised 2-D derivative-of-Gaussian kernel.

    The 2-D kernel is outer(smoothing, derivative): smoothing along y, derivative along x.
    """
    half = int(math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * 0.01))))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-offsets ** 2 / (2.0 * sigma ** 2)) / (sigma * math.sqrt(2.0 * math.pi))
    derivative = -offsets * gauss / sigma ** 2
    # ||outer(a, b)||_F = ||a|| ||b||: normalising each factor normalises the 2-D kernel.
    return gauss / np.linalg.norm(gauss), derivative / np.linalg.norm(derivative)


def gradient_magnitude(alpha: np.ndarray, sigma: float = GRADIENT_SIGMA) -> np.ndarray:
    """|grad alpha| with DIM's Gaussian-derivative filter (convolution, replicated borders)."""
    smoothing, derivative = gaussian_gradient_kernels(sigma)
    alpha = np.asarray(alpha, dtype=np.float64)
    grad_x = ndimage.convolve1d(ndimage.convolve1d(alpha, smoothing, axis=0, mode="nearest"),
                                derivative, axis=1, mode="nearest")
    grad_y = ndimage.convolve1d(ndimage.convolve1d(alpha, derivative, axis=0, mode="nearest"),
                                smoothing, axis=1, mode="nearest")
    return np.sqrt(grad_x ** 2 + grad_y ** 2)


def connectivity_levels(pred: np.ndarray, gt: np.ndarray, step: float = CONNECTIVITY_STEP) -> np.ndarray:
    """Per pixel, the threshold level l at which it leaves the largest common component."""
    count = round(1.0 / step)
    if not step > 0 or count < 1 or abs(count * step - 1.0) > 1e-9:
        raise InputError(f"step must divide 1 into whole steps (e.g. 0.1 or 0.05), got {step}")
    thresholds = np.arange(count + 1) / count  # exact k/n, unlike accumulated k * 0.1
    level = np.full(pred.shape, -1.0)
    for k in range(1, count + 1):
        largest = _largest_component((pred >= thresholds[k]) & (gt >= thresholds[k]))
        level[(level == -1.0) & ~largest] = thresholds[k - 1]
    level[level == -1.0] = 1.0
    return level


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)  # default structure: 4-connectivity in 2-D
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    tied = np.flatnonzero(sizes == sizes.max()) + 1
    if tied.size == 1:
        return labels == tied[0]
    # MATLAB numbers components by their first pixel in column-major order and max() keeps the
    # first of equal sizes; do the same so ties pick the same component.
    column_major = labels.T.ravel()
    firsts = {label: np.flatnonzero(column_major == label)[0] for label in tied}
    return labels == min(tied, key=firsts.__getitem__)


def _phi(distance: np.ndarray, theta: float) -> np.ndarray:
    return 1.0 - distance * (distance >= theta)


def _mean(values: np.ndarray, region: np.ndarray) -> float:
    count = int(region.sum())
    return float(values[region].sum() / count) if count else math.nan


def _prepare(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = _as_alpha(pred, "pred")
    gt = _as_alpha(gt, "gt")
    if pred.shape != gt.shape:
        raise InputError(f"pred has shape {pred.shape} but gt has shape {gt.shape}; they must match")
    region = np.ones(pred.shape, dtype=bool) if trimap is None else unknown_region(trimap, pred.shape)
    return pred, gt, region


def _as_alpha(alpha: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(alpha)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(f"{name}: expected an H x W alpha matte, got shape {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.float64)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{name}: expected float alpha in [0, 1], got dtype {array.dtype} "
                         "(divide 8-bit mattes by 255, 16-bit ones by 65535)")
    if not np.isfinite(array).all():
        raise InputError(f"{name}: contains NaN or infinite values")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise InputError(f"{name}: alpha must lie in [0, 1], found [{array.min():.4g}, {array.max():.4g}]")
    return array.astype(np.float64, copy=False)


def mean_metrics(rows: list[Mapping[str, float]]) -> dict[str, float]:
    """Per-metric arithmetic mean over images, skipping NaN (metrics of an empty unknown band).

    A metric that is infinite for some image (PSNR of an exact match) has an infinite mean.
    """
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    means = {}
    for name in names:
        values = [float(row[name]) for row in rows if name in row and not math.isnan(float(row[name]))]
        means[name] = float(np.mean(values)) if values else math.nan
    return means


__all__ = [
    "CONNECTIVITY_STEP",
    "CONNECTIVITY_THETA",
    "GRADIENT_SIGMA",
    "METRIC_NAMES",
    "connectivity_error",
    "connectivity_levels",
    "evaluate",
    "gaussian_gradient_kernels",
    "gradient_error",
    "gradient_magnitude",
    "mad",
    "mean_metrics",
    "mse",
    "psnr",
    "sad",
    "unknown_region",
]
