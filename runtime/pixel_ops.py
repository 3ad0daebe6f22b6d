"""Where the pipeline's per-pixel work runs: on the host (runtime/ops.py) or through the CUDA
kernels (kernels/) on the device.

The per-pixel work of a run is: cropping and normalising the detail tiles, cropping the
guidance tiles, stitching the detail outputs (accumulate, then normalise a band of rows), and
fusing the stitched raw alpha with the upsampled trimap. `HostPixelOps` does it with the NumPy
functions of runtime/ops.py (for the ops that have a kernel, that kernel's NumPy reference);
`KernelPixelOps` with the kernels' launchers on a kernels backend:

- "device": the CuPy backend. The detail image is uploaded once, tiles are cut and normalised
  on the GPU (preprocess.cu), fed to a CUDA engine that takes device arrays (torch, TensorRT) without a copy (DLPack, engine
  `run_device`), stitched on the GPU (stitch.cu: one stack of the plan's at most 9 windows plus
  an index per tile) and fused in one pass per band (trimap_fusion.cu: bilinear upsampling of
  the trimap + the formula + clamp); the alpha comes back to the host once. Trimap guidance
  tiles are gathered on the GPU with CuPy array operations; "sim" guidance planes are built on
  the host (models/sim.py) and their crops uploaded per batch.
- "emulate": the same code and kernels on the kernels' g++ host emulation (NumPy arrays): for
  tests and for checking the device path on a machine without a GPU. Slow.

Both give the host result bit for bit: every kernel here does the same float32 operations in the
same order as its NumPy reference (no fused multiply-adds, correctly rounded divisions), which the
tests check by running whole pipelines on the emulation. The GPU path is only as different as
the CUDA and NumPy libraries' IEEE arithmetic is (not at all for these operations).

`select_pixel_ops(choice, detail_engine)` resolves the pipeline's `pixel_ops` option:
"host", "device" (MissingDependencyError without CuPy and a GPU), "emulate", or "auto":
"device" when the detail engine is a CUDA engine that takes device arrays (torch, TensorRT) and CuPy has a
device, "host" otherwise; the reason is reported with the choice.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping

import numpy as np

from mattrt.availability import available
from mattrt.errors import InputError
from mattrt.kernels import fusion, preprocess, stitch
from mattrt.kernels.backends import get_backend
from mattrt.lazy import lazy_import
from mattrt.runtime import ops

cupy = lazy_import("cupy", probe="cupy")
torch = lazy_import("torch", probe="torch")

PIXEL_OPS = ("auto", "host", "device", "emulate")
# Rows fused per step on the host (bounds the full-width trimap band: 3 x rows x W float32).
FUSION_ROWS = 64


class HostPixelOps:
    """The per-pixel work in NumPy on the host (runtime/ops.py)."""

    name = "host"
    memory = "cpu"
    xp = np
    transfers = False  # whether arrays move between the host and this implementation's memory

    def describe(self) -> str:
        return "host (NumPy, runtime/ops.py)"

    def scope(self):
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        pass

    # -- transfers ------------------------------------------------------------------------------
    def upload(self, array: np.ndarray) -> np.ndarray:
        return array

    def upload_image(self, image: np.ndarray):
        """The image in this implementation's memory, in a dtype tile preprocessing reads
        (uint8, uint16 or float32: a float64 image becomes float32, the values each crop had)."""
        return self.upload(image.astype(np.float32) if image.dtype == np.float64 else image)

    def to_host(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    # -- tiles ----------------------------------------------------------------------------------
    def preprocess_tiles(self, image, offsets, tile, mean, std):
        return ops.preprocess_tiles(image, offsets, tile, mean, std)

    def guidance_tiles(self, low_host: np.ndarray, low: Any, out_height: int, out_width: int, offsets, tile):
        return ops.upsampled_tiles(low_host, out_height, out_width, offsets, tile)

    def crop_planes(self, planes: np.ndarray, offsets, tile):
        return ops.crop_planes(planes, offsets, tile)

    def run_engine(self, engine, feeds: Mapping[str, Any]) -> dict[str, Any]:
        return engine.run(feeds)

    # -- stitching and fusion -------------------------------------------------------------------
    def stitch_accumulate(self, acc, weight_sum, tiles, windows, offsets, window_index) -> None:
        ops.stitch_accumulate(acc, weight_sum, tiles, windows, offsets, window_index)

    def stitch_normalize(self, acc, weight_sum):
        return ops.stitch_normalize(acc, weight_sum)

    def fuse_rows(self, low_host: np.ndarray, low: Any, detail_rows, first_row: int, height: int, width: int,
                  kind: str, out) -> None:
        """out (rows x W) = fused, clamped alpha of image rows [first_row, first_row + rows)."""
        for offset in range(0, detail_rows.shape[0], FUSION_ROWS):
            part = detail_rows[offset : offset + FUSION_ROWS]
            y0 = first_row + offset
            out[offset : offset + part.shape[0]] = ops.fuse_band(low_host, part, y0, height, kind)


class KernelPixelOps(HostPixelOps):
    """The per-pixel work through the CUDA kernels on a kernels backend (CuPy, or the emulation)."""

    transfers = True

    def __init__(self, backend, name: str):
        self.backend = backend
        self.name = name
        self.xp = backend.xp
        self.memory = "cuda" if backend.name == "cupy" else "cpu"

    def describe(self) -> str:
        where = "GPU, CuPy" if self.memory == "cuda" else "g++ host emulation of the CUDA sources"
        return f"{self.name} (mattrt CUDA kernels: preprocess, stitch, trimap_fusion; {where})"

    def scope(self):
        """Launch the kernels on torch's current CUDA stream, so they are ordered with the engine."""
        if self.memory != "cuda":
            return contextlib.nullcontext()
        if not available("torch_cuda"):
            return contextlib.nullcontext()
        pointer = torch.cuda.current_stream().cuda_stream
        return cupy.cuda.Stream.null if pointer == 0 else cupy.cuda.ExternalStream(pointer)

    def synchronize(self) -> None:
        if self.memory == "cuda":
            self.xp.cuda.get_current_stream().synchronize()

    # -- transfers ------------------------------------------------------------------------------
    def upload(self, array: np.ndarray):
        return self.xp.asarray(np.ascontiguousarray(array))

    def to_host(self, array: Any) -> np.ndarray:
        return self.backend.to_host(array)

    # -- tiles ----------------------------------------------------------------------------------
    def preprocess_tiles(self, image, offsets, tile, mean, std):
        return preprocess.launch(self.backend, image, offsets, tile, mean, std, np.float32)

    def guidance_tiles(self, low_host: np.ndarray, low: Any, out_height: int, out_width: int, offsets, tile):
        """ops.upsampled_tiles gathering from the low-resolution trimap where it stays (the device)."""
        return ops.upsampled_tiles(low, out_height, out_width, offsets, tile, xp=self.xp)

    def crop_planes(self, planes: np.ndarray, offsets, tile):
        return self.upload(ops.crop_planes(planes, offsets, tile))

    def run_engine(self, engine, feeds: Mapping[str, Any]) -> dict[str, Any]:
        """Zero-copy when the engine takes arrays in this memory (Engine.device_arrays); otherwise
        through host copies (e.g. an onnxruntime engine fed by device tiles)."""
        if engine.device_arrays and engine.device == self.memory:
            return {name: self.xp.from_dlpack(value) for name, value in engine.run_device(feeds).items()}
        outputs = engine.run({name: self.to_host(value) for name, value in feeds.items()})
        return {name: self.xp.asarray(value) for name, value in outputs.items()}

    # -- stitching and fusion -------------------------------------------------------------------
    def stitch_accumulate(self, acc, weight_sum, tiles, windows, offsets, window_index) -> None:
        stitch.launch_accumulate(self.backend, acc, weight_sum, self.xp.ascontiguousarray(tiles), windows, offsets,
                                 window_index)

    def stitch_normalize(self, acc, weight_sum):
        return stitch.launch_finalize(self.backend, acc, weight_sum, np.float32, clamp=False)

    def fuse_rows(self, low_host: np.ndarray, low: Any, detail_rows, first_row: int, height: int, width: int,
                  kind: str, out) -> None:
        rows = int(detail_rows.shape[0])
        fusion.launch(self.backend, low[None], self.xp.ascontiguousarray(detail_rows).reshape(1, 1, rows, width), kind,
                      band=(first_row, height), clamp=True, out=out.reshape(1, 1, rows, width))


def select_pixel_ops(choice: str, detail_engine) -> tuple[HostPixelOps, str]:
    """The pixel-ops implementation for the pipeline option `choice`, and why it was chosen."""

    if choice not in PIXEL_OPS:
        raise InputError(f"unknown pixel_ops {choice!r}; choose one of: {', '.join(PIXEL_OPS)}")
    if choice == "host":
        return HostPixelOps(), "asked for"
    if choice == "device":
        return KernelPixelOps(get_backend("cupy"), "device"), "asked for"
    if choice == "emulate":
        return KernelPixelOps(get_backend("emulate"), "emulate"), "asked for (g++ host emulation of the kernels: slow)"
    device = getattr(detail_engine, "device", "cpu")
    if device != "cuda":
        return HostPixelOps(), f"auto: the detail engine runs on {device}"
    if not detail_engine.device_arrays:
        return HostPixelOps(), f"auto: the {detail_engine.backend} detail engine takes host arrays only"
    if not available("cupy_device"):
        return HostPixelOps(), "auto: the detail engine runs on cuda but CuPy has no device here (pip install cupy-cuda12x)"
    return KernelPixelOps(get_backend("cupy"), "device"), "auto: the detail engine runs on cuda and CuPy has a device"


__all__ = ["FUSION_ROWS", "HostPixelOps", "KernelPixelOps", "PIXEL_OPS", "select_pixel_ops"]
