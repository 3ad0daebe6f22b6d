"""Image panels drawn with Pillow and NumPy (charts are mattrt/charts.py, with matplotlib):

- `heat_map`: a float map -> RGB with a perceptually ordered colour ramp;
- `grey`: a [0, 1] map -> grey RGB;
- `image_grid`: labelled panels (uint8 RGB arrays) in rows, with a title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mattrt.errors import InputError

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


__all__ = ["font", "grey", "heat_map", "image_grid"]
