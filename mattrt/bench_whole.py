"""The whole-image ONNX graph of `mattrt bench`'s rembg-style baseline.

What a user who does not tile runs: the model's whole network (image -> fused alpha) exported
once at a fixed S x S canvas and called once per image. mattrt's deployed graphs are per stage
and tile-sized, so this graph exists for the baseline only. It is exported once into the
artifact cache folder (`<cache>/bench-whole-<model>-<key>/whole.onnx`, keyed by weights,
canvas and versions; written under a temporary name and renamed, under a file lock) because an
export takes one to two minutes on a small CPU.

Kept apart from mattrt/bench.py because it subclasses torch.nn.Module (bench.py binds it lazily
so `mattrt --help` never imports torch).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock

from mattrt import __version__
from mattrt.export.cache import default_cache_dir
from mattrt.export.exporter import DEFAULT_OPSET, export_graph

GRAPH_FILE = "whole.onnx"
KEY_FILE = "key.json"


class AlphaOnly(torch.nn.Module):
    """A MattingModel's forward reduced to its fused alpha (the graph's one output)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(image)["alpha"],)


def whole_image_graph(model, canvas: int, cache_dir: str | Path | None, log: Callable[[str], None]) -> Path:
    """The graph file for `model` at canvas x canvas (see the module docstring)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = json.dumps({"model": model.settings.name, "weights": model.checkpoint_sha256, "canvas": canvas,
                      "mattrt": __version__, "torch": torch.__version__, "opset": DEFAULT_OPSET},
                     sort_keys=True, default=str)
    folder = root / f"bench-whole-{model.settings.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    graph = folder / GRAPH_FILE
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if graph.is_file() and (folder / KEY_FILE).is_file() and (folder / KEY_FILE).read_text() == key:
            log(f"whole-image baseline: reusing {graph}")
            return graph
        log(f"whole-image baseline: exporting {model.settings.name}'s whole network at {canvas} x {canvas} once "
            f"into {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        proto = export_graph(AlphaOnly(model.eval()), (torch.rand(1, 3, canvas, canvas),), ["image"], ["alpha"],
                             max_batch=1, name="whole")
        staging = folder / (GRAPH_FILE + ".partial")
        staging.write_bytes(proto.SerializeToString())
        os.replace(staging, graph)
        (folder / KEY_FILE).write_text(key)
    return graph


__all__ = ["AlphaOnly", "whole_image_graph"]
