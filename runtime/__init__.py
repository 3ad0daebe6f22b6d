"""mattrt.runtime: stage engines (torch, onnxruntime, TensorRT), tiling, stitching, fusion and the Pipeline.

    from mattrt.runtime import Pipeline
    with Pipeline.from_model("shm_tiny") as pipeline:
        alpha = pipeline.run(rgb).alpha

Names are imported on first use, so `import mattrt.runtime` (and the CLI) stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Engine": "mattrt.runtime.engine",
    "EngineError": "mattrt.runtime.engine",
    "TensorMeta": "mattrt.manifest",
    "TorchEngine": "mattrt.runtime.torch_engine",
    "KernelRouting": "mattrt.runtime.kernel_routing",
    "HostPixelOps": "mattrt.runtime.pixel_ops",
    "KernelPixelOps": "mattrt.runtime.pixel_ops",
    "select_pixel_ops": "mattrt.runtime.pixel_ops",
    "StageLoader": "mattrt.runtime.torch_engine",
    "OnnxRuntimeEngine": "mattrt.runtime.onnx_engine",
    "SessionLoader": "mattrt.runtime.onnx_engine",
    "ModelSpec": "mattrt.runtime.artifacts",
    "load_model_engines": "mattrt.runtime.torch_engine",
    "open_artifacts": "mattrt.runtime.onnx_engine",
    "TrtEngine": "mattrt.runtime.tensorrt_engine",
    "open_plans": "mattrt.runtime.tensorrt_engine",
    "build_plans": "mattrt.runtime.tensorrt_build",
    "Backend": "mattrt.runtime.engine",
    "get_backend": "mattrt.runtime.backends",
    "choose_auto": "mattrt.runtime.backends",
    "TilePlan": "mattrt.runtime.tiling",
    "Pipeline": "mattrt.runtime.pipeline",
    "MattingResult": "mattrt.runtime.artifacts",
    "estimate_foreground": "mattrt.runtime.foreground",
    "composite": "mattrt.runtime.foreground",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mattrt.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
