"""The pipeline's per-pixel work, one small NumPy function each.

Each function has a plain NumPy-in/NumPy-out signature so that a GPU kernel can replace it
behind the same signature (kernels/ holds CUDA versions of tile preprocessing, stitching and
fusion with these semantics, bit for bit; runtime/pixel_ops.py picks one or the other). All of them work on bounded pieces of an image (a batch of tiles,
a band of rows), never on float copies of the whole image.

Conventions
- Images are H x W x 3 arrays: uint8 (/255), uint16 (/65535) or float32 already in [0, 1].
- Coordinates outside the image are reflected as NumPy's mode="reflect" does (the edge pixel is
  not repeated; an axis of length 1 repeats its only pixel).
- Bilinear resampling follows PyTorch's F.interpolate(mode="bilinear", align_corners=False) in
  float32, and shrinking is antialiased as with antialias=True (a triangle filter stretched by
  the scale factor, like Pillow's BILINEAR resize).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mattrt.errors import InputError

# Rows converted to float at a time while resizing (bounds the temporary memory).
RESIZE_CHUNK_ROWS = 256


# -- coordinates -------------------------------------------------------------------------------
def reflect_indices(indices: np.ndarray, size: int) -> np.ndarray:
    """Map integer coordinates onto [0, size) by reflection without edge repeat (period 2 (size - 1))."""
    indices = np.asarray(indices, dtype=np.int64)
    if size < 1:
        raise InputError(f"reflect_indices: size must be positive, got {size}")
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    folded = np.mod(indices, period)
    return np.where(folded < size, folded, period - folded)


def unit_scale(dtype: np.dtype) -> float:
    """The divisor that brings pixels of `dtype` to [0, 1]."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if dtype in (np.float32, np.float64):
        return 1.0
    raise InputError(f"images must be uint8, uint16 or float32 in [0, 1], got {dtype}")


def check_rgb(image: np.ndarray, what: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InputError(f"{what}: expected an H x W x 3 RGB array, got {type(image).__name__} of shape {shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"{what}: the image has zero size ({image.shape[1]}x{image.shape[0]})")
    unit_scale(image.dtype)


# -- bilinear upsampling of a small map, evaluated on any set of output pixels -----------------
def bilinear_taps(indices: np.ndarray, in_size: int, out_size: int):
    """Source taps of output coordinates `indices` when resizing in_size -> out_size bilinearly
    (align_corners=False): lower index, upper index and their weights, in PyTorch's float32 rule
    src = max((in / out) * (dst + 0.5) - 0.5, 0), lo = floor(src), hi = min(lo + 1, in - 1)."""
    indices = np.asarray(indices, dtype=np.int64)
    scale = np.float32(in_size) / np.float32(out_size)
    # PyTorch's CPU kernel evaluates scale * (dst + 0.5) - 0.5 as one fused multiply-add: the
    # float64 product of two float32 values is exact, so rounding once to float32 matches it.
    half_steps = (indices.astype(np.float32) + np.float32(0.5)).astype(np.float64)
    src = (np.float64(scale) * half_steps - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    lo = np.minimum(src.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    w_hi = (src - lo.astype(np.float32)).astype(np.float32)
    w_lo = (np.float32(1) - w_hi).astype(np.float32)
    return lo, hi, w_lo, w_hi


def upsample_region(low: np.ndarray, out_height: int, out_width: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """C x h x w map -> C x len(rows) x len(cols): the pixels (rows x cols) of the map resized to
    out_height x out_width, i.e. F.interpolate(low[None], (out_height, out_width), mode="bilinear",
    align_corners=False)[0][:, rows][:, :, cols] without building the full-size map."""
    if low.ndim != 3:
        raise InputError(f"upsample_region: expected a C x h x w map, got shape {low.shape}")
    low = np.asarray(low, dtype=np.float32)
    y_lo, y_hi, wy_lo, wy_hi = bilinear_taps(rows, low.shape[1], out_height)
    x_lo, x_hi, wx_lo, wx_hi = bilinear_taps(cols, low.shape[2], out_width)
    top = low[:, y_lo]
    bottom = low[:, y_hi]
    top = top[:, :, x_lo] * wx_lo + top[:, :, x_hi] * wx_hi
    bottom = bottom[:, :, x_lo] * wx_lo + bottom[:, :, x_hi] * wx_hi
    return (wy_lo[:, None] * top + wy_hi[:, None] * bottom).astype(np.float32)


# -- antialiased resizing of a whole image in row chunks ---------------------------------------
def resize_weights(in_size: int, out_size: int):
    """Sparse (out_size x in_size) matrix of the antialiased bilinear filter along one axis
    (PyTorch's antialias=True / Pillow's BILINEAR: a triangle of support max(in/out, 1))."""
    from scipy import sparse

    if in_size < 1 or out_size < 1:
        raise InputError(f"resize: sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    support = max(scale, 1.0)
    inv = 1.0 / max(scale, 1.0)
    rows, cols, values = [], [], []
    for i in range(out_size):
        center = scale * (i + 0.5)
        start = max(int(center - support + 0.5), 0)
        stop = min(int(center + support + 0.5), in_size)
        j = np.arange(start, stop)
        w = np.clip(1.0 - np.abs((j - center + 0.5) * inv), 0.0, None)
        total = w.sum()
        if total <= 0:
            j, w, total = np.array([min(int(center), in_size - 1)]), np.array([1.0]), 1.0
        rows.append(np.full(len(j), i))
        cols.append(j)
        values.append(w / total)
    matrix = sparse.csr_matrix(
        (np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(out_size, in_size),
    )
    return matrix


def resize_image(image: np.ndarray, out_height: int, out_width: int, chunk_rows: int = RESIZE_CHUNK_ROWS) -> np.ndarray:
    """H x W x C image (uint8, uint16 or float32) -> out_height x out_width x C float32 in [0, 1]
    units, antialiased bilinear. Works through the input in chunks of rows, so the float
    temporaries are bounded by chunk_rows x W plus the H x out_width intermediate."""
    if image.ndim != 3:
        raise InputError(f"resize_image: expected H x W x C, got shape {image.shape}")
    height, width, channels = image.shape
    if out_height < 1 or out_width < 1:
        raise InputError(f"resize_image: output size must be positive, got {out_width}x{out_height}")
    scale = np.float32(1.0 / unit_scale(image.dtype))
    if (out_height, out_width) == (height, width):
        return image.astype(np.float32) * scale if image.dtype != np.float32 else image.astype(np.float32, copy=True)
    along_x = resize_weights(width, out_width)
    along_y = resize_weights(height, out_height)
    columns_done = np.empty((height, out_width, channels), dtype=np.float32)
    for start in range(0, height, chunk_rows):
        chunk = image[start : start + chunk_rows].astype(np.float32)
        if scale != 1:
            chunk *= scale
        rows = chunk.shape[0]
        # (W, rows * C) so that one sparse product resizes every row and channel of the chunk.
        flat = chunk.transpose(1, 0, 2).reshape(width, rows * channels)
        columns_done[start : start + rows] = (along_x @ flat).reshape(out_width, rows, channels).transpose(1, 0, 2)
    flat = columns_done.reshape(height, out_width * channels)
    return np.ascontiguousarray((along_y @ flat).reshape(out_height, out_width, channels), dtype=np.float32)


# -- tiles --------------------------------------------------------------------------------------
def tile_shape(tile) -> tuple[int, int]:
    """A tile size given as T (square) or (height, width)."""
    if isinstance(tile, (tuple, list)):
        th, tw = (int(v) for v in tile)
    else:
        th = tw = int(tile)
    if th < 1 or tw < 1:
        raise InputError(f"tile size must be positive, got {tile!r}")
    return th, tw


def _tile_indices(offsets: np.ndarray, tile, height: int, width: int):
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    th, tw = tile_shape(tile)
    rows = reflect_indices(offsets[:, :1] + np.arange(th, dtype=np.int64), height)  # B x th
    cols = reflect_indices(offsets[:, 1:] + np.arange(tw, dtype=np.int64), width)  # B x tw
    return offsets, rows, cols


def preprocess_tiles(
    image: np.ndarray,
    offsets: np.ndarray,
    tile: int,
    mean: Sequence[float],
    std: Sequence[float],
    dtype=np.float32,
) -> np.ndarray:
    """Crop tiles and normalise them: H x W x 3 image, B x 2 (top, left) offsets ->
    B x 3 x T x T with out[b, c] = (pixel / unit - mean[c]) / std[c]; pixels outside the image
    come from reflection (kernels/preprocess.cu computes the same, bit for bit, for uint8,
    uint16 and float32 images)."""
    check_rgb(image, "preprocess_tiles")
    offsets, rows, cols = _tile_indices(offsets, tile, image.shape[0], image.shape[1])
    unit = np.float32(unit_scale(image.dtype))
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    out = np.empty((len(offsets), 3, rows.shape[1], cols.shape[1]), dtype=dtype)
    for b in range(len(offsets)):
        crop = image[rows[b][:, None], cols[b][None, :]].astype(np.float32)  # T x T x 3
        # a division, not a product with 1 / unit: the kernel's arithmetic, so both agree bit for bit
        crop /= unit
        crop -= mean
        crop /= std
        out[b] = crop.transpose(2, 0, 1)
    return out


def crop_planes(planes: np.ndarray, offsets: np.ndarray, tile: int) -> np.ndarray:
    """C x H x W planes (e.g. a full-resolution guidance) -> B x C x T x T crops at the offsets,
    reflected outside the planes."""
    if planes.ndim != 3:
        raise InputError(f"crop_planes: expected C x H x W, got shape {planes.shape}")
    offsets, rows, cols = _tile_indices(offsets, tile, planes.shape[1], planes.shape[2])
    out = np.empty((len(offsets), planes.shape[0], rows.shape[1], cols.shape[1]), dtype=np.float32)
    for b in range(len(offsets)):
        out[b] = planes[:, rows[b][:, None], cols[b][None, :]]
    return out


def upsampled_tiles(low: np.ndarray, out_height: int, out_width: int, offsets: np.ndarray, tile: int) -> np.ndarray:
    """B x C x T x T crops of `low` upsampled to out_height x out_width (bilinear), at tile
    offsets over that size; coordinates outside it are reflected, as the image crops are."""
    offsets, rows, cols = _tile_indices(offsets, tile, out_height, out_width)
    out = np.empty((len(offsets), low.shape[0], rows.shape[1], cols.shape[1]), dtype=np.float32)
    for b in range(len(offsets)):
        out[b] = upsample_region(low, out_height, out_width, rows[b], cols[b])
    return out


# -- stitching ----------------------------------------------------------------------------------
def stitch_accumulate(
    acc: np.ndarray,
    weight_sum: np.ndarray,
    tiles: np.ndarray,
    window: np.ndarray,
    offsets: np.ndarray,
    window_index: np.ndarray | None = None,
) -> None:
    """In place, in batch order: acc += window_b * tile_b and weight_sum += window_b over the
    pixels tile b covers. acc, weight_sum: H x W float32; tiles: B x T x T; window: T x T (one
    for all tiles), B x T x T (one per tile), or K x T x T with window_index (B indices into
    the stack; kernels/stitch.cu takes the same forms); offsets: B x 2 (top, left), tiles
    reaching past an edge are clipped."""
    if acc.shape != weight_sum.shape or acc.ndim != 2:
        raise InputError(f"stitch_accumulate: acc and weight_sum must be one H x W shape, got {acc.shape}, {weight_sum.shape}")
    tiles = np.asarray(tiles)
    if tiles.ndim != 3:
        raise InputError(f"stitch_accumulate: tiles must be B x T x T, got {tiles.shape}")
    batch, th, tw = tiles.shape
    stacked = window.ndim == 3
    if window_index is None:
        index = np.arange(batch) if stacked else None
        fits = not stacked or window.shape[0] == batch
    else:
        index = np.asarray(window_index, dtype=np.int64).reshape(-1)
        fits = stacked and index.shape == (batch,) and (index.size == 0 or (index.min() >= 0 and index.max() < window.shape[0]))
    if window.shape[-2:] != (th, tw) or not fits:
        raise InputError(
            f"stitch_accumulate: window must be T x T, B x T x T, or K x T x T with B window indices in [0, K), "
            f"for tiles {tiles.shape}; got {window.shape}" + ("" if window_index is None else f" and indices {np.asarray(window_index).tolist()}")
        )
    height, width = acc.shape
    for b, (top, left) in enumerate(np.asarray(offsets, dtype=np.int64).reshape(-1, 2).tolist()):
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + th, height), min(left + tw, width)
        if y0 >= y1 or x0 >= x1:
            continue
        ty, tx = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
        w = window[index[b], ty, tx] if stacked else window[ty, tx]
        acc[y0:y1, x0:x1] += tiles[b, ty, tx].astype(np.float32) * w
        weight_sum[y0:y1, x0:x1] += w


def stitch_normalize(acc: np.ndarray, weight_sum: np.ndarray) -> np.ndarray:
    """acc / weight_sum (float32, not clamped: a raw alpha may leave [0, 1] before fusion).
    A pixel no tile covered is a bug in the tiling plan and raises."""
    covered = weight_sum > 0
    if not covered.all():
        y, x = np.unravel_index(int(np.flatnonzero(~covered)[0]), acc.shape)
        raise InputError(f"stitching: pixel (y={y}, x={x}) of the band has zero blending weight; no tile covered it")
    return (acc / weight_sum).astype(np.float32)


# -- fusion -------------------------------------------------------------------------------------
def fuse(trimap: np.ndarray, detail: np.ndarray, kind: str) -> np.ndarray:
    """3 x H x W trimap probabilities and H x W raw alpha -> H x W alpha by models/fusion.py's
    FUSIONS[kind], clamped to [0, 1]."""
    import torch

    from mattrt.models.fusion import get_fusion

    function = get_fusion(kind)
    with torch.inference_mode():
        alpha = function(torch.from_numpy(np.ascontiguousarray(trimap))[None], torch.from_numpy(np.ascontiguousarray(detail))[None, None])
    return np.clip(alpha[0, 0].numpy(), 0.0, 1.0).astype(np.float32)


__all__ = [
    "bilinear_taps",
    "check_rgb",
    "crop_planes",
    "fuse",
    "preprocess_tiles",
    "reflect_indices",
    "resize_image",
    "resize_weights",
    "stitch_accumulate",
    "stitch_normalize",
    "tile_shape",
    "unit_scale",
    "upsample_region",
    "upsampled_tiles",
]
