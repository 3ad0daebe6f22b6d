"""The Pipeline: whole-image mode against each model's forward(), tiled against whole-image,
banded trimap/fusion against full-size computations, letterboxing, options and size limits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mattrt.deploy.plan import model_pipeline
from mattrt.errors import InputError
from mattrt.export.parity import generated_image, normalize
from mattrt.models import create_model
from mattrt.models.fusion import FUSIONS
from mattrt.runtime.artifacts import ModelSpec
from mattrt.runtime.diagnostics import calibrated_random_weights, tiled_vs_whole
from mattrt.runtime.engine import Engine, TensorMeta
from mattrt.runtime.pipeline import Pipeline

TINY_MODELS = ["shm_tiny", "aim_tiny", "salient_tiny", "semantic_tiny", "alphanet_tiny"]


class FunctionEngine(Engine):
    """An engine around a NumPy function, recording its feeds (tests only)."""

    backend = "function"

    def __init__(self, name, inputs, outputs, size, function, fixed=False, max_batch=None):
        super().__init__(name, "cpu", "fp32")
        self.inputs = tuple(TensorMeta(n, (None, c, size, size), np.dtype(np.float32)) for n, c in inputs)
        self.outputs = tuple(TensorMeta(n, (None, c, size, size), np.dtype(np.float32)) for n, c in outputs)
        self.function = function
        self.fixed_spatial = fixed
        self.max_batch = max_batch
        self.calls = []

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def _infer(self, feeds, batch):
        self.calls.append({k: v.copy() for k, v in feeds.items()})
        return self.function(**feeds)


def _spec(**changes) -> ModelSpec:
    values = dict(
        name="function_model", stages=("semantic", "detail"), fusion="unknown_blend", guidance="trimap",
        guidance_channels=3, channel_order="RGB", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), stride_multiple=8,
        semantic_size=32, tile_size=32, tile_overlap=8,
    )
    values.update(changes)
    return ModelSpec(**values)


def _local_engines(size=32, fixed=False, max_batch=None):
    """Semantic: softmax of channel-mixed pixels; detail: a per-pixel function (receptive field 1)."""

    def semantic(image):
        logits = np.stack([image[:, 0] - image[:, 1], image[:, 1] * 2, image[:, 2] - image[:, 0]], axis=1)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {"semantic": logits, "trimap": (e / e.sum(axis=1, keepdims=True)).astype(np.float32)}

    def detail(image, guidance):
        return {"detail": (0.5 * np.tanh(image.mean(axis=1, keepdims=True)) + 0.5 * guidance[:, 1:2]).astype(np.float32)}

    return {
        "semantic": FunctionEngine("semantic", [("image", 3)], [("semantic", 3), ("trimap", 3)], size, semantic, fixed),
        "detail": FunctionEngine("detail", [("image", 3), ("guidance", 3)], [("detail", 1)], size, detail, fixed, max_batch),
    }


# -- the pipeline's plumbing against each model's own forward() --------------------------------------
@pytest.mark.parametrize("name", TINY_MODELS)
def test_whole_image_mode_equals_the_models_forward(name):
    """On an S x S image the semantic canvas needs no resize or padding, so the pipeline in
    whole-image mode must reproduce forward(): semantic stage, guidance, detail and fusion."""
    torch.manual_seed(0)
    model = create_model(name)
    size = model.settings.semantic_size
    image = generated_image(size, 1)
    with model_pipeline(model) as pipeline:
        result = pipeline.run(image, whole=True, keep_detail=True)
    with torch.no_grad():
        expected = model(normalize(image, model.settings))
    np.testing.assert_allclose(result.trimap, expected["trimap"][0].numpy(), atol=1e-5)
    detail = expected["detail"][0, 0].numpy()
    assert np.abs(result.detail - detail).max() <= 1e-5 * max(1.0, float(np.abs(detail).max()))
    np.testing.assert_allclose(result.alpha, expected["alpha"][0, 0].clamp(0, 1).numpy(), atol=1e-5)


# -- tiled against whole-image --------------------------------------------------------------------
def test_tiled_equals_whole_image_for_a_local_detail_network_with_enough_margin():
    """SHM's M-Net (VGG16-BN, 4 max-pools + unpools, 5x5 decoder convs; BatchNorm in eval is per
    pixel) has no global operation: its receptive field radius is 161 px (the 16 px block around
    the centre of a 512 input stops changing when everything 162+ px further away is re-drawn).
    With a blending margin of 176 px every weighted prediction saw its whole receptive field, so
    tiled and whole-image results agree to float rounding, far inside 1/255."""
    model = calibrated_random_weights(create_model("shm_tiny", width=0.0625))
    image = generated_image(600, 0)[:520, :560]
    with model_pipeline(model, tile_size=512, overlap=384, margin=176) as pipeline:
        figures = tiled_vs_whole(pipeline, image)
    assert figures["plan"]["tiles"] == 4
    assert figures["detail_range"] > 1.0  # the calibrated network is far from constant
    assert figures["alpha_max_abs"] <= 1 / 255
    assert figures["detail_max_abs"] <= 1e-5 * figures["detail_range"]


def test_tiles_that_miss_the_receptive_field_do_differ():
    """The same network with tiles far smaller than its receptive field: the comparison above is
    not vacuous."""
    model = calibrated_random_weights(create_model("shm_tiny", width=0.0625))
    image = generated_image(160, 0)
    with model_pipeline(model, tile_size=64, overlap=16, margin=0) as pipeline:
        figures = tiled_vs_whole(pipeline, image)
    assert figures["detail_max_abs"] > 0.05 * figures["detail_range"]


def test_a_per_pixel_detail_stage_is_tile_invariant_at_any_overlap():
    engines = _local_engines()
    image = generated_image(100, 2)[:77, :93]
    with Pipeline(_spec(), engines, overlap=8, margin=0, batch=3) as pipeline:
        figures = tiled_vs_whole(pipeline, image)
    assert figures["detail_max_abs"] <= 1e-6 and figures["alpha_max_abs"] <= 1e-6


# -- banded computations equal full-size ones ------------------------------------------------------
@pytest.mark.parametrize("detail_scale", [1.0, 0.5, 1.7])
def test_banded_fusion_equals_full_size_interpolation_and_fusion(detail_scale):
    engines = _local_engines()
    image = generated_image(300, 0)[:270, :300]
    with Pipeline(_spec(), engines, batch=5, detail_scale=detail_scale) as pipeline:
        result = pipeline.run(image, keep_detail=True)
    height, width = image.shape[:2]
    trimap = F.interpolate(torch.from_numpy(result.trimap)[None], (height, width), mode="bilinear", align_corners=False)
    detail = F.interpolate(torch.from_numpy(result.detail)[None, None], (height, width), mode="bilinear", align_corners=False)
    expected = FUSIONS["unknown_blend"](trimap, detail)[0, 0].clamp(0, 1).numpy()
    assert result.alpha.shape == (height, width)
    assert result.detail.shape == pipeline.detail_size(height, width)
    assert np.abs(result.alpha - expected).max() <= 1e-6


def test_guidance_tiles_are_crops_of_one_full_trimap_interpolation():
    engines = _local_engines()
    image = generated_image(100, 1)[:70, :90]
    with Pipeline(_spec(), engines, batch=64) as pipeline:
        result = pipeline.run(image)
        offsets = pipeline.plan(70, 90).offsets()
    full = F.interpolate(torch.from_numpy(result.trimap)[None], (70, 90), mode="bilinear", align_corners=False)[0].numpy()
    padded = np.pad(full, ((0, 0), (0, 64), (0, 64)), mode="reflect")
    guidance = engines["detail"].calls[0]["guidance"]
    for (top, left), crop in zip(offsets, guidance):
        assert np.abs(crop - padded[:, top : top + 32, left : left + 32]).max() <= 2.5e-7


# -- the semantic canvas -------------------------------------------------------------------------
def test_semantic_canvas_is_letterboxed_with_the_mean_colour():
    engines = _local_engines()
    image = generated_image(64, 0)[:16, :64]
    spec = _spec()
    with Pipeline(spec, engines) as pipeline:
        result = pipeline.run(image)
    canvas = engines["semantic"].calls[0]["image"][0]
    # 64 x 16 fits a 32 canvas as 32 x 8, centred: rows 12..19 hold the content.
    assert result.trimap.shape == (3, 8, 32)
    assert np.all(canvas[:, :12] == 0) and np.all(canvas[:, 20:] == 0)
    content = F.interpolate(torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None], (8, 32),
                            mode="bilinear", align_corners=False, antialias=True)[0].numpy()
    expected = (content - np.array(spec.mean, np.float32)[:, None, None]) / np.array(spec.std, np.float32)[:, None, None]
    assert np.abs(canvas[:, 12:20] - expected).max() < 1e-5


def test_hybrid_scales_set_the_semantic_content_and_detail_sizes():
    with Pipeline(_spec(), _local_engines(), semantic_scale=0.25, detail_scale=0.5) as pipeline:
        assert pipeline.content_size(100, 60) == (25, 15)
        assert pipeline.detail_size(101, 60) == (50, 30)
        result = pipeline.run(generated_image(128, 0)[:100, :60])
    assert result.alpha.shape == (100, 60) and result.trimap.shape == (3, 25, 15)
    assert result.plan["detail_size"] == [50, 30]
    with pytest.raises(InputError, match="larger than the 32 x 32 semantic canvas"):
        Pipeline(_spec(), _local_engines(), semantic_scale=0.5).run(generated_image(128, 0))


def test_bgr_models_get_their_channels_flipped():
    engines = _local_engines()
    image = generated_image(32, 0)
    with Pipeline(_spec(channel_order="BGR", mean=(0, 0, 0), std=(1, 1, 1)), engines) as pipeline:
        pipeline.run(image)
    tile = engines["detail"].calls[0]["image"][0]
    np.testing.assert_allclose(tile, image[..., ::-1].transpose(2, 0, 1) / np.float32(255), atol=1e-7)


# -- sizes and inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (1, 57), (40, 1), (31, 33), (32, 32), (200, 90)])
def test_any_size_including_single_pixels(shape):
    image = generated_image(256, 0)[: shape[0], : shape[1]]
    with Pipeline(_spec(), _local_engines()) as pipeline:
        result = pipeline.run(image)
    assert result.alpha.shape == shape and result.alpha.dtype == np.float32
    assert np.isfinite(result.alpha).all() and result.alpha.min() >= 0 and result.alpha.max() <= 1


def test_16_bit_and_float_images_give_the_8_bit_result():
    image = generated_image(64, 0)[:50, :60]
    with Pipeline(_spec(), _local_engines()) as pipeline:
        base = pipeline.run(image).alpha
        sixteen = pipeline.run(image.astype(np.uint16) * 257).alpha
        unit = pipeline.run(image.astype(np.float32) / 255).alpha
    assert np.abs(sixteen - base).max() < 1e-5 and np.abs(unit - base).max() < 1e-5


def test_a_model_with_real_tiles_runs_any_size():
    model = create_model("salient_tiny")
    with model_pipeline(model, batch=8) as pipeline:
        result = pipeline.run(generated_image(160, 2)[:150, :97])
    assert result.alpha.shape == (150, 97)
    assert result.plan["tiles"] == 12
    assert set(result.timings) >= {"semantic", "preprocess", "guidance", "detail", "stitch_fusion"}


def test_images_over_the_maximum_size_are_refused_not_downscaled():
    with Pipeline(_spec(), _local_engines(), max_pixels=1000) as pipeline:
        with pytest.raises(InputError, match="exceeds the maximum of 1,000 pixels.*never downscales"):
            pipeline.run(np.zeros((40, 30, 3), np.uint8))
        assert pipeline.run(np.zeros((40, 25, 3), np.uint8)).alpha.shape == (40, 25)


def test_bad_images_are_refused():
    with Pipeline(_spec(), _local_engines()) as pipeline:
        for bad, message in [
            (np.zeros((0, 5, 3), np.uint8), "zero size"),
            (np.zeros((5, 5), np.uint8), "H x W x 3"),
            (np.zeros((5, 5, 4), np.uint8), "H x W x 3"),
            (np.zeros((5, 5, 3), np.int16), "uint8, uint16 or float32"),
        ]:
            with pytest.raises(InputError, match=message):
                pipeline.run(bad)


# -- options checked against the engines ------------------------------------------------------------
def test_fixed_shape_engines_fix_the_tile_and_refuse_whole_image_mode():
    engines = _local_engines(fixed=True, max_batch=4)
    with pytest.raises(InputError, match="fixed at 32 x 32, but its spec says tile 64"):
        Pipeline(dataclasses.replace(_spec(), tile_size=64), engines)
    with pytest.raises(InputError, match="maximum batch 4"):
        Pipeline(_spec(), engines, batch=5)
    pipeline = Pipeline(_spec(), engines)
    assert pipeline.tile_size == 32
    with pipeline, pytest.raises(InputError, match="whole-image mode needs a detail engine that runs any size"):
        pipeline.run(generated_image(40, 0), whole=True)


def test_engines_must_match_the_models_contract():
    engines = _local_engines()
    with pytest.raises(InputError, match="guidance 'madeup'"):
        Pipeline(_spec(guidance="madeup"), engines)
    with pytest.raises(InputError, match="must read \\['image'\\]"):
        Pipeline(_spec(guidance="none"), engines)
    with pytest.raises(InputError, match="unknown fusion kind"):
        Pipeline(_spec(fusion="nope"), engines)
    with pytest.raises(InputError, match="no engine for stage"):
        Pipeline(_spec(stages=("semantic", "classifier_32", "detail")), engines)
    with pytest.raises(InputError, match="tile batch must be a positive integer"):
        Pipeline(_spec(), engines, batch=0)


def test_run_needs_active_engines():
    pipeline = Pipeline(_spec(), _local_engines())
    with pytest.raises(Exception, match="not active"):
        pipeline.run(generated_image(32, 0))


def test_sim_guidance_runs_through_the_classifier_engines():
    """Semantic Image Matting's guidance comes from models/sim.py with the classifier stages as
    engines; tiled and whole-image runs share it."""
    torch.manual_seed(0)
    model = create_model("semantic_tiny")
    with model_pipeline(model) as pipeline:
        result = pipeline.run(generated_image(128, 0)[:100, :120], keep_detail=True)
    assert result.alpha.shape == (100, 120)
    assert "guidance" in result.timings
