"""The whole-image ONNX graph of `mattrt bench`'s rembg-style baseline.

What a user who does not tile runs: the model's whole network (image -> fused alpha) exported
once at a fixed S x S canvas and called once per image. mattrt's deployed graphs are per stage
and tile-sized, so this graph exists for the baseline only. An export takes one to two minutes
on a small CPU, so it is made once in an artifact cache entry (deploy/cache.py), keyed by the
model, its weights, the canvas and the exporter's library versions.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mattrt.deploy.cache import ArtifactCache
from mattrt.export.exporter import DEFAULT_OPSET, export_graph, exporter_versions

GRAPH_FILE = "whole.onnx"


class AlphaOnly(torch.nn.Module):
    """A MattingModel's forward reduced to its fused alpha (the graph's one output)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(image)["alpha"],)


def whole_image_graph(model, canvas: int, cache: ArtifactCache) -> Path:
    """The graph file for `model` at canvas x canvas (see the module docstring)."""
    name = model.settings.name
    key = {"step": "whole-image", "model": name, "checkpoint_sha256": model.checkpoint_sha256, "canvas": canvas,
           "opset": DEFAULT_OPSET, "exporter": exporter_versions()}

    def build(staging: Path) -> Path:
        cache.log(f"whole-image baseline: exporting {name}'s whole network at {canvas} x {canvas} once")
        proto = export_graph(AlphaOnly(model.eval()), (torch.rand(1, 3, canvas, canvas),), ["image"], ["alpha"],
                             max_batch=1, name="whole")
        (staging / GRAPH_FILE).write_bytes(proto.SerializeToString())
        return staging

    entry = cache.entry(key, f"{name}-whole-image-{canvas}", build)
    return entry.path / GRAPH_FILE


__all__ = ["AlphaOnly", "whole_image_graph"]
