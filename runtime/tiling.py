"""Tiling plans and blending windows.

A plan covers an H x W image with T x T tiles overlapping by at least O pixels:

- the tiles lie inside a canvas of max(T, H rounded up to the stride) by the same for W; the
  canvas beyond the image is filled by reflection (the tile crops do it on the fly), so an image
  smaller than one tile is one reflected tile;
- every tile offset is a multiple of the stride multiple, so pooling grids inside every tile
  line up with those of one whole-canvas call, and tiles never reach past the canvas: the only
  difference from a whole-canvas call is what a tile cannot see across its inner edges;
- offsets along an axis are spread as evenly as the stride allows, with steps of at most
  T - O rounded down to the stride.

Blending: each tile's window is the outer product of two 1-D profiles. Along an inner edge
(one shared with a neighbour) the profile is 0 over the first `margin` pixels (the predictions
that miss the most context are dropped), then rises as a raised cosine over O - 2 * margin
pixels to 1; along a canvas edge it stays 1. Two neighbours at exactly T - O apart have
profiles summing to 1 over their overlap (when O <= T / 2); in every case the stitched value is
sum(w_b * tile_b) / sum(w_b), whose weights sum to 1 at every pixel, and every pixel has a
tile with non-zero weight because margin < O / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mattrt.errors import InputError


def axis_offsets(length: int, tile: int, overlap: int, stride: int) -> tuple[list[int], int]:
    """Tile starts along one axis of `length` pixels and the canvas extent they cover."""
    canvas = tile if length <= tile else -(-length // stride) * stride
    if canvas == tile:
        return [0], canvas
    step_max = (tile - overlap) // stride * stride
    units = (canvas - tile) // stride
    count = -(-(canvas - tile) // step_max) + 1
    return [stride * (i * units // (count - 1)) for i in range(count)], canvas


def profile(tile: int, overlap: int, margin: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    """1-D blending profile of one tile along one axis (see the module docstring)."""
    ramp_length = overlap - 2 * margin
    ramp = np.ones(tile, dtype=np.float64)
    if overlap > 0 and ramp_length > 0:
        t = (np.arange(ramp_length) + 0.5) / ramp_length
        rise = 0.5 - 0.5 * np.cos(np.pi * t)
        start = np.concatenate([np.zeros(margin), rise, np.ones(tile - margin - ramp_length)])
    else:
        start = np.ones(tile)
    if taper_start:
        ramp = ramp * start
    if taper_end:
        ramp = ramp * start[::-1]
    return ramp.astype(np.float32)


@lru_cache(maxsize=64)
def _window(tile: int, overlap: int, margin: int, kind_y: tuple[bool, bool], kind_x: tuple[bool, bool]) -> np.ndarray:
    window = np.outer(profile(tile, overlap, margin, *kind_y), profile(tile, overlap, margin, *kind_x))
    window.setflags(write=False)
    return window


@lru_cache(maxsize=16)
def _window_stack(tile: int, overlap: int, margin: int, rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    kinds: dict[tuple, int] = {}
    index = np.empty(rows * columns, dtype=np.int32)
    for row in range(rows):
        for col in range(columns):
            key = ((row > 0, row < rows - 1), (col > 0, col < columns - 1))
            index[row * columns + col] = kinds.setdefault(key, len(kinds))
    stack = np.stack([_window(tile, overlap, margin, *key) for key in kinds])
    stack.setflags(write=False)
    index.setflags(write=False)
    return stack, index


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile: int
    overlap: int
    stride: int
    margin: int
    tops: tuple[int, ...]
    lefts: tuple[int, ...]
    canvas_height: int
    canvas_width: int

    @classmethod
    def build(cls, height: int, width: int, tile: int, overlap: int, stride: int = 1, margin: int | None = None) -> "TilePlan":
        check_tiling(tile, overlap, stride, margin)
        if height < 1 or width < 1:
            raise InputError(f"tiling: the image has zero size ({width}x{height})")
        margin = default_margin(overlap) if margin is None else margin
        tops, canvas_h = axis_offsets(height, tile, overlap, stride)
        lefts, canvas_w = axis_offsets(width, tile, overlap, stride)
        return cls(height, width, tile, overlap, stride, margin, tuple(tops), tuple(lefts), canvas_h, canvas_w)

    @classmethod
    def whole(cls, height: int, width: int, tile: int, stride: int) -> "TilePlan":
        """The canvas a tiled plan with this tile and stride uses, as one tile (the whole-image
        reference: one detail call over the padded image). Its tile is not square."""
        _, canvas_h = axis_offsets(height, tile, 0, stride)
        _, canvas_w = axis_offsets(width, tile, 0, stride)
        return cls(height, width, tile, 0, stride, 0, (0,), (0,), canvas_h, canvas_w)

    @property
    def is_whole(self) -> bool:
        return len(self.tops) == 1 and len(self.lefts) == 1 and (self.canvas_height, self.canvas_width) != (self.tile, self.tile)

    def __len__(self) -> int:
        return len(self.tops) * len(self.lefts)

    def offsets(self) -> np.ndarray:
        """N x 2 (top, left) in row-major order (tops non-decreasing)."""
        return np.array([(t, l) for t in self.tops for l in self.lefts], dtype=np.int64).reshape(-1, 2)

    def window_for(self, row: int, col: int) -> np.ndarray:
        """The blending window of tile (row, col) of the plan (read-only, cached)."""
        if self.is_whole:
            return np.ones((self.canvas_height, self.canvas_width), dtype=np.float32)
        kind_y = (row > 0, row < len(self.tops) - 1)
        kind_x = (col > 0, col < len(self.lefts) - 1)
        return _window(self.tile, self.overlap, self.margin, kind_y, kind_x)

    def windows(self, indices) -> np.ndarray:
        """B x T x T windows of the tiles with these row-major indices."""
        columns = len(self.lefts)
        return np.stack([self.window_for(i // columns, i % columns) for i in indices])

    def window_stack(self) -> tuple[np.ndarray, np.ndarray]:
        """The plan's distinct blending windows as one K x T x T stack (K <= 9: corner, edge and
        inner tiles taper on different sides) and, per tile in row-major order, the index of its
        window in the stack: the form kernels/stitch.cu and ops.stitch_accumulate take, so a
        device uploads K windows once instead of one window per tile."""
        if self.is_whole:
            return np.ones((1, self.canvas_height, self.canvas_width), dtype=np.float32), np.zeros(1, dtype=np.int32)
        return _window_stack(self.tile, self.overlap, self.margin, len(self.tops), len(self.lefts))

    def describe(self) -> dict:
        return {
            "tile": self.tile,
            "overlap": self.overlap,
            "margin": self.margin,
            "rows": len(self.tops),
            "columns": len(self.lefts),
            "tiles": len(self),
            "canvas": [self.canvas_height, self.canvas_width],
        }


def default_margin(overlap: int) -> int:
    return overlap // 4


def check_tiling(tile: int, overlap: int, stride: int, margin: int | None = None) -> None:
    """Raise InputError unless tile, overlap, stride and margin make a valid plan."""
    for name, value in (("tile size", tile), ("stride multiple", stride)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(overlap, (int, np.integer)) or isinstance(overlap, bool) or overlap < 0:
        raise InputError(f"overlap must be a non-negative integer, got {overlap!r}")
    if tile % stride:
        lower = max(stride, tile // stride * stride)
        raise InputError(f"tile size {tile} must be a multiple of the model's stride multiple {stride}; use {lower} or {lower + stride}")
    if tile - overlap < stride:
        raise InputError(
            f"overlap {overlap} leaves tiles of {tile} px a step of less than the stride multiple {stride}; "
            f"use an overlap of at most {tile - stride}"
        )
    if margin is not None:
        if not isinstance(margin, (int, np.integer)) or margin < 0:
            raise InputError(f"margin must be a non-negative integer, got {margin!r}")
        if overlap == 0 and margin:
            raise InputError("a margin needs an overlap (tiles without overlap cannot drop their edges)")
        if overlap and 2 * margin >= overlap:
            raise InputError(f"margin {margin} must be less than half the overlap {overlap} (at most {math.ceil(overlap / 2) - 1})")


__all__ = ["TilePlan", "axis_offsets", "check_tiling", "default_margin", "profile"]
