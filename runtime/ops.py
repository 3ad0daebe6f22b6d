"""The pipeline's per-pixel work on the host, one small NumPy function each.

Each function has a plain NumPy-in/NumPy-out signature so that a GPU kernel can replace it
behind the same signature (runtime/pixel_ops.py picks one or the other). An op that has a CUDA
kernel has exactly one NumPy implementation: the kernel's reference in kernels/<op>.py, which is
checked against the kernel bit for bit and which this module re-exports under the pipeline's
names (preprocess_tiles, stitch_accumulate, stitch_normalize, bilinear_taps, upsample_region,
reflect_indices). What has no kernel lives here: antialiased resizing, plane crops, upsampled
guidance tiles. All of them work on bounded pieces of an image (a batch of tiles, a band of
rows), never on float copies of the whole image.

Conventions
- Images are H x W x 3 arrays: uint8 (/255), uint16 (/65535) or float32 already in [0, 1].
- Coordinates outside the image are reflected as NumPy's mode="reflect" does (the edge pixel is
  not repeated; an axis of length 1 repeats its only pixel).
- Bilinear resampling follows PyTorch's F.interpolate(mode="bilinear", align_corners=False) in
  float32, and shrinking is antialiased as with antialias=True (a triangle filter stretched by
  the scale factor, like Pillow's BILINEAR resize).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from mattrt.errors import InputError
from mattrt.kernels.fusion import bilinear_taps, resample, trimap_fusion_reference, upsample_region
from mattrt.kernels.preprocess import preprocess_tiles_reference as preprocess_tiles
from mattrt.kernels.preprocess import reflect_indices, tile_indices
from mattrt.kernels.stitch import stitch_accumulate_reference as stitch_accumulate
from mattrt.kernels.stitch import stitch_finalize_reference

# Rows converted to float at a time while resizing (bounds the temporary memory).
RESIZE_CHUNK_ROWS = 256


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


# -- antialiased resizing of a whole image in row chunks ---------------------------------------
def resize_weights(in_size: int, out_size: int):
    """Sparse (out_size x in_size) matrix of the antialiased bilinear filter along one axis
    (PyTorch's antialias=True / Pillow's BILINEAR: a triangle of support max(in/out, 1))."""

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
def crop_planes(planes: np.ndarray, offsets: np.ndarray, tile: int) -> np.ndarray:
    """C x H x W planes (e.g. a full-resolution guidance) -> B x C x T x T crops at the offsets,
    reflected outside the planes."""
    if planes.ndim != 3:
        raise InputError(f"crop_planes: expected C x H x W, got shape {planes.shape}")
    offsets, rows, cols = tile_indices(offsets, tile, planes.shape[1], planes.shape[2], "crop_planes")
    out = np.empty((len(offsets), planes.shape[0], rows.shape[1], cols.shape[1]), dtype=np.float32)
    for b in range(len(offsets)):
        out[b] = planes[:, rows[b][:, None], cols[b][None, :]]
    return out


def upsampled_tiles(low, out_height: int, out_width: int, offsets: np.ndarray, tile, xp=np):
    """B x C x T x T crops of the C x h x w float32 map `low` upsampled to out_height x out_width
    (bilinear), at tile offsets over that size; coordinates outside it are reflected, as the image
    crops are. Each tile is upsample_region's resampling at its reflected rows and columns. `low`
    may live on the GPU (xp = CuPy, the device pixel ops): the taps are computed on the host and
    uploaded, the gathers and products run where `low` is."""
    offsets, rows, cols = tile_indices(offsets, tile, out_height, out_width, "upsampled_tiles")  # B x th, B x tw
    row_taps = [xp.asarray(t) for t in bilinear_taps(rows, low.shape[1], out_height)]
    col_taps = [xp.asarray(t) for t in bilinear_taps(cols, low.shape[2], out_width)]
    out = xp.empty((len(offsets), low.shape[0], rows.shape[1], cols.shape[1]), dtype=np.float32)
    for b in range(len(offsets)):
        out[b] = resample(low, [t[b] for t in row_taps], [t[b] for t in col_taps])
    return out


# -- stitching and fusion -------------------------------------------------------------------------
def stitch_normalize(acc: np.ndarray, weight_sum: np.ndarray) -> np.ndarray:
    """acc / weight_sum (float32, not clamped: a raw alpha may leave [0, 1] before fusion); a
    pixel no tile covered is a bug in the tiling plan and raises (the kernel's unclamped finalize)."""
    return stitch_finalize_reference(acc, weight_sum, np.float32, clamp=False)


def fuse_band(low: np.ndarray, detail_rows: np.ndarray, first_row: int, height: int, kind: str) -> np.ndarray:
    """Clamped alpha of image rows [first_row, first_row + rows) of a height x W image: the 3 x h x w
    trimap probabilities upsampled to height x W, fused with the rows x W raw alpha by the fusion
    kind (the trimap_fusion kernel's reference, band form)."""
    return trimap_fusion_reference(low[None], detail_rows[None, None], kind, band=(first_row, height), clamp=True)[0, 0]


__all__ = [
    "bilinear_taps",
    "check_rgb",
    "crop_planes",
    "fuse_band",
    "preprocess_tiles",
    "reflect_indices",
    "resize_image",
    "resize_weights",
    "stitch_accumulate",
    "stitch_normalize",
    "unit_scale",
    "upsample_region",
    "upsampled_tiles",
]
