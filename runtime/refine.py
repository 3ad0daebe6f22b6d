"""Full-resolution refinement of a network's alpha: a coarse closed-form matte in the uncertain
band, sharpened at full resolution by a colour guided filter, in tiles.

A network that sees the image at 1024 x 1024 gives, at 4K, an upsampled blur of 2-4 px wide
edges, while fur and hair reach tens of pixels across; the research behind this module
(issue 18, item 3) measured where that error lies and which training-free method removes most
of it fastest. `refine_alpha(image, alpha)` does, for an H x W image with long side L:

1. Band: the pixels within R = round(L * band_fraction) (L/80: 24 px at 1080p, 48 px at 4K,
   Chebyshev distance) of a soft pixel (soft_low < alpha < soft_high) or of the alpha = 0.5
   contour. Outside it the input alpha is returned unchanged.
2. Coarse closed-form matting (Levin et al., PAMI 2008): image and alpha are shrunk to about
   `coarse_side` px on the long side (scale s = round(L / coarse_side): 4 at 1080p, 8 at 4K;
   antialiased bilinear), the band is recomputed there (radius R / s), and the matting
   Laplacian (pymatting's, 3 x 3 windows, eps 1e-7) is solved for the band with alpha >= 0.5
   as the known values outside it: incomplete-Cholesky-preconditioned conjugate gradients to a
   relative residual of 1e-4 (2-6 iterations), on the CPU in float64.
3. The coarse matte is upsampled bilinearly to full resolution and filtered by He et al.'s
   colour guided filter (window radius r = round(L * guided_fraction), eps 1e-5) guided by the
   full-resolution image, and the result is written into the band, in tiles of `tile` px whose
   halo (2r for the filter, R + 1 for the band) makes each tile's result that of the whole
   image up to float rounding: the box filters' prefix sums start at the tile's edge, so a
   float32 rounding can differ (`tiled_versus_whole` measures it: at most 5e-7 on the 16
   benchmark scenes; the tests allow 1e-5).

Memory: the coarse level is bounded by `coarse_side` (pymatting's Laplacian of a 480 x 270 band
is about 50 MB) and the full-resolution work by one tile: about 280 bytes per pixel of the tile's
region, (tile + 4r)^2 (140 MB at 4K, 225 MB at 8K); beyond that only the output alpha is
image-sized. Measured in fresh processes (benchmarks/refine.py --memory): refine_alpha adds
184 MiB to the process at 4K and 386 MiB at 8K (133 MiB of it the output), 1.7 GB at 4K in one
piece (tile=None).

Where it runs (`pixel`): the band seeds and dilation, the guided filter and the band blend are
the CUDA kernels of kernels/guided_filter.cu and kernels/morphology.cu ("device": CuPy on the
GPU; "emulate": the same sources through the kernels' g++ host emulation, for tests), or their
NumPy references ("host", the default: the one NumPy implementation); the upsampling of the
coarse matte gathers with array operations where the tile lives (kernels/fusion.py's
`resample`, as the pipeline's guidance tiles do). The coarse level (resizing, its band and the
sparse solve) always runs on the CPU: it is small by construction, and float32 GPU arithmetic
would not hold the Laplacian's eps of 1e-7. Host and emulation results are equal bit for bit
(tests/test_refine.py); the device does the same IEEE float operations and should be equal too,
which tests/test_kernels_gpu.py asserts: it has not run on a GPU yet.

pymatting's functions (all of them, eagerly) are compiled by numba when pymatting is first
imported: 52 s on a busy 2-core machine with an empty numba cache, 1.0 s from the cache (numba
caches next to pymatting when that folder is writable, else in the user's cache or under
$NUMBA_CACHE_DIR). `warm_up()` pays that before a first request.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from mattrt.errors import InputError
from mattrt.kernels import guided_filter, morphology
from mattrt.kernels.backends import get_backend
from mattrt.kernels.fusion import bilinear_taps, resample
from mattrt.lazy import lazy_import
from mattrt.runtime import ops
from mattrt.runtime.pixel_ops import HostPixelOps, KernelPixelOps

pymatting = lazy_import("pymatting")

REFINE_METHODS = ("none", "guided")
PIXEL_CHOICES = ("host", "device", "emulate")
IMAGE_DTYPES = (np.uint8, np.uint16, np.float32)
MATTING_WINDOW_RADIUS = 1  # closed-form matting's 3 x 3 windows


@dataclass(frozen=True)
class RefineOptions:
    """What refine_alpha does; the defaults are the research's (issue 18, REPORT.md section 5)."""

    method: str = "guided"  # "none": return the input alpha; "guided": see the module docstring
    band_fraction: float = 1 / 80  # band radius R = round(L * band_fraction), L = long side
    guided_fraction: float = 1 / 80  # guided filter window radius r = round(L * guided_fraction)
    coarse_side: int = 480  # closed-form matting at about this long side (scale round(L / coarse_side))
    guided_eps: float = 1e-5  # guided filter regulariser (image in [0, 1])
    matting_eps: float = 1e-7  # closed-form matting's window regulariser (pymatting's default)
    cg_rtol: float = 1e-4  # relative residual at which conjugate gradients stop
    cg_maxiter: int = 2000  # past this the band keeps the coarse network alpha (recorded in stats)
    soft_low: float = 0.02  # soft pixels: soft_low < alpha < soft_high
    soft_high: float = 0.98
    tile: int | None = 512  # full-resolution tile side; None: the whole image at once

    def __post_init__(self) -> None:
        if self.method not in REFINE_METHODS:
            raise InputError(f"refine: unknown method {self.method!r}; choose one of: {', '.join(REFINE_METHODS)}")
        for name in ("band_fraction", "guided_fraction", "guided_eps", "matting_eps", "cg_rtol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InputError(f"refine: {name} must be a positive number, got {value!r}")
        for name in ("band_fraction", "guided_fraction"):
            if getattr(self, name) > 0.5:
                raise InputError(f"refine: {name} is a fraction of the long side (default 1/80), got {getattr(self, name)}")
        for name in ("coarse_side", "cg_maxiter") + (("tile",) if self.tile is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"refine: {name} must be a positive integer, got {value!r}")
        if self.tile is not None and self.tile < 16:
            raise InputError(f"refine: tile must be at least 16 px (default 512), got {self.tile}")
        if not (isinstance(self.soft_low, (int, float)) and isinstance(self.soft_high, (int, float))
                and 0 <= self.soft_low < 0.5 < self.soft_high <= 1):
            raise InputError(f"refine: need 0 <= soft_low < 0.5 < soft_high <= 1, got {self.soft_low!r}, {self.soft_high!r}")

    def replace(self, **changes: Any) -> "RefineOptions":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise InputError(f"refine: unknown option(s) {', '.join(sorted(unknown))}")
        return RefineOptions(**{**asdict(self), **changes})


@dataclass(frozen=True)
class Geometry:
    """The resolution-dependent sizes of one refinement."""

    height: int
    width: int
    band_radius: int  # R, full resolution
    guided_radius: int  # r, full resolution
    scale: int  # s: coarse = full / s
    coarse_height: int
    coarse_width: int
    coarse_band_radius: int

    @classmethod
    def of(cls, height: int, width: int, options: RefineOptions) -> "Geometry":
        long_side = max(height, width)
        scale = max(1, round(long_side / options.coarse_side))
        band_radius = max(1, round(long_side * options.band_fraction))
        return cls(height, width, band_radius, max(1, round(long_side * options.guided_fraction)), scale,
                   max(1, round(height / scale)), max(1, round(width / scale)), max(1, round(band_radius / scale)))


# -- input checks -------------------------------------------------------------------------------------
def _check_inputs(image: Any, alpha: Any) -> tuple[int, int]:
    for name, value in (("image", image), ("alpha", alpha)):
        if hasattr(value, "__cuda_array_interface__"):
            raise InputError(f"refine: {name} must be a NumPy array in host memory; copy it to the host first (.get())")
        if not isinstance(value, np.ndarray):
            raise InputError(f"refine: {name} must be a NumPy array, got {type(value).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"refine: image must be H x W x 3 (RGB), got shape {image.shape}")
    if image.dtype not in [np.dtype(d) for d in IMAGE_DTYPES]:
        raise InputError(f"refine: image must be uint8, uint16 or float32 in [0, 1], got dtype {image.dtype}")
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise InputError(f"refine: the image has zero size ({width}x{height})")
    if alpha.ndim != 2 or alpha.shape != (height, width):
        raise InputError(f"refine: alpha must be H x W = {height} x {width} like the image (the network's alpha "
                         f"upsampled to the image's size), got shape {alpha.shape}")
    if alpha.dtype != np.float32:
        raise InputError(f"refine: alpha must be float32 in [0, 1], got dtype {alpha.dtype}")
    checks = [("alpha", alpha)] + ([("image", image)] if image.dtype == np.float32 else [])
    for name, value in checks:
        low, high = float(value.min()), float(value.max())  # NaN fails both comparisons below
        if not (low >= 0.0 and high <= 1.0):
            raise InputError(f"refine: {name} values must be finite and in [0, 1], found [{low:.4g}, {high:.4g}]")
    return height, width


# -- where the per-pixel parts run ----------------------------------------------------------------------
class _Pixels:
    """The band, the upsampling and the guided filter on the host (references) or a kernels backend."""

    def __init__(self, backend=None, name: str = "host"):
        self.backend = backend
        self.name = name
        self.xp = np if backend is None else backend.xp

    def upload(self, array: np.ndarray):
        """The array where the kernels read it (C-contiguous there); the references take views."""
        return array if self.backend is None else self.xp.asarray(np.ascontiguousarray(array))

    def to_host(self, array) -> np.ndarray:
        return array if self.xp is np else self.backend.to_host(array)

    def band(self, alpha, low: float, high: float, radius: int):
        if self.backend is None:
            return morphology.dilate_reference(guided_filter.band_seed_reference(alpha, low, high), radius)
        seed = guided_filter.launch_band_seed(self.backend, alpha, low, high)
        return morphology.launch(self.backend, seed, radius, take_max=True)

    def guided(self, guide, p, alpha, band, offset, radius: int, eps: float):
        if self.backend is None:
            return guided_filter.guided_filter_band_reference(guide, p, alpha, band, offset, radius, eps)
        return guided_filter.launch_guided_filter_band(self.backend, guide, p, alpha, band, offset, radius, eps)


def _pixels(pixel: Any) -> _Pixels:
    if pixel is None or pixel == "host" or isinstance(pixel, HostPixelOps) and not isinstance(pixel, KernelPixelOps):
        return _Pixels()
    if isinstance(pixel, KernelPixelOps):
        return _Pixels(pixel.backend, pixel.name)
    if pixel == "device":
        return _Pixels(get_backend("cupy"), "device")
    if pixel == "emulate":
        return _Pixels(get_backend("emulate"), "emulate")
    raise InputError(f"refine: pixel must be one of {', '.join(PIXEL_CHOICES)} or the pipeline's pixel ops, got {pixel!r}")


# -- the coarse closed-form solve (CPU, float64) --------------------------------------------------------
def _bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return (max(0, int(rows[0]) - margin), min(height, int(rows[-1]) + margin + 1),
            max(0, int(cols[0]) - margin), min(width, int(cols[-1]) + margin + 1))


def closed_form_band(image: np.ndarray, alpha: np.ndarray, band: np.ndarray, options: RefineOptions,
                     stats: dict | None = None) -> np.ndarray:
    """Closed-form matting of the pixels in `band` (h x w bool) of `image` (h x w x 3 float32 in
    [0, 1]), with alpha >= 0.5 as the known values elsewhere: h x w float32 in [0, 1]. Solved on
    the band's bounding box (plus the Laplacian's reach), which gives the same system."""
    known_values = (alpha >= 0.5).astype(np.float32)
    box = _bounding_box(band, 2 * MATTING_WINDOW_RADIUS + 1)
    info = {"unknowns": int(band.sum()), "cg_iterations": 0, "converged": True, "ichol_shifted": False}
    if stats is not None:
        stats["coarse_solve"] = info  # filled in below
    if box is None:
        return known_values
    y0, y1, x0, x1 = box
    unknown = np.ascontiguousarray(band[y0:y1, x0:x1])
    known = ~unknown
    out = known_values.copy()
    if not known.any():  # nothing anchors the solution: keep the network's alpha
        info["converged"] = False
        out[y0:y1, x0:x1] = alpha[y0:y1, x0:x1]
        return out
    crop = np.ascontiguousarray(image[y0:y1, x0:x1], dtype=np.float64)
    laplacian = pymatting.cf_laplacian(crop, epsilon=options.matting_eps, radius=MATTING_WINDOW_RADIUS,
                                       is_known=known)
    u, k = unknown.ravel(), known.ravel()
    rows = laplacian[u]
    system = rows[:, u].tocsr()
    rhs = -(rows[:, k] @ known_values[y0:y1, x0:x1].ravel()[k].astype(np.float64))
    if not rhs.any():
        solution = np.zeros(int(u.sum()))  # only background is known nearby: the solution is 0
    else:
        count = [0]

        def callback(*_):
            count[0] += 1

        # pymatting prints a "PERFORMANCE WARNING" when the unshifted factorisation fails and it
        # retries with a diagonal shift (seen at 4K): a fact for the stats, not for the terminal.
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            preconditioner = pymatting.ichol(system)
        if printed.getvalue():
            info["ichol_shifted"] = True
        try:
            solution = pymatting.cg(system, rhs, M=preconditioner, rtol=options.cg_rtol,
                                    maxiter=options.cg_maxiter, callback=callback)
        except ValueError:  # pymatting's cg raises when maxiter passes without convergence
            info["converged"] = False
            solution = alpha[y0:y1, x0:x1].ravel()[u].astype(np.float64)
        info["cg_iterations"] = count[0]
    patch = out[y0:y1, x0:x1]
    patch[unknown] = np.clip(solution, 0.0, 1.0)
    return out


# -- refinement -------------------------------------------------------------------------------------------
def _unit(image: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows y0:y1, columns x0:x1 of the image as C-contiguous float32 in [0, 1]."""
    crop = image[y0:y1, x0:x1]
    if image.dtype == np.float32:
        return np.ascontiguousarray(crop)
    return crop.astype(np.float32) * np.float32(1.0 / ops.unit_scale(image.dtype))


def _tiles(height: int, width: int, tile: int | None):
    side_y = height if tile is None else tile
    side_x = width if tile is None else tile
    for y in range(0, height, side_y):
        for x in range(0, width, side_x):
            yield y, min(y + side_y, height), x, min(x + side_x, width)


def refine_alpha(image: np.ndarray, alpha: np.ndarray, options: RefineOptions | None = None, pixel: Any = None,
                 *, stats: dict | None = None) -> np.ndarray:
    """Refine `alpha` (H x W float32 in [0, 1]: the network's alpha upsampled bilinearly to the
    image's size) with `image` (H x W x 3 RGB: float32 in [0, 1], uint8 or uint16). Returns a new
    H x W float32 alpha in [0, 1], equal to `alpha` outside the uncertain band; method "none"
    returns `alpha` itself. `pixel` picks where the per-pixel parts run: "host" (None), "device",
    "emulate", or the pipeline's pixel ops. `stats`, when given, receives the geometry, the band's
    size, the coarse solve's iterations, the tiles visited and the time of each stage."""
    options = RefineOptions() if options is None else options
    if not isinstance(options, RefineOptions):
        raise InputError(f"refine: options must be a RefineOptions, got {type(options).__name__}")
    height, width = _check_inputs(image, alpha)
    if options.method == "none":
        return alpha
    pixels = _pixels(pixel)
    geometry = Geometry.of(height, width, options)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # 1-2. the coarse level, on the CPU
    coarse_image = ops.resize_image(image, geometry.coarse_height, geometry.coarse_width)
    coarse_alpha = np.clip(ops.resize_image(alpha[..., None], geometry.coarse_height, geometry.coarse_width)[..., 0],
                           0.0, 1.0)
    coarse_band = morphology.dilate_reference(
        guided_filter.band_seed_reference(coarse_alpha, options.soft_low, options.soft_high),
        geometry.coarse_band_radius).astype(bool)
    timings["coarse_resize_and_band"] = time.perf_counter() - started
    mark = time.perf_counter()
    solve_stats: dict = {}
    coarse = closed_form_band(coarse_image, coarse_alpha, coarse_band, options, solve_stats)
    del coarse_image, coarse_alpha, coarse_band
    timings["coarse_solve"] = time.perf_counter() - mark

    # 3. full resolution, tile by tile
    mark = time.perf_counter()
    out = alpha.copy()
    coarse_device = pixels.upload(coarse[None])
    R, r = geometry.band_radius, geometry.guided_radius
    visited = band_pixels = 0
    lo, hi = np.float32(options.soft_low), np.float32(options.soft_high)
    for y0, y1, x0, x1 in _tiles(height, width, options.tile):
        # the band of the tile needs alpha R + 1 beyond it (the seeds' contour test looks one further)
        by0, by1, bx0, bx1 = max(0, y0 - R - 1), min(height, y1 + R + 1), max(0, x0 - R - 1), min(width, x1 + R + 1)
        region = alpha[by0:by1, bx0:bx1]
        if region.max() <= lo or region.min() >= hi:  # no soft pixel and no 0.5 contour: no seed
            continue
        band = pixels.band(pixels.upload(region), options.soft_low, options.soft_high, R)
        band = band[y0 - by0: y1 - by0, x0 - bx0: x1 - bx0]
        rows = pixels.to_host(band.any(axis=1))
        if not rows.any():
            continue
        cols = pixels.to_host(band.any(axis=0))
        ry0, ry1 = y0 + int(np.argmax(rows)), y1 - int(np.argmax(rows[::-1]))
        rx0, rx1 = x0 + int(np.argmax(cols)), x1 - int(np.argmax(cols[::-1]))
        band = band[ry0 - y0: ry1 - y0, rx0 - x0: rx1 - x0]
        # the guided filter needs the image 2r beyond the band's box (two box filters of radius r)
        gy0, gy1, gx0, gx1 = max(0, ry0 - 2 * r), min(height, ry1 + 2 * r), max(0, rx0 - 2 * r), min(width, rx1 + 2 * r)
        row_taps = [pixels.xp.asarray(t) for t in bilinear_taps(np.arange(gy0, gy1), geometry.coarse_height, height)]
        col_taps = [pixels.xp.asarray(t) for t in bilinear_taps(np.arange(gx0, gx1), geometry.coarse_width, width)]
        p = resample(coarse_device, row_taps, col_taps)[0]
        refined = pixels.guided(pixels.upload(_unit(image, gy0, gy1, gx0, gx1)), pixels.xp.ascontiguousarray(p),
                                pixels.upload(alpha[ry0:ry1, rx0:rx1]), pixels.xp.ascontiguousarray(band),
                                (ry0 - gy0, rx0 - gx0), r, options.guided_eps)
        out[ry0:ry1, rx0:rx1] = pixels.to_host(refined)
        visited += 1
        band_pixels += int(band.sum())
    timings["full_resolution"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    if stats is not None:
        stats.update(geometry=asdict(geometry), pixel=pixels.name, tiles_refined=visited, band_pixels=band_pixels,
                     band_fraction=band_pixels / (height * width), seconds=timings, **solve_stats)
    return out


def tiled_versus_whole(image: np.ndarray, alpha: np.ndarray, options: RefineOptions | None = None,
                       pixel: Any = None) -> dict:
    """The difference between refining in tiles (options.tile) and in one piece (tile=None):
    max |difference|, its sum / 1000 (SAD's unit), the pixels that differ, and both times."""
    options = RefineOptions() if options is None else options
    if options.tile is None:
        raise InputError("tiled_versus_whole: options.tile is None (nothing to compare); give a tile size")
    t0 = time.perf_counter()
    tiled = refine_alpha(image, alpha, options, pixel)
    t1 = time.perf_counter()
    whole = refine_alpha(image, alpha, options.replace(tile=None), pixel)
    t2 = time.perf_counter()
    diff = np.abs(tiled.astype(np.float64) - whole.astype(np.float64))
    return {"tile": options.tile, "max_abs_diff": float(diff.max()), "sum_abs_diff_per_1000": float(diff.sum() / 1000),
            "pixels_different": int(np.count_nonzero(diff)), "pixels": int(diff.size),
            "tiled_seconds": t1 - t0, "whole_seconds": t2 - t1}


def warm_up() -> float:
    """Import pymatting (numba compiles or loads its functions) and refine a small image once;
    returns the seconds it took."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    image = rng.random((48, 64, 3), dtype=np.float32)
    alpha = np.zeros((48, 64), np.float32)
    alpha[12:36, 16:48] = 1.0
    refine_alpha(image, alpha, RefineOptions(coarse_side=32))
    return time.perf_counter() - started


__all__ = [
    "Geometry",
    "PIXEL_CHOICES",
    "REFINE_METHODS",
    "RefineOptions",
    "closed_form_band",
    "refine_alpha",
    "tiled_versus_whole",
    "warm_up",
]
