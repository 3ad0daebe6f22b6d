"""Bounded memory on an 8K image (slow: about 15-30 s here).

The pipeline's own buffers are the H x W float32 alpha (4 bytes per pixel) plus bands of rows
and one batch of tiles; a pipeline that kept a full-resolution float trimap (12 bytes per
pixel), all tile outputs, or float copies of the image would exceed the bound below by
hundreds of megabytes at 7680 x 4320. The stages are one convolution each, so that the test
measures the pipeline rather than a network (benchmarks/runtime.py reports the same
measurement for shm_tiny: there one batch of network activations comes on top).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")

WORKER = r"""
import json, sys
from pathlib import Path
import numpy as np
import torch
from torch import nn
from mattrt.models.base import Stage, TensorSpec
from mattrt.models.settings import ModelSettings
from mattrt.runtime.artifacts import ModelSpec
from mattrt.runtime.pipeline import Pipeline
from mattrt.engines.torch.engine import TorchEngine

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

class Semantic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
    def forward(self, image):
        logits = self.conv(image)
        return logits, torch.softmax(logits, dim=1)

class Detail(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 1, 3, padding=1)
    def forward(self, image, guidance):
        return (torch.sigmoid(self.conv(torch.cat([image, guidance], 1))),)

class Loader:
    def __init__(self, stage):
        self.stage, self.stage_name = stage, stage.name
    def __call__(self):
        return self.stage

image_spec = TensorSpec("image", 3)
stages = {
    "semantic": Stage("semantic", Semantic().eval(), (image_spec,), (TensorSpec("semantic", 3), TensorSpec("trimap", 3)), 64),
    "detail": Stage("detail", Detail().eval(), (image_spec, TensorSpec("guidance", 3)), (TensorSpec("detail", 1),), 512),
}
spec = ModelSpec.from_settings(ModelSettings(name="memory_probe", stride_multiple=32, semantic_size=64, tile_size=512))
engines = {name: TorchEngine(Loader(stage)) for name, stage in stages.items()}

height, width = int(sys.argv[1]), int(sys.argv[2])
image = np.empty((height, width, 3), np.uint8)
rng = np.random.default_rng(0)
for y in range(0, height, 512):
    image[y : y + 512] = rng.integers(0, 256, image[y : y + 512].shape, dtype=np.uint8)
with Pipeline(spec, engines, overlap=64, batch=2) as pipeline:
    pipeline.run(np.zeros((520, 520, 3), np.uint8))  # warm up: first-call allocations
    before = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current RSS
    result = pipeline.run(image)
print(json.dumps({"before": before, "peak": status("VmHWM"), "tiles": result.plan["tiles"], "shape": list(result.alpha.shape)}))
"""


@pytest.mark.slow
def test_an_8k_image_runs_in_bounded_memory():
    height, width = 4320, 7680
    done = subprocess.run([sys.executable, "-c", WORKER, str(height), str(width)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["shape"] == [height, width] and figures["tiles"] == 170
    growth = figures["peak"] - figures["before"]
    alpha_bytes = 4 * height * width
    assert growth <= alpha_bytes + 200 * 2**20, f"peak grew by {growth / 2**20:.0f} MiB during the run"
