"""The Pipeline over a network whose output is alpha (an imported model such as ISNet): the image
stretched (or letterboxed) to the canvas, normalised as the manifest says, the network's alpha
upsampled with the trimap's bilinear coordinates, and refined at full resolution; options that
only tiled detail networks take are refused. The network here is a tiny convolutional one made in
the test, written as an export directory by hand (the import itself is tested elsewhere)."""

from __future__ import annotations

import datetime

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mattrt.deploy.plan import export_pipeline
from mattrt.errors import InputError
from mattrt.export.exporter import export_graph
from mattrt.export.parity import generated_image
from mattrt.manifest import GraphEntry, Manifest, TensorInfo, embed_manifest

CANVAS = 32
MEAN, STD = (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)


class TinyAlpha(nn.Module):
    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.first = nn.Conv2d(3, 6, 3, padding=1)
        self.second = nn.Conv2d(6, 1, 3, padding=1)
        with torch.no_grad():
            for conv in (self.first, self.second):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.8)
                conv.bias.zero_()

    def forward(self, image):
        return (torch.sigmoid(4 * self.second(F.relu(self.first(image)))),)


def write_export(directory, fit: str, refine: dict) -> Manifest:
    module = TinyAlpha().eval()
    proto = export_graph(module, (torch.rand(1, 3, CANVAS, CANVAS),), ["image"], ["alpha"], max_batch=2,
                         name="semantic")
    directory.mkdir(parents=True)
    shape = ["batch", 3, CANVAS, CANVAS]
    entry = GraphEntry("semantic", [TensorInfo("image", shape, "float32")],
                       [TensorInfo("alpha", ["batch", 1, CANVAS, CANVAS], "float32")], CANVAS,
                       {"fp32": "semantic.onnx"})
    manifest = Manifest(
        model="tiny_alpha", settings={"name": "tiny_alpha"}, stages=[entry], fusion_graph=None,
        normalization={"channel_order": "RGB", "mean": list(MEAN), "std": list(STD), "input_range": [0.0, 1.0]},
        fusion=None, guidance={"kind": "none", "channels": 0}, stride_multiple=1, semantic_size=CANVAS,
        tile_size=64, tile_overlap=8, max_batch=2, opset=18, checkpoint_sha256="made-in-the-test", versions={},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        network={"output": "alpha", "fit": fit, "refine": refine},
    )
    embed_manifest(proto, manifest)
    onnx.save_model(proto, str(directory / "semantic.onnx"))
    manifest.save(directory)
    return manifest


@pytest.fixture(scope="module")
def stretched(tmp_path_factory):
    directory = tmp_path_factory.mktemp("alpha") / "stretch"
    write_export(directory, "stretch", {"method": "none"})
    return directory


def expected_alpha(image: np.ndarray, fit: str) -> np.ndarray:
    """The same computation with torch: antialiased bilinear down to the canvas, the network, bilinear up."""
    height, width = image.shape[:2]
    rgb = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    if fit == "stretch":
        content = (CANVAS, CANVAS)
    else:
        scale = CANVAS / max(height, width)
        content = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = F.interpolate(rgb, content, mode="bilinear", antialias=True, align_corners=False)
    canvas = torch.zeros(1, 3, CANVAS, CANVAS)
    top, left = (CANVAS - content[0]) // 2, (CANVAS - content[1]) // 2
    canvas[:, :, top:top + content[0], left:left + content[1]] = (small - 0.5) / 1.0
    with torch.no_grad():
        alpha = TinyAlpha().eval()(canvas)[0][:, :, top:top + content[0], left:left + content[1]]
    return F.interpolate(alpha, (height, width), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def test_a_stretched_alpha_network_runs_as_the_card_says(stretched):
    image = np.ascontiguousarray(generated_image(120, 0)[:90, :120])
    with export_pipeline(stretched) as pipeline:
        result = pipeline.run(image)
        described = pipeline.describe()
    assert result.alpha.shape == (90, 120) and result.trimap.shape == (1, CANVAS, CANVAS)
    np.testing.assert_allclose(result.alpha, expected_alpha(image, "stretch"), atol=2e-3)
    assert result.alpha.std() > 0.05  # a matte, not a constant
    assert described["semantic_output"] == "alpha" and described["fit"] == "stretch"
    assert described["refine"]["method"] == "none" and "tile_size" not in described
    assert result.plan["refine"] == "none" and "refine" not in result.timings


def test_a_letterboxed_alpha_network_keeps_the_aspect(tmp_path):
    directory = tmp_path / "letterbox"
    write_export(directory, "letterbox", {"method": "none"})
    image = np.ascontiguousarray(generated_image(120, 1)[:60, :120])
    with export_pipeline(directory) as pipeline:
        result = pipeline.run(image)
    assert result.trimap.shape == (1, 16, CANVAS)
    np.testing.assert_allclose(result.alpha, expected_alpha(image, "letterbox"), atol=2e-3)


def test_tiling_options_and_modes_that_need_a_detail_network_are_refused(stretched):
    with pytest.raises(InputError, match="runs no detail tiles, so --batch do not apply"):
        export_pipeline(stretched, batch=2)
    with pytest.raises(InputError, match="--detail-scale does not apply"):
        export_pipeline(stretched, detail_scale=0.5)
    with pytest.raises(InputError, match="stretches the whole image"):
        export_pipeline(stretched, semantic_scale=0.5)
    with export_pipeline(stretched) as pipeline, pytest.raises(InputError, match="has no detail stage"):
        pipeline.run(generated_image(64, 0), whole=True)


def test_refinement_runs_where_the_card_asks_and_none_turns_it_off(stretched, tmp_path):
    directory = tmp_path / "refined"
    write_export(directory, "stretch", {"method": "guided"})
    image = np.ascontiguousarray(generated_image(160, 0)[:120, :160])
    with export_pipeline(directory) as pipeline:
        refined = pipeline.run(image)
    with export_pipeline(directory, refine="none") as pipeline:
        plain = pipeline.run(image)
    np.testing.assert_allclose(plain.alpha, expected_alpha(image, "stretch"), atol=2e-3)
    assert refined.plan["refine"] == "guided" and "refine" in refined.timings
    assert not np.array_equal(refined.alpha, plain.alpha) and 0 <= refined.alpha.min() <= refined.alpha.max() <= 1
