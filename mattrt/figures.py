"""Figures drawn with Pillow and NumPy (matplotlib is not a dependency).

- `line_chart`: curves over steps (training losses), linear or log y axis, with a legend;
- `heat_map`: a float map -> RGB with a perceptually ordered colour ramp;
- `image_grid`: labelled panels (uint8 RGB arrays) in rows, with a title.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mattrt.errors import InputError

# Distinct line colours (Tableau 10).
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]
# Anchor colours of the heat-map ramp (black -> purple -> orange -> pale yellow, like "inferno").
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, typeface) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=typeface)
    return right - left, bottom - top


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _format_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:g}"


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
               title: str = "", x_label: str = "", y_label: str = "", log_y: bool = False,
               size: tuple[int, int] = (960, 560)) -> Path:
    """Draw {label: (x values, y values)} as lines and save a PNG; returns the path."""
    if not series:
        raise InputError("line_chart: no series to draw")
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    small, large = font(13), font(16)
    margin_left, margin_right, margin_top, margin_bottom = 80, 20, 44, 56

    def transform(values: np.ndarray) -> np.ndarray:
        return np.log10(np.maximum(values, 1e-12)) if log_y else values

    xs = np.concatenate([np.asarray(x, dtype=np.float64) for x, _ in series.values()])
    ys = np.concatenate([transform(np.asarray(y, dtype=np.float64)) for _, y in series.values()])
    finite = np.isfinite(ys)
    if not finite.any():
        raise InputError("line_chart: every y value is NaN or infinite")
    x_low, x_high = float(xs.min()), float(xs.max())
    y_low, y_high = float(ys[finite].min()), float(ys[finite].max())
    if x_high == x_low:
        x_high = x_low + 1
    if y_high == y_low:
        y_high = y_low + 1
    pad = 0.04 * (y_high - y_low)
    y_low, y_high = y_low - pad, y_high + pad
    plot = (margin_left, margin_top, width - margin_right, height - margin_bottom)

    def to_pixel(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        px = plot[0] + (x - x_low) / (x_high - x_low) * (plot[2] - plot[0])
        py = plot[3] - (y - y_low) / (y_high - y_low) * (plot[3] - plot[1])
        return px, py

    draw.rectangle(plot, outline=(0, 0, 0))
    for tick in _nice_ticks(x_low, x_high):
        px, _ = to_pixel(np.array(tick), np.array(y_low))
        draw.line([(px, plot[3]), (px, plot[3] + 5)], fill=(0, 0, 0))
        label = _format_tick(tick)
        w, _ = _text_size(draw, label, small)
        draw.text((px - w / 2, plot[3] + 8), label, fill=(0, 0, 0), font=small)
    if log_y:
        y_ticks = [float(v) for v in range(math.ceil(y_low), math.floor(y_high) + 1)]
        if len(y_ticks) < 2:
            y_ticks = _nice_ticks(y_low, y_high)
    else:
        y_ticks = _nice_ticks(y_low, y_high)
    for tick in y_ticks:
        _, py = to_pixel(np.array(x_low), np.array(tick))
        draw.line([(plot[0] - 5, py), (plot[2], py)], fill=(225, 225, 225))
        draw.line([(plot[0] - 5, py), (plot[0], py)], fill=(0, 0, 0))
        label = _format_tick(10 ** tick if log_y else tick)
        w, h = _text_size(draw, label, small)
        draw.text((plot[0] - 8 - w, py - h / 2 - 2), label, fill=(0, 0, 0), font=small)
    draw.rectangle(plot, outline=(0, 0, 0))

    for index, (label, (x, y)) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        px, py = to_pixel(np.asarray(x, dtype=np.float64), transform(np.asarray(y, dtype=np.float64)))
        points = [(float(a), float(b)) for a, b in zip(px, py) if math.isfinite(b)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        elif points:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=colour)
        ly = plot[1] + 8 + 18 * index
        draw.line([(plot[2] - 170, ly + 7), (plot[2] - 145, ly + 7)], fill=colour, width=3)
        draw.text((plot[2] - 140, ly), label, fill=(0, 0, 0), font=small)

    if title:
        w, _ = _text_size(draw, title, large)
        draw.text(((width - w) / 2, 12), title, fill=(0, 0, 0), font=large)
    if x_label:
        w, _ = _text_size(draw, x_label, small)
        draw.text(((plot[0] + plot[2] - w) / 2, height - 22), x_label, fill=(0, 0, 0), font=small)
    if y_label:
        text = y_label + (" (log scale)" if log_y else "")
        w, h = _text_size(draw, text, small)
        label_image = Image.new("RGB", (w + 4, h + 6), "white")
        ImageDraw.Draw(label_image).text((2, 0), text, fill=(0, 0, 0), font=small)
        rotated = label_image.rotate(90, expand=True)
        image.paste(rotated, (8, int((plot[1] + plot[3] - rotated.height) / 2)))
    path = Path(path)
    image.save(path, format="PNG")
    return path


def heat_map(values: np.ndarray, vmax: float) -> np.ndarray:
    """H x W floats -> H x W x 3 uint8 on the ramp, 0 black and >= vmax pale yellow."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise InputError(f"heat_map: expected an H x W array, got shape {values.shape}")
    scale = vmax if vmax > 0 else 1.0
    position = np.clip(np.nan_to_num(values / scale, nan=1.0), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.minimum(np.floor(position).astype(int), len(_RAMP) - 2)
    fraction = (position - low)[..., None]
    colour = _RAMP[low] * (1 - fraction) + _RAMP[low + 1] * fraction
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8)


def grey(values: np.ndarray) -> np.ndarray:
    """H x W values in [0, 1] -> H x W x 3 uint8."""
    level = np.clip(np.rint(np.asarray(values, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(level[..., None], 3, axis=2)


def image_grid(rows: Sequence[Sequence[tuple[str, np.ndarray]]], path: str | Path, *, title: str = "",
               panel: int = 192, notes: Sequence[str] = ()) -> Path:
    """Save rows of (label, H x W x 3 uint8) panels, each fitted into panel x panel, as a PNG."""
    if not rows or not any(rows):
        raise InputError("image_grid: no panels to draw")
    columns = max(len(r) for r in rows)
    gap, label_height = 8, 34
    small, large = font(12), font(16)
    title_height = 34 if title else 8
    notes_height = 18 * len(notes) + (8 if notes else 0)
    width = gap + columns * (panel + gap)
    height = title_height + len(rows) * (panel + label_height + gap) + notes_height
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        w, _ = _text_size(draw, title, large)
        draw.text(((width - w) / 2, 8), title, fill=(0, 0, 0), font=large)
    for r, row in enumerate(rows):
        top = title_height + r * (panel + label_height + gap)
        for c, (label, array) in enumerate(row):
            array = np.asarray(array)
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise InputError(f"image_grid: panel {label!r} must be H x W x 3 uint8, got {array.dtype} {array.shape}")
            tile = Image.fromarray(array)
            tile.thumbnail((panel, panel), Image.Resampling.BILINEAR)
            left = gap + c * (panel + gap)
            canvas.paste(tile, (left + (panel - tile.width) // 2, top + (panel - tile.height) // 2))
            for i, line in enumerate(label.split("\n")[:2]):
                w, _ = _text_size(draw, line, small)
                draw.text((left + (panel - w) / 2, top + panel + 2 + 15 * i), line, fill=(0, 0, 0), font=small)
    for i, note in enumerate(notes):
        draw.text((gap, height - notes_height + 4 + 18 * i), note, fill=(60, 60, 60), font=small)
    path = Path(path)
    canvas.save(path, format="PNG")
    return path


__all__ = ["font", "grey", "heat_map", "image_grid", "line_chart"]
