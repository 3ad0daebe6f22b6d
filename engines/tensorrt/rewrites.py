"""ONNX translations of the PyTorch ops that TensorRT's ONNX parser rejects.

They plug into the dynamo exporter's `custom_translation_table`, so model code stays free of
export special cases:

- `aten.max_pool2d_with_indices`: the dynamo exporter writes a MaxPool node with its Indices
  output, which TensorRT refuses. Here the values come from a MaxPool without Indices, and the
  indices from ops TensorRT parses: for each of the k*k window offsets a strided Slice of the
  (-inf padded) input, `Equal` to the pooled maximum, `Where` that selects the offset's flat
  input index (h * W + w) or a sentinel, and one variadic `Min`. Flat indices grow in
  row-major window order, so the minimum is the FIRST maximum in the window, which is what
  PyTorch's CPU kernel keeps (`val > maxval` replaces, equal values do not). Window positions in
  the padding always select the sentinel, so padding never wins (PyTorch never visits it);
  a window whose in-bounds values are all -inf picks its first in-bounds position, as PyTorch
  does (also where the MaxPool reports the lowest finite float instead of -inf, as
  onnxruntime's does). NaN is not treated specially (PyTorch lets a NaN win).
  The result is exact and independent of how a backend breaks ties in ArgMax/TopK.

- `aten.max_unpool2d`: ScatterElements (no reduction) over the flattened plane. Overlapping
  pools (AIM's 3x3 / stride 2) give neighbouring outputs the same index. PyTorch's CPU kernel
  writes the input positions of a plane in increasing (row-major) order, so the LAST of them
  wins; TensorRT leaves the order of duplicate scatter writes undefined. So before scattering,
  every position whose index reappears at a later position within the pool's overlap radius
  is redirected to an extra slot past the end of the plane, which is dropped afterwards. Only
  windows closer than the kernel extent can share an input pixel, so the pool geometry bounds
  the comparisons (4 neighbours for 3x3 / stride 2; none for non-overlapping 2x2 / stride 2).
  The geometry travels from the pool's translation to the unpool's on the indices value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import opset18 as op

from mattrt.errors import MattrtError


class RewriteError(MattrtError):
    """An op whose TensorRT-compatible rewrite cannot be built."""


# Key on the ONNX IR value of a pool's indices, read back by the unpool translation.
POOL_GEOMETRY_KEY = "mattrt.max_pool_geometry"


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise RewriteError(f"max_pool2d: {what} must hold 1 or 2 values, got {list(values)}")
    return values  # type: ignore[return-value]


def pool_output_length(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooled length (aten pooling_output_shape), including its ceil-mode rule that
    the last window must start inside the input or its left padding."""
    extent = dilation * (kernel - 1) + 1
    numerator = size + 2 * padding - extent + (stride - 1 if ceil_mode else 0)
    length = numerator // stride + 1
    if ceil_mode and (length - 1) * stride >= size + padding:
        length -= 1
    return length


@dataclass(frozen=True)
class PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    input_size: tuple[int, int]
    output_size: tuple[int, int]

    @classmethod
    def create(cls, input_size, kernel_size, stride=(), padding=(0, 0), dilation=(1, 1), ceil_mode=False) -> "PoolGeometry":
        kernel = _pair(kernel_size, "kernel_size")
        strides = _pair(stride, "stride") if (isinstance(stride, int) or len(stride)) else kernel
        pads = _pair(padding, "padding")
        dilations = _pair(dilation, "dilation")
        height, width = (int(v) for v in input_size)
        out = tuple(
            pool_output_length(n, k, s, p, d, bool(ceil_mode))
            for n, k, s, p, d in zip((height, width), kernel, strides, pads, dilations)
        )
        if min(out) < 1:
            raise RewriteError(f"max_pool2d: input {height} x {width} is too small for kernel {kernel}, padding {pads}")
        return cls(kernel, strides, pads, dilations, bool(ceil_mode), (height, width), out)  # type: ignore[arg-type]

    @property
    def extra_end_padding(self) -> tuple[int, int]:
        """Padding past the input's end that ceil mode's last windows reach beyond `padding`."""
        return tuple(
            max(0, (o - 1) * s + d * (k - 1) + 1 - (n + 2 * p))
            for o, s, d, k, n, p in zip(self.output_size, self.stride, self.dilation, self.kernel, self.input_size, self.padding)
        )  # type: ignore[return-value]

    @property
    def overlap_radius(self) -> tuple[int, int]:
        """How many pooled positions apart two windows can be and still share an input pixel."""
        return tuple(d * (k - 1) // s for k, s, d in zip(self.kernel, self.stride, self.dilation))  # type: ignore[return-value]

    def window_flat_indices(self, sentinel: int) -> list[np.ndarray]:
        """Per window offset (row-major), the flat input index each output position reads, or
        `sentinel` where that offset falls into the padding."""
        height, width = self.input_size
        out_h, out_w = self.output_size
        rows = np.arange(out_h)[:, None] * self.stride[0] - self.padding[0]
        cols = np.arange(out_w)[None, :] * self.stride[1] - self.padding[1]
        tables = []
        for i in range(self.kernel[0]):
            for j in range(self.kernel[1]):
                h = rows + i * self.dilation[0]
                w = cols + j * self.dilation[1]
                inside = (h >= 0) & (h < height) & (w >= 0) & (w < width)
                tables.append(np.where(inside, h * width + w, sentinel).astype(np.int64))
        return tables


def later_neighbour_offsets(radius: tuple[int, int]) -> list[tuple[int, int]]:
    """Offsets (dh, dw) of the pooled positions after (0, 0) in row-major order within `radius`."""
    rh, rw = radius
    offsets = [(0, dw) for dw in range(1, rw + 1)]
    offsets += [(dh, dw) for dh in range(1, rh + 1) for dw in range(-rw, rw + 1)]
    return offsets


# -- ONNX translations (traced by the dynamo exporter) ---------------------------------------
def _static_spatial(value, what: str) -> tuple[int, int]:
    shape = value.shape
    if shape is None or len(shape) != 4:
        raise RewriteError(f"{what}: expected an N x C x H x W tensor, got shape {shape}")
    dims = (shape[2], shape[3])
    if not all(isinstance(d, int) for d in dims):
        raise RewriteError(
            f"{what}: height and width must be static for a TensorRT-compatible rewrite, got {shape}; "
            "export every stage at a fixed spatial size (only the batch is dynamic)"
        )
    return dims  # type: ignore[return-value]


def _constant(array: np.ndarray):
    return op.Constant(value=ir.tensor(np.ascontiguousarray(array)))


def max_pool2d_with_indices(self, kernel_size, stride=(), padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """aten::max_pool2d_with_indices -> MaxPool (values only) + index search over the window."""

    geometry = PoolGeometry.create(_static_spatial(self, "max_pool2d"), kernel_size, stride, padding, dilation, ceil_mode)
    (ph, pw), (eh, ew) = geometry.padding, geometry.extra_end_padding
    if geometry.dilation == (1, 1):
        values = op.MaxPool(
            self,
            kernel_shape=list(geometry.kernel),
            strides=list(geometry.stride),
            pads=[ph, pw, ph + eh, pw + ew],
        )
        if isinstance(values, (tuple, list)):  # the op schema declares the optional Indices output
            values[0].producer().resize_outputs(1)
            values = values[0]
    else:
        values = None  # TensorRT's MaxPool takes no dilations: take the max of the slices below

    padded = self
    if ph or pw or eh or ew:
        # -inf padding never exceeds an input value, so a max over the slices equals PyTorch's
        # (for the indices the padding value does not matter: padded offsets never qualify).
        padded = op.Pad(
            self,
            _constant(np.array([0, 0, ph, pw, 0, 0, ph + eh, pw + ew], dtype=np.int64)),
            _constant(np.array(-np.inf, dtype=self.dtype.numpy())),
        )
    out_h, out_w = geometry.output_size
    slices = []
    for i in range(geometry.kernel[0]):
        for j in range(geometry.kernel[1]):
            start_h, start_w = i * geometry.dilation[0], j * geometry.dilation[1]
            slices.append(
                op.Slice(
                    padded,
                    _constant(np.array([start_h, start_w], dtype=np.int64)),
                    _constant(np.array([start_h + (out_h - 1) * geometry.stride[0] + 1,
                                        start_w + (out_w - 1) * geometry.stride[1] + 1], dtype=np.int64)),
                    _constant(np.array([2, 3], dtype=np.int64)),
                    _constant(np.array(geometry.stride, dtype=np.int64)),
                )
            )
    if values is None:
        values = op.Max(*slices)
    sentinel = geometry.input_size[0] * geometry.input_size[1]
    sentinel_value = _constant(np.array(sentinel, dtype=np.int64))
    tables = geometry.window_flat_indices(sentinel)
    candidates = [
        op.Where(op.Equal(window, values), _constant(table), sentinel_value)
        for window, table in zip(slices, tables)
    ]
    indices = op.Min(*candidates) if len(candidates) > 1 else candidates[0]
    # No offset matches when the pooled value equals no input: a window of -inf whose MaxPool
    # reports the lowest finite float (onnxruntime does). PyTorch keeps the first in-bounds
    # position there.
    first_inside = np.min(np.stack(tables), axis=0)
    indices = op.Where(op.Equal(indices, sentinel_value), _constant(first_inside), indices)
    indices.meta[POOL_GEOMETRY_KEY] = geometry
    return values, indices


def max_unpool2d(self, indices, output_size):
    """aten::max_unpool2d -> ScatterElements with duplicates resolved as PyTorch's CPU kernel does."""

    in_h, in_w = _static_spatial(self, "max_unpool2d")
    channels = self.shape[1]
    if not isinstance(channels, int):
        raise RewriteError(f"max_unpool2d: the channel count must be static, got shape {self.shape}")
    out_h, out_w = (int(v) for v in output_size)
    plane = out_h * out_w
    geometry = indices.meta.get(POOL_GEOMETRY_KEY)
    if geometry is None:
        raise RewriteError(
            "max_unpool2d: its indices do not come straight from a max_pool2d(return_indices=True) in the "
            "same graph, so the pool's window overlap (needed to resolve duplicate indices the way PyTorch "
            "does) is unknown; pass the pool's indices to max_unpool2d unchanged"
        )
    offsets = later_neighbour_offsets(geometry.overlap_radius)
    target = indices
    length = plane
    if offsets:
        rh, rw = geometry.overlap_radius
        padded = op.Pad(
            indices,
            _constant(np.array([0, 0, 0, rw, 0, 0, rh, rw], dtype=np.int64)),
            _constant(np.array(-1, dtype=np.int64)),
        )
        axes = _constant(np.array([2, 3], dtype=np.int64))
        overwritten = None
        for dh, dw in offsets:
            later = op.Slice(
                padded,
                _constant(np.array([dh, rw + dw], dtype=np.int64)),
                _constant(np.array([dh + in_h, rw + dw + in_w], dtype=np.int64)),
                axes,
            )
            same = op.Equal(indices, later)
            overwritten = same if overwritten is None else op.Or(overwritten, same)
        # Redirect every write that a later one overwrites to a slot past the plane.
        target = op.Where(overwritten, _constant(np.array(plane, dtype=np.int64)), indices)
        length = plane + 1
    flat_shape = _constant(np.array([0, channels, in_h * in_w], dtype=np.int64))
    flat_target = op.Reshape(target, flat_shape)
    flat_source = op.Reshape(self, flat_shape)
    batch = op.Slice(op.Shape(self), _constant(np.array([0], dtype=np.int64)), _constant(np.array([1], dtype=np.int64)))
    zeros_shape = op.Concat(batch, _constant(np.array([channels, length], dtype=np.int64)), axis=0)
    zero = ir.tensor(np.zeros(1, dtype=self.dtype.numpy()))
    zeros = op.ConstantOfShape(zeros_shape, value=zero)
    scattered = op.ScatterElements(zeros, flat_target, flat_source, axis=2)
    if length != plane:
        scattered = op.Slice(
            scattered,
            _constant(np.array([0], dtype=np.int64)),
            _constant(np.array([plane], dtype=np.int64)),
            _constant(np.array([2], dtype=np.int64)),
        )
    return op.Reshape(scattered, _constant(np.array([0, channels, out_h, out_w], dtype=np.int64)))


def translation_table() -> dict[Callable, Callable]:
    """The `custom_translation_table` for `torch.onnx.export(..., dynamo=True)`."""

    return {
        torch.ops.aten.max_pool2d_with_indices.default: max_pool2d_with_indices,
        torch.ops.aten.max_unpool2d.default: max_unpool2d,
    }


__all__ = [
    "PoolGeometry",
    "RewriteError",
    "later_neighbour_offsets",
    "max_pool2d_with_indices",
    "max_unpool2d",
    "pool_output_length",
    "translation_table",
]
