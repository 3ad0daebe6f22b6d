"""Synthetic matting data with exact ground truth: image, alpha, foreground, background.

Each sample belongs to one of the three image types of AIM-500 (Li et al., "Deep Automatic
Natural Image Matting"), each drawn in a few variants:

- salient_opaque: an opaque blob with hair ("hair": long curly strands) or fur ("fur": dense
  short strands); the strands are thinner than a pixel, so they give partial coverage;
- salient_transparent: a glass vase with a partly transparent interior, a denser rim and a
  highlight ("glass"), or a warped net of sub-pixel threads ("net");
- non_salient: smoke over the frame ("smoke"), a wire fence across the whole image ("fence"),
  or water droplets ("droplets").

Everything is vectorised NumPy driven by one `numpy.random.Generator`, so a sample depends
only on (kind, size, generator state) and the same seed gives the same bytes.

Quantisation keeps the ground truth exact: alpha is quantised to 16 bit first, the foreground
and background to 8 bit, and the image is the matting equation I = alpha F + (1 - alpha) B
evaluated in float64 on exactly those stored values, rounded to the nearest 8-bit level. So
|image - (alpha fg + (1 - alpha) bg)| <= 0.5 holds for the arrays as written to disk
(alpha.png is 16 bit; `Sample.alpha` is float32 k/65535, the same values `read_alpha` returns).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from mattrt.errors import InputError
from mattrt.imageio import quantise, to_float32
from mattrt.imagewrite import write_alpha, write_bytes, write_rgb
from mattrt.resources import require_memory

KINDS = ("salient_opaque", "salient_transparent", "non_salient")
VARIANTS = {
    "salient_opaque": ("hair", "fur"),
    "salient_transparent": ("glass", "net"),
    "non_salient": ("smoke", "fence", "droplets"),
}
MIN_SIDE = 8
SYNTH_BYTES_PER_PIXEL = 192
"""Memory one sample takes while it is drawn: tracemalloc measured a peak of 157 bytes per pixel
over every kind and variant at 256 x 256 and 512 x 512; 192 leaves headroom."""
MANIFEST_FORMAT = "mattrt-synthetic/1"
FOLDERS = {"image": "images", "alpha": "alpha", "fg": "fg", "bg": "bg", "trimap": "trimaps"}


@dataclass(frozen=True)
class Sample:
    """One synthetic sample. image, fg, bg: H x W x 3 uint8; alpha: H x W float32 (k / 65535)."""

    image: np.ndarray
    alpha: np.ndarray
    fg: np.ndarray
    bg: np.ndarray
    kind: str
    variant: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.alpha.shape[1]), int(self.alpha.shape[0])

    def alpha16(self) -> np.ndarray:
        """The alpha as the uint16 levels it was quantised to."""
        return quantise(self.alpha, 16, "alpha")

    def unknown_fraction(self) -> float:
        """Fraction of pixels with 0 < alpha < 1."""
        return float(((self.alpha > 0) & (self.alpha < 1)).mean())


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample `index` in a set made with `seed` (independent per sample)."""
    return np.random.default_rng([int(seed), int(index)])


def parse_size(text: str) -> tuple[int, int]:
    """'512x384' -> (512, 384); '512' -> (512, 512)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(text))
    if not match:
        raise InputError(f"size {text!r} is not WIDTHxHEIGHT (e.g. 512x512) or a single side (e.g. 512)")
    width = int(match.group(1))
    height = int(match.group(2)) if match.group(2) is not None else width
    _check_size((width, height))
    return width, height


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be (width, height), got {size!r}") from None
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InputError(f"size {width}x{height} is too small: each side must be at least {MIN_SIDE} pixels")
    return width, height


def generate_sample(kind: str, size: Sequence[int], rng: np.random.Generator,
                    variant: str | None = None) -> Sample:
    """Draw one sample of `kind` (see KINDS) at size (width, height); `variant` picks one of
    VARIANTS[kind] (default: drawn from rng)."""
    if kind not in VARIANTS:
        raise InputError(f"unknown sample kind {kind!r}; expected one of {', '.join(KINDS)}")
    width, height = _check_size(size)
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    choices = VARIANTS[kind]
    if variant is None:
        variant = choices[int(rng.integers(len(choices)))]
    elif variant not in choices:
        raise InputError(f"unknown variant {variant!r} for {kind}; expected one of {', '.join(choices)}")
    canvas = _Canvas(height, width)
    alpha, fg = _DRAWERS[variant](canvas, rng)
    bg = _background(canvas, rng)
    alpha_levels = quantise(np.clip(alpha, 0.0, 1.0), 16, "alpha")
    alpha32 = to_float32(alpha_levels)
    fg8 = quantise(np.clip(fg, 0.0, 1.0), 8, "fg")
    bg8 = quantise(np.clip(bg, 0.0, 1.0), 8, "bg")
    return Sample(composite(alpha32, fg8, bg8), alpha32, fg8, bg8, kind, variant)


def composite(alpha: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """I = alpha F + (1 - alpha) B on uint8 F and B, in float64, rounded to uint8."""
    weight = np.asarray(alpha, dtype=np.float64)[..., None]
    blend = weight * fg.astype(np.float64) + (1.0 - weight) * bg.astype(np.float64)
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def make_trimap(alpha: np.ndarray, radius: int) -> np.ndarray:
    """uint8 trimap: 128 within `radius` pixels (square window) of any 0 < alpha < 1 pixel,
    else 255 where alpha is 1 and 0 where it is 0."""
    if radius < 0:
        raise InputError(f"trimap radius must be >= 0, got {radius}")
    alpha = np.asarray(alpha)
    unknown = (alpha > 0) & (alpha < 1)
    if radius:
        unknown = ndimage.maximum_filter(unknown, size=2 * radius + 1, mode="constant", cval=False)
    trimap = np.where(alpha >= 1, 255, 0).astype(np.uint8)
    trimap[unknown] = 128
    return trimap


def default_trimap_radius(size: Sequence[int]) -> int:
    """1% of the shorter side, at least 1 pixel (5 at 512)."""
    return max(1, round(0.01 * min(size)))


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------


class _Canvas:
    """Pixel coordinates (pixel centres at integers) and the scale relative to a 512 canvas."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.scale = min(height, width) / 512.0
        self.y = np.arange(height, dtype=np.float64)[:, None]
        self.x = np.arange(width, dtype=np.float64)[None, :]

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


def _resize_smooth(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upsample a small random grid to height x width with smoothstep-weighted bilinear interpolation."""
    rows, cols = grid.shape

    def axis(n: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
        position = (np.arange(n) + 0.5) / n * (cells - 1)
        index = np.minimum(np.floor(position).astype(np.intp), cells - 2)
        t = position - index
        return index, t * t * (3.0 - 2.0 * t)

    iy, ty = axis(height, rows)
    ix, tx = axis(width, cols)
    along_x = grid[:, ix] * (1.0 - tx) + grid[:, ix + 1] * tx  # rows x width
    return along_x[iy] * (1.0 - ty)[:, None] + along_x[iy + 1] * ty[:, None]


def _fractal_noise(canvas: _Canvas, rng: np.random.Generator, cells: float, octaves: int = 4,
                   persistence: float = 0.5) -> np.ndarray:
    """Value noise summed over octaves, stretched to [0, 1]."""
    height, width = canvas.shape
    longest = max(height, width)
    total = np.zeros(canvas.shape)
    amplitude = 1.0
    for octave in range(octaves):
        count = cells * 2 ** octave
        grid = rng.random((max(2, round(count * height / longest) + 2), max(2, round(count * width / longest) + 2)))
        total += amplitude * _resize_smooth(grid, height, width)
        amplitude *= persistence
    low, high = total.min(), total.max()
    return (total - low) / (high - low) if high > low else np.zeros_like(total)


def _colour(rng: np.random.Generator, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return rng.uniform(low, high, 3)


def _colour_field(canvas: _Canvas, rng: np.random.Generator, colours: Sequence[np.ndarray], cells: float,
                  grain: float = 0.02) -> np.ndarray:
    """Blend of `colours` driven by fractal noise, plus fine per-pixel grain."""
    weight = _fractal_noise(canvas, rng, cells)
    knots = np.linspace(0.0, 1.0, len(colours))
    field = np.stack([np.interp(weight, knots, [c[channel] for c in colours]) for channel in range(3)], axis=-1)
    if grain:
        field += rng.normal(0.0, grain, canvas.shape)[..., None]
    return field


def _background(canvas: _Canvas, rng: np.random.Generator) -> np.ndarray:
    style = ("noise", "stripes", "checker", "bokeh")[int(rng.integers(4))]
    colours = [_colour(rng) for _ in range(3)]
    base = _colour_field(canvas, rng, colours, cells=rng.uniform(2, 6), grain=0.0)
    if style == "noise":
        detail = _fractal_noise(canvas, rng, cells=rng.uniform(12, 40) * max(canvas.scale, 0.25), octaves=3)
        field = base * (0.75 + 0.5 * detail[..., None])
    elif style in ("stripes", "checker"):
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(10, 60) * max(canvas.scale, 0.1)
        u = canvas.x * math.cos(angle) + canvas.y * math.sin(angle)
        v = -canvas.x * math.sin(angle) + canvas.y * math.cos(angle)
        wave = np.sin(2 * math.pi * u / period)
        if style == "checker":
            wave = wave * np.sin(2 * math.pi * v / period)
        mix = 1.0 / (1.0 + np.exp(-wave * rng.uniform(2, 12)))  # soft-edged pattern
        other = _colour(rng)
        field = base * (1.0 - mix[..., None]) + other * mix[..., None]
    else:
        field = base.copy()
        for _ in range(int(rng.integers(6, 16))):
            cy, cx = rng.uniform(0, canvas.height), rng.uniform(0, canvas.width)
            radius = rng.uniform(0.03, 0.15) * min(canvas.shape)
            softness = rng.uniform(1, 0.3 * radius + 1)
            strength = rng.uniform(0.2, 0.7)
            colour = _colour(rng, 0.4, 1.0)
            # Only the disc's bounding box can change.
            reach = radius + softness
            top, bottom = max(0, int(cy - reach)), min(canvas.height, int(cy + reach) + 2)
            left, right = max(0, int(cx - reach)), min(canvas.width, int(cx + reach) + 2)
            if top >= bottom or left >= right:
                continue
            distance = np.hypot(canvas.y[top:bottom] - cy, canvas.x[:, left:right] - cx)
            disc = (strength * np.clip((radius - distance) / softness + 0.5, 0, 1))[..., None]
            patch = field[top:bottom, left:right]
            field[top:bottom, left:right] = patch * (1 - disc) + colour * disc
    return field + rng.normal(0.0, 0.015, canvas.shape)[..., None]


def _splat(canvas: _Canvas, ys: np.ndarray, xs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accumulate point weights onto the pixel grid with bilinear footprints."""
    height, width = canvas.shape
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = ys - y0, xs - x0
    y0, x0 = y0.astype(np.intp), x0.astype(np.intp)
    total = np.zeros(height * width)
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        total += np.bincount((yy * width + xx)[inside], (weights * w)[inside], minlength=height * width)
    return total.reshape(height, width)


def _line_coverage(distance: np.ndarray, line_width: float | np.ndarray) -> np.ndarray:
    """Fraction of a unit pixel covered by a line of the given width whose centre is `distance` away."""
    half = np.asarray(line_width) / 2.0
    return np.clip(np.minimum(distance + half, 0.5) - np.maximum(distance - half, -0.5), 0.0, 1.0)


def _grid_lines(canvas: _Canvas, rng: np.random.Generator, period: float, line_width: float,
                warp: float) -> np.ndarray:
    """Coverage of two families of warped, rotated parallel lines."""
    angle = rng.uniform(0, math.pi / 2)
    u = canvas.x * math.cos(angle) + canvas.y * math.sin(angle)
    v = -canvas.x * math.sin(angle) + canvas.y * math.cos(angle)
    wavelength = rng.uniform(4, 10) * period
    u = u + warp * np.sin(2 * math.pi * v / wavelength + rng.uniform(0, 2 * math.pi))
    v = v + warp * np.sin(2 * math.pi * u / wavelength + rng.uniform(0, 2 * math.pi))
    offset_u, offset_v = rng.uniform(0, period, 2)
    distance_u = np.abs(np.mod(u + offset_u, period) - period / 2)
    distance_v = np.abs(np.mod(v + offset_v, period) - period / 2)
    return 1.0 - (1.0 - _line_coverage(distance_u, line_width)) * (1.0 - _line_coverage(distance_v, line_width))


def _draw_strands(canvas: _Canvas, rng: np.random.Generator, hair: bool) -> tuple[np.ndarray, np.ndarray]:
    height, width = canvas.shape
    side = min(height, width)
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    radius = side * rng.uniform(0.17, 0.26)
    orders = np.arange(2, 6)
    amplitudes = rng.uniform(0, 0.12, orders.size) / orders
    phases = rng.uniform(0, 2 * math.pi, orders.size)

    def boundary(theta: np.ndarray) -> np.ndarray:
        total = np.ones_like(theta)
        for order, amplitude, phase in zip(orders, amplitudes, phases):
            total += amplitude * np.cos(order * theta + phase)
        return radius * total

    dy, dx = canvas.y - cy, canvas.x - cx
    body = np.clip(boundary(np.arctan2(dy, dx)) - np.hypot(dy, dx) + 0.5, 0.0, 1.0)

    perimeter_scale = side / 512.0
    if hair:
        count = max(8, int(260 * perimeter_scale))
        lengths = radius * rng.uniform(0.3, 0.9, count)
        widths = rng.uniform(0.25, 0.9, count)
        curvature = rng.normal(0, 1.2, count) / radius
        wiggle = rng.uniform(0.1, 0.6, count)
    else:
        count = max(16, int(1100 * perimeter_scale))
        lengths = radius * rng.uniform(0.07, 0.25, count)
        widths = rng.uniform(0.3, 1.0, count)
        curvature = rng.normal(0, 0.8, count) / radius
        wiggle = rng.uniform(0.0, 0.15, count)
    opacity = rng.uniform(0.5, 1.0, count)
    root_angle = rng.uniform(0, 2 * math.pi, count)
    root_radius = boundary(root_angle) - rng.uniform(1, 4, count) * max(perimeter_scale, 0.25)
    heading = root_angle + rng.uniform(-0.6, 0.6, count)
    wiggle_period = rng.uniform(0.2, 0.6, count) * lengths + 1.0
    wiggle_phase = rng.uniform(0, 2 * math.pi, count)

    step = 0.5  # pixels between points along a strand
    steps = int(math.ceil(lengths.max() / step)) + 1
    arc = np.arange(steps) * step  # steps
    angle = (heading[:, None] + curvature[:, None] * arc
             + wiggle[:, None] * np.sin(2 * math.pi * arc / wiggle_period[:, None] + wiggle_phase[:, None]))
    ys = cy + root_radius[:, None] * np.sin(root_angle)[:, None] + np.cumsum(step * np.sin(angle), axis=1)
    xs = cx + root_radius[:, None] * np.cos(root_angle)[:, None] + np.cumsum(step * np.cos(angle), axis=1)
    along = arc / lengths[:, None]
    taper = np.clip(1.0 - along, 0.0, 1.0) ** (0.5 if hair else 1.0)
    weights = opacity[:, None] * widths[:, None] * taper * step
    coverage = _splat(canvas, ys.ravel(), xs.ravel(), weights.ravel())
    strands = 1.0 - np.exp(-coverage)
    alpha = 1.0 - (1.0 - body) * (1.0 - strands)

    if hair:
        colours = [_colour(rng, 0.05, 0.5), _colour(rng, 0.2, 0.8), _colour(rng, 0.4, 0.95)]
    else:
        colours = [_colour(rng, 0.3, 1.0), _colour(rng, 0.1, 0.7)]
    fg = _colour_field(canvas, rng, colours, cells=rng.uniform(3, 8))
    return alpha, fg


def _draw_hair(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return _draw_strands(canvas, rng, hair=True)


def _draw_fur(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return _draw_strands(canvas, rng, hair=False)


def _draw_glass(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = canvas.shape
    side = min(height, width)
    cy, cx = height * rng.uniform(0.42, 0.58), width * rng.uniform(0.42, 0.58)
    half_height = side * rng.uniform(0.28, 0.42)
    half_width = side * rng.uniform(0.12, 0.22)
    dy, dx = canvas.y - cy, canvas.x - cx
    v = np.clip(dy / half_height, -1.0, 1.0)
    bulge = rng.uniform(0.1, 0.4)
    neck = rng.uniform(0.0, 0.35)
    profile = half_width * (1.0 + bulge * np.sin(math.pi * (v + 1) / 2) * (v > -0.2)
                            - neck * np.exp(-((v + 0.7) / 0.2) ** 2))
    signed = np.minimum(profile - np.abs(dx), half_height - np.abs(dy))  # ~ distance inside, in pixels
    coverage = np.clip(signed + 0.5, 0.0, 1.0)
    rim_width = rng.uniform(2, 7) * max(canvas.scale, 0.2)
    rim = np.exp(-np.maximum(signed, 0.0) / rim_width)
    interior, rim_alpha = rng.uniform(0.04, 0.3), rng.uniform(0.55, 0.95)
    streak_x = rng.uniform(-0.6, 0.6) * half_width
    streak = np.exp(-((dx - streak_x) / (rng.uniform(0.04, 0.12) * half_width + 0.5)) ** 2) * (np.abs(v) < 0.8)
    streak_strength = rng.uniform(0.2, 0.7)
    alpha = coverage * np.clip(interior + (rim_alpha - interior) * rim + streak_strength * streak, 0.0, 1.0)
    tint = _colour(rng, 0.55, 1.0)
    fg = _colour_field(canvas, rng, [tint * 0.8, tint, np.minimum(tint * 1.15, 1.0)], cells=3, grain=0.01)
    fg = fg + streak[..., None] * (1.0 - fg) * 0.8  # highlights tend to white
    return alpha, fg


def _draw_net(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    height, width = canvas.shape
    cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
    ry, rx = height * rng.uniform(0.25, 0.4), width * rng.uniform(0.25, 0.4)
    inside = 1.0 - np.hypot((canvas.y - cy) / ry, (canvas.x - cx) / rx)
    region = np.clip(inside * min(ry, rx) + 0.5, 0.0, 1.0)  # ~1 pixel anti-aliased rim
    period = rng.uniform(6, 18) * max(canvas.scale, 0.3)
    threads = _grid_lines(canvas, rng, period, rng.uniform(0.4, 1.6), warp=rng.uniform(0, 0.5) * period)
    alpha = region * threads * rng.uniform(0.7, 1.0)
    fg = _colour_field(canvas, rng, [_colour(rng), _colour(rng)], cells=rng.uniform(2, 5))
    return alpha, fg


def _draw_smoke(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    density = _fractal_noise(canvas, rng, cells=rng.uniform(2, 5), octaves=5, persistence=0.55)
    low = rng.uniform(0.15, 0.45)
    high = low + rng.uniform(0.3, 0.6)
    alpha = np.clip((density - low) / (high - low), 0.0, 1.0) ** rng.uniform(0.8, 1.6)
    if rng.random() < 0.6:  # a rising plume rather than haze over the whole frame
        height, width = canvas.shape
        centre = width * (rng.uniform(0.3, 0.7) + 0.1 * np.sin(canvas.y / height * rng.uniform(2, 7)))
        spread = width * rng.uniform(0.12, 0.3) * (0.5 + canvas.y / height)
        alpha = alpha * np.exp(-((canvas.x - centre) / spread) ** 2)
    alpha = alpha * rng.uniform(0.6, 1.0)
    shade = rng.uniform(0.6, 1.0) if rng.random() < 0.7 else rng.uniform(0.05, 0.3)
    fg = _colour_field(canvas, rng, [np.full(3, shade) * 0.9, np.full(3, shade)], cells=4, grain=0.01)
    return alpha, fg


def _draw_fence(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    period = rng.uniform(14, 40) * max(canvas.scale, 0.25)
    alpha = _grid_lines(canvas, rng, period, rng.uniform(1.0, 3.5) * max(canvas.scale, 0.5),
                        warp=rng.uniform(0, 0.15) * period)
    metal = _colour(rng, 0.3, 0.8)
    fg = _colour_field(canvas, rng, [metal * 0.6, metal, np.minimum(metal * 1.3, 1.0)], cells=6)
    return alpha, fg


def _draw_droplets(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    alpha = np.zeros(canvas.shape)
    highlight = np.zeros(canvas.shape)
    for cell in sorted(rng.uniform(10, 45, 2) * max(canvas.scale, 0.3)):
        # One droplet at most per cell of a jittered grid, so droplets never overlap within a layer.
        rows = int(math.ceil(canvas.height / cell)) + 1
        cols = int(math.ceil(canvas.width / cell)) + 1
        radius = cell * rng.uniform(0.12, 0.42, (rows, cols))
        present = rng.random((rows, cols)) < rng.uniform(0.35, 0.9)
        centre_y = (np.arange(rows)[:, None] + rng.uniform(0, 1, (rows, cols)) * (1 - 2 * radius / cell)) * cell + radius
        centre_x = (np.arange(cols)[None, :] + rng.uniform(0, 1, (rows, cols)) * (1 - 2 * radius / cell)) * cell + radius
        body_alpha = rng.uniform(0.15, 0.5, (rows, cols))
        iy = np.minimum((canvas.y // cell).astype(np.intp), rows - 1)
        ix = np.minimum((canvas.x // cell).astype(np.intp), cols - 1)
        r = radius[iy, ix]
        dy, dx = canvas.y - centre_y[iy, ix], canvas.x - centre_x[iy, ix]
        distance = np.hypot(dy, dx)
        coverage = np.clip(r - distance + 0.5, 0.0, 1.0) * present[iy, ix]
        relative = np.clip(distance / r, 0.0, 1.0)
        spot = np.exp(-(np.hypot(dy + 0.35 * r, dx + 0.35 * r) / (0.18 * r + 0.5)) ** 2)
        layer = coverage * np.clip(body_alpha[iy, ix] + 0.45 * relative ** 4 + 0.6 * spot, 0.0, 1.0)
        alpha = 1.0 - (1.0 - alpha) * (1.0 - layer)
        highlight = np.maximum(highlight, coverage * spot)
    water = _colour(rng, 0.55, 0.95)
    fg = _colour_field(canvas, rng, [water * 0.7, water], cells=3, grain=0.01)
    fg = fg + highlight[..., None] * (1.0 - fg)
    return alpha, fg


_DRAWERS = {
    "hair": _draw_hair,
    "fur": _draw_fur,
    "glass": _draw_glass,
    "net": _draw_net,
    "smoke": _draw_smoke,
    "fence": _draw_fence,
    "droplets": _draw_droplets,
}


# ----------------------------------------------------------------------------------------------
# Writing a set
# ----------------------------------------------------------------------------------------------


def write_dataset(out: str | Path, count: int, size: Sequence[int], seed: int, *,
                  kinds: Sequence[str] = KINDS, trimap_radius: int | None = None,
                  overwrite: bool = False, progress: bool = True) -> dict:
    """Generate `count` samples into `out` and write a manifest; returns the manifest.

    Layout (one stem per sample, the same in every folder so `mattrt eval` pairs them):
      out/images/<id>.png   composite, 8-bit RGB
      out/alpha/<id>.png    ground-truth alpha, 16-bit greyscale
      out/fg/<id>.png, out/bg/<id>.png   foreground and background, 8-bit RGB
      out/trimaps/<id>.png  0/128/255 trimap from the alpha (unknown band dilated by trimap_radius)
      out/manifest.json     every sample's id, kind, variant, seed, index, size and files
    Sample i has kind kinds[i % len(kinds)] and generator sample_rng(seed, i).
    Nothing is left behind when it fails or is interrupted.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise InputError(f"count must be a positive whole number, got {count!r}")
    width, height = _check_size(size)
    kinds = list(kinds)
    if not kinds:
        raise InputError("kinds is empty; give at least one of " + ", ".join(KINDS))
    for kind in kinds:
        if kind not in VARIANTS:
            raise InputError(f"unknown sample kind {kind!r}; expected one of {', '.join(KINDS)}")
    radius = default_trimap_radius((width, height)) if trimap_radius is None else int(trimap_radius)
    if radius < 0:
        raise InputError(f"trimap radius must be >= 0, got {radius}")

    require_memory(width * height * SYNTH_BYTES_PER_PIXEL, f"a {width}x{height} sample",
                   "use a smaller size (--size)")

    out = Path(out)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not overwrite:
        raise InputError(f"{out} already holds a synthetic set ({manifest_path.name}); "
                         "choose another folder or allow replacing it (--overwrite)")
    created_folders: list[Path] = []
    written: list[Path] = []
    try:
        for folder in [out, *(out / name for name in FOLDERS.values())]:
            missing = [f for f in [folder, *folder.parents] if not f.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            created_folders += [f for f in reversed(missing) if f not in created_folders]
    except OSError as exc:
        _remove_new(written, created_folders)
        raise InputError(f"cannot create the output folder {out} ({exc.strerror or exc})") from exc
    try:
        return _write_samples(out, manifest_path, count, width, height, seed, kinds, radius, overwrite, progress,
                              written)
    except BaseException:
        # A failure or an interrupt leaves no partial set: what this call wrote goes, old files stay.
        _remove_new(written, created_folders)
        raise


def _remove_new(written: list[Path], created_folders: list[Path]) -> None:
    for path in written:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for folder in reversed(created_folders):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty: never removes anything this call did not write


def _write_samples(out: Path, manifest_path: Path, count: int, width: int, height: int, seed: int,
                   kinds: list[str], radius: int, overwrite: bool, progress: bool, written: list[Path]) -> dict:
    def new(path: Path) -> Path:
        if not path.exists():
            written.append(path)
        return path

    samples = []
    digits = max(5, len(str(count - 1)))
    for index in tqdm(range(count), desc="synth", unit="sample", disable=not progress or None):
        kind = kinds[index % len(kinds)]
        sample = generate_sample(kind, (width, height), sample_rng(seed, index))
        stem = f"{index:0{digits}d}_{kind}"
        files = {key: f"{folder}/{stem}.png" for key, folder in FOLDERS.items()}
        write_rgb(new(out / files["image"]), sample.image, overwrite=overwrite)
        write_alpha(new(out / files["alpha"]), sample.alpha16(), bit_depth=16, overwrite=overwrite)
        write_rgb(new(out / files["fg"]), sample.fg, overwrite=overwrite)
        write_rgb(new(out / files["bg"]), sample.bg, overwrite=overwrite)
        write_alpha(new(out / files["trimap"]), make_trimap(sample.alpha, radius), bit_depth=8, overwrite=overwrite)
        samples.append({
            "id": stem,
            "kind": kind,
            "variant": sample.variant,
            "seed": int(seed),
            "index": index,
            "size": [width, height],
            "unknown_fraction": round(sample.unknown_fraction(), 6),
            "files": files,
        })
    manifest = {
        "format": MANIFEST_FORMAT,
        "generator": "mattrt.data.synthetic; sample i uses numpy.random.default_rng([seed, i])",
        "seed": int(seed),
        "count": count,
        "size": [width, height],
        "kinds": kinds,
        "trimap_radius": radius,
        "quantisation": "alpha 16-bit; fg, bg 8-bit; image = round(alpha*fg + (1-alpha)*bg) in float64 on the stored values",
        "samples": samples,
    }
    write_bytes(new(manifest_path), (json.dumps(manifest, indent=2) + "\n").encode("utf-8"), overwrite=overwrite)
    return manifest


__all__ = [
    "FOLDERS",
    "KINDS",
    "MANIFEST_FORMAT",
    "VARIANTS",
    "Sample",
    "composite",
    "default_trimap_radius",
    "generate_sample",
    "make_trimap",
    "parse_size",
    "sample_rng",
    "write_dataset",
]
