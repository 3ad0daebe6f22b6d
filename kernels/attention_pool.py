"""AlphaNet's attention-guided 2x2 pooling and x2 unpooling (attention_pool.cu).

attention_pool2d(x: N x C x H x W, a: N x 1 x H x W) -> N x C x H/2 x W/2:
    w = sigmoid(a); softmax of w over each non-overlapping 2x2 window; out = sum(w_soft * x).
attention_unpool2d(y: N x C x H/2 x W/2, a: N x 1 x H x W) -> N x C x H x W:
    out = sigmoid(a) * nearest_upsample_x2(y).
x (or y) and a share one dtype, float32 or float16; both compute in float32 and round once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mattrt.errors import InputError
from mattrt.kernels.launch import Backend, cupy_backend, device_array, host_array, output_array, planes_grid

SOURCE = "attention_pool.cu"
DTYPES = (np.float32, np.float16)
# Channels per thread: the sigmoid/softmax of the attention map is computed once per chunk.
CHANNEL_CHUNK = 8
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}


def _check_attention(op: str, a: Any, n: int, height: int, width: int, dtype: Any) -> None:
    if tuple(a.shape) != (n, 1, height, width):
        raise InputError(f"{op}: a must be attention logits of shape N x 1 x H x W = {(n, 1, height, width)}, "
                         f"got {tuple(a.shape)}")
    if np.dtype(a.dtype) != np.dtype(dtype):
        raise InputError(f"{op}: a must have the dtype of the features ({np.dtype(dtype)}), got {a.dtype}")
    if height % 2 or width % 2:
        raise InputError(f"{op}: H and W must be even for 2x2 windows, got {height} x {width}")


def _sigmoid(v: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (np.float32(1) / (np.float32(1) + np.exp(-v))).astype(np.float32)


def attention_pool2d_reference(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """NumPy reference of attention_pool2d (float32 arithmetic, result in x's dtype)."""
    op = "attention_pool2d"
    x = host_array(op, "x", x, layout="N x C x H x W", dtypes=DTYPES)
    a = host_array(op, "a", a, layout="N x 1 x H x W", dtypes=DTYPES)
    n, c, h, w = x.shape
    _check_attention(op, a, n, h, w, x.dtype)
    s = _sigmoid(a.astype(np.float32)).reshape(n, 1, h // 2, 2, w // 2, 2)
    e = np.exp(s - s.max(axis=(3, 5), keepdims=True))
    weights = e / e.sum(axis=(3, 5), keepdims=True)
    windows = x.astype(np.float32).reshape(n, c, h // 2, 2, w // 2, 2)
    return (windows * weights).sum(axis=(3, 5)).astype(x.dtype)


def attention_unpool2d_reference(y: np.ndarray, a: np.ndarray) -> np.ndarray:
    """NumPy reference of attention_unpool2d (float32 arithmetic, result in y's dtype)."""
    op = "attention_unpool2d"
    y = host_array(op, "y", y, layout="N x C x H/2 x W/2", dtypes=DTYPES)
    a = host_array(op, "a", a, layout="N x 1 x H x W", dtypes=DTYPES)
    n, c, h2, w2 = y.shape
    _check_attention(op, a, n, 2 * h2, 2 * w2, y.dtype)
    upsampled = y.astype(np.float32).repeat(2, axis=2).repeat(2, axis=3)
    return (_sigmoid(a.astype(np.float32)) * upsampled).astype(y.dtype)


def launch_pool(backend: Backend, x: Any, a: Any, *, out: Any = None) -> Any:
    op = "attention_pool2d"
    x = device_array(backend, op, "x", x, layout="N x C x H x W", dtypes=DTYPES)
    a = device_array(backend, op, "a", a, layout="N x 1 x H x W", dtypes=DTYPES)
    n, c, h, w = (int(s) for s in x.shape)
    _check_attention(op, a, n, h, w, x.dtype)
    out = output_array(backend, op, out, (n, c, h // 2, w // 2), x.dtype)
    if out.size:
        chunk = min(c, CHANNEL_CHUNK)
        grid, block = planes_grid(w // 2, h // 2, n * -(-c // chunk))
        backend.launch(SOURCE, f"attention_pool2d_{_SUFFIX[np.dtype(x.dtype)]}", grid, block,
                       (x, a, out, np.int64(n), np.int64(c), np.int64(h), np.int64(w), np.int64(chunk)))
    return out


def launch_unpool(backend: Backend, y: Any, a: Any, *, out: Any = None) -> Any:
    op = "attention_unpool2d"
    y = device_array(backend, op, "y", y, layout="N x C x H/2 x W/2", dtypes=DTYPES)
    a = device_array(backend, op, "a", a, layout="N x 1 x H x W", dtypes=DTYPES)
    n, c, h2, w2 = (int(s) for s in y.shape)
    h, w = 2 * h2, 2 * w2
    _check_attention(op, a, n, h, w, y.dtype)
    out = output_array(backend, op, out, (n, c, h, w), y.dtype)
    if out.size:
        chunk = min(c, CHANNEL_CHUNK)
        grid, block = planes_grid(w, h, n * -(-c // chunk))
        backend.launch(SOURCE, f"attention_unpool2d_{_SUFFIX[np.dtype(y.dtype)]}", grid, block,
                       (y, a, out, np.int64(n), np.int64(c), np.int64(h), np.int64(w), np.int64(chunk)))
    return out


def attention_pool2d(x: Any, a: Any, *, out: Any = None) -> Any:
    """CuPy launcher of attention_pool2d (same signature and result as the reference)."""
    return launch_pool(cupy_backend(), x, a, out=out)


def attention_unpool2d(y: Any, a: Any, *, out: Any = None) -> Any:
    """CuPy launcher of attention_unpool2d (same signature and result as the reference)."""
    return launch_unpool(cupy_backend(), y, a, out=out)
