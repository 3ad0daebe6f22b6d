"""mattrt.runtime: what runs a model's stages on one image: the Engine interface, tiling, the
per-pixel ops, stitching, fusion, foreground estimation, threads, and the Pipeline.

Engines themselves (torch, onnxruntime, TensorRT, the Triton client) live in mattrt.engines, one
package per family; mattrt.deploy chains a source to a Pipeline over them.
"""
