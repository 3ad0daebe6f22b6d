"""torch.library custom ops (namespace "mattrt") for the kernels the networks call.

    torch.ops.mattrt.max_unpool2d(x, indices, output_height, output_width)
    torch.ops.mattrt.attention_pool2d(x, a)
    torch.ops.mattrt.attention_unpool2d(y, a)

CPU: plain torch eager code with the kernels' semantics (the torch reference; deterministic
max-unpooling: the last input in row-major order wins a repeated index). CUDA: the CuPy kernels
run on the tensors' memory through DLPack (no copies for contiguous tensors) on torch's current
stream. register_fake gives the output shapes for tracing (torch.compile, torch.export).
Importing this module registers the ops; it needs torch but not CuPy. The runtime's
TorchEngine(kernels=True) routes F.max_unpool2d and AlphaNet's attention functions to them
(engines/torch/kernel_routing.py).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from mattrt.errors import InputError
from mattrt.kernels import attention_pool, max_unpool
from mattrt.kernels.launch import cupy_backend
from mattrt.lazy import lazy_import

cupy = lazy_import("cupy", probe="cupy")

NAMESPACE = "mattrt"


# ------------------------------------------------------------------------------------------
# Eager torch references (the CPU implementations)


def max_unpool2d_eager(x: Tensor, indices: Tensor, output_height: int, output_width: int) -> Tensor:
    if x.ndim != 4 or indices.shape != x.shape:
        raise InputError(f"mattrt::max_unpool2d: x and indices must both be N x C x H x W, got "
                         f"{tuple(x.shape)} and {tuple(indices.shape)}")
    if indices.dtype not in (torch.int64, torch.int32):
        raise InputError(f"mattrt::max_unpool2d: indices must be int64 or int32, got {indices.dtype}")
    n, c, h, w = x.shape
    plane = output_height * output_width
    flat = indices.reshape(n, c, h * w).to(torch.int64)
    bad = (flat < 0) | (flat >= plane)
    if bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0, 0])
        value = int(flat.reshape(-1)[first])
        raise InputError(f"mattrt::max_unpool2d: index {value} at flat input position {first} is outside the "
                         f"{output_height} x {output_width} output plane")
    positions = torch.arange(h * w, device=x.device).expand(n, c, h * w)
    # The winner of a repeated index is the largest input position: an order-free reduction.
    winner = torch.full((n, c, plane), -1, dtype=torch.int64, device=x.device)
    winner.scatter_reduce_(2, flat, positions, reduce="amax", include_self=True)
    gathered = x.reshape(n, c, h * w).gather(2, winner.clamp_min(0))
    out = torch.where(winner >= 0, gathered, torch.zeros((), dtype=x.dtype, device=x.device))
    return out.reshape(n, c, output_height, output_width)


def _check_attention(op: str, features: Tensor, a: Tensor, height: int, width: int) -> None:
    if a.shape != (features.shape[0], 1, height, width):
        raise InputError(f"mattrt::{op}: a must be N x 1 x H x W = {(features.shape[0], 1, height, width)}, "
                         f"got {tuple(a.shape)}")
    if height % 2 or width % 2:
        raise InputError(f"mattrt::{op}: H and W must be even, got {height} x {width}")


def attention_pool2d_eager(x: Tensor, a: Tensor) -> Tensor:
    if x.ndim != 4:
        raise InputError(f"mattrt::attention_pool2d: x must be N x C x H x W, got {tuple(x.shape)}")
    n, c, h, w = x.shape
    _check_attention("attention_pool2d", x, a, h, w)

    def windows(t: Tensor) -> Tensor:  # N x K x H x W -> N x K x H/2 x W/2 x 4
        k = t.shape[1]
        return t.reshape(n, k, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, k, h // 2, w // 2, 4)

    weights = torch.softmax(windows(torch.sigmoid(a.float())), dim=-1)
    return (windows(x.float()) * weights).sum(dim=-1).to(x.dtype)


def attention_unpool2d_eager(y: Tensor, a: Tensor) -> Tensor:
    if y.ndim != 4:
        raise InputError(f"mattrt::attention_unpool2d: y must be N x C x H/2 x W/2, got {tuple(y.shape)}")
    h, w = 2 * y.shape[2], 2 * y.shape[3]
    _check_attention("attention_unpool2d", y, a, h, w)
    upsampled = y.float().repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return (torch.sigmoid(a.float()) * upsampled).to(y.dtype)


# ------------------------------------------------------------------------------------------
# CUDA: CuPy kernels on the tensors' memory


def _on_cuda(launch: Callable[..., Any], out: Tensor, *inputs: Tensor, **kwargs: Any) -> Tensor:
    backend = cupy_backend()  # MissingDependencyError, naming what is missing, before importing CuPy

    device = out.device
    stream_ptr = torch.cuda.current_stream(device).cuda_stream  # 0: the legacy default stream
    stream = cupy.cuda.Stream.null if stream_ptr == 0 else cupy.cuda.ExternalStream(stream_ptr)
    with cupy.cuda.Device(device.index), stream:
        arrays = [cupy.from_dlpack(t.contiguous()) for t in inputs]
        launch(backend, *arrays, out=cupy.from_dlpack(out), **kwargs)
    return out


# ------------------------------------------------------------------------------------------
# The ops


@torch.library.custom_op(f"{NAMESPACE}::max_unpool2d", mutates_args=(), device_types="cpu")
def max_unpool2d(x: Tensor, indices: Tensor, output_height: int, output_width: int) -> Tensor:
    """N x C x H x W values and flat per-plane indices -> N x C x output_height x output_width."""
    return max_unpool2d_eager(x, indices, output_height, output_width)


@max_unpool2d.register_kernel("cuda")
def _max_unpool2d_cuda(x: Tensor, indices: Tensor, output_height: int, output_width: int) -> Tensor:
    out = x.new_empty((x.shape[0], x.shape[1], output_height, output_width))

    def run(backend, xs, idx, *, out):
        return max_unpool.launch(backend, xs, idx, (output_height, output_width), out=out)

    return _on_cuda(run, out, x, indices)


@max_unpool2d.register_fake
def _max_unpool2d_fake(x: Tensor, indices: Tensor, output_height: int, output_width: int) -> Tensor:
    torch._check(indices.shape == x.shape, lambda: "mattrt::max_unpool2d: indices must have x's shape")
    return x.new_empty((x.shape[0], x.shape[1], output_height, output_width))


@torch.library.custom_op(f"{NAMESPACE}::attention_pool2d", mutates_args=(), device_types="cpu")
def attention_pool2d(x: Tensor, a: Tensor) -> Tensor:
    """Attention-guided 2x2 pooling: N x C x H x W, N x 1 x H x W -> N x C x H/2 x W/2."""
    return attention_pool2d_eager(x, a)


@attention_pool2d.register_kernel("cuda")
def _attention_pool2d_cuda(x: Tensor, a: Tensor) -> Tensor:
    out = x.new_empty((x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2))
    return _on_cuda(attention_pool.launch_pool, out, x, a)


@attention_pool2d.register_fake
def _attention_pool2d_fake(x: Tensor, a: Tensor) -> Tensor:
    return x.new_empty((x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2))


@torch.library.custom_op(f"{NAMESPACE}::attention_unpool2d", mutates_args=(), device_types="cpu")
def attention_unpool2d(y: Tensor, a: Tensor) -> Tensor:
    """Attention-guided x2 unpooling: N x C x H/2 x W/2, N x 1 x H x W -> N x C x H x W."""
    return attention_unpool2d_eager(y, a)


@attention_unpool2d.register_kernel("cuda")
def _attention_unpool2d_cuda(y: Tensor, a: Tensor) -> Tensor:
    out = y.new_empty((y.shape[0], y.shape[1], 2 * y.shape[2], 2 * y.shape[3]))
    return _on_cuda(attention_pool.launch_unpool, out, y, a)


@attention_unpool2d.register_fake
def _attention_unpool2d_fake(y: Tensor, a: Tensor) -> Tensor:
    return y.new_empty((y.shape[0], y.shape[1], 2 * y.shape[2], 2 * y.shape[3]))
