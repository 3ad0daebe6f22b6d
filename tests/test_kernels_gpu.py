"""The CuPy launchers, the routed torch CUDA engine and the device pipeline on a real GPU.

Skipped where there is none, with the runtime's own probes (mattrt.availability) as the reason;
on a CPU-only machine the same sources and launch code are checked through the g++ emulation
(test_kernels_emulate.py, test_kernels_wiring.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mattrt.availability import skip_reason
from mattrt.kernels import (
    attention_pool2d,
    attention_pool2d_reference,
    attention_unpool2d,
    attention_unpool2d_reference,
    band_seed,
    band_seed_reference,
    box_mean,
    box_mean_reference,
    dilate,
    dilate_reference,
    erode,
    erode_reference,
    guided_filter_band,
    guided_filter_band_reference,
    max_unpool2d,
    max_unpool2d_reference,
    preprocess_tiles,
    preprocess_tiles_reference,
    stitch_accumulate,
    stitch_accumulate_reference,
    stitch_finalize,
    stitch_finalize_reference,
    trimap_fusion,
    trimap_fusion_reference,
)

_gpu_reason = skip_reason("cupy_device")
pytestmark = pytest.mark.skipif(bool(_gpu_reason), reason=_gpu_reason)
needs_torch_cuda = pytest.mark.skipif(bool(skip_reason("torch_cuda")), reason=skip_reason("torch_cuda"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def cp():
    import cupy

    return cupy


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("value_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (2, 2, 0)])
def test_max_unpool_on_gpu_equals_reference(cp, rng, value_dtype, index_dtype, kernel, stride, padding):
    features = np.maximum(rng.standard_normal((2, 5, 67, 45)), 0).astype(np.float32)  # ReLU ties
    _, indices = F.max_pool2d(torch.from_numpy(features), kernel, stride, padding, return_indices=True)
    indices = indices.numpy().astype(index_dtype)
    decoder = rng.standard_normal(indices.shape).astype(value_dtype)
    got = max_unpool2d(cp.asarray(decoder), cp.asarray(indices), (67, 45))
    np.testing.assert_array_equal(cp.asnumpy(got), max_unpool2d_reference(decoder, indices, (67, 45)))


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 1e-6), (np.float16, 2e-3)])
def test_attention_pooling_on_gpu_equals_reference(cp, rng, dtype, tolerance):
    x = rng.standard_normal((2, 7, 38, 26)).astype(dtype)
    a = rng.standard_normal((2, 1, 38, 26)).astype(dtype)
    pooled = cp.asnumpy(attention_pool2d(cp.asarray(x), cp.asarray(a)))
    np.testing.assert_allclose(pooled.astype(np.float32), attention_pool2d_reference(x, a).astype(np.float32),
                               atol=tolerance, rtol=tolerance)
    y = rng.standard_normal((2, 7, 19, 13)).astype(dtype)
    unpooled = cp.asnumpy(attention_unpool2d(cp.asarray(y), cp.asarray(a)))
    np.testing.assert_allclose(unpooled.astype(np.float32), attention_unpool2d_reference(y, a).astype(np.float32),
                               atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("kind", ["unknown_blend", "aim_soft", "argmax_trimap"])
@pytest.mark.parametrize("logits", [False, True])
def test_trimap_fusion_on_gpu_equals_reference(cp, rng, kind, logits):
    trimap = rng.standard_normal((2, 3, 29, 41)).astype(np.float32)
    if not logits:
        trimap = np.exp(trimap) / np.exp(trimap).sum(axis=1, keepdims=True)
    detail = rng.random((2, 1, 117, 163)).astype(np.float32)
    got = cp.asnumpy(trimap_fusion(cp.asarray(trimap), cp.asarray(detail), kind, logits=logits))
    want = trimap_fusion_reference(trimap, detail, kind, logits=logits)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_stitching_on_gpu_equals_reference(cp, rng):
    height, width, tile = 70, 150, 32
    offsets = np.array([[0, 0], [0, 24], [24, 0], [24, 24], [-7, 130], [50, 140], [40, 100]])
    ramp = np.minimum(np.arange(tile) + 1, tile - np.arange(tile)).astype(np.float32)
    window = (np.outer(ramp, ramp) / ramp.max() ** 2).astype(np.float32)
    tiles = rng.random((len(offsets), tile, tile)).astype(np.float32)
    acc, weight = np.zeros((height, width), np.float32), np.zeros((height, width), np.float32)
    acc_gpu, weight_gpu = cp.asarray(acc), cp.asarray(weight)
    stitch_accumulate(acc_gpu, weight_gpu, cp.asarray(tiles), cp.asarray(window), offsets)
    stitch_accumulate_reference(acc, weight, tiles, window, offsets)
    np.testing.assert_array_equal(cp.asnumpy(acc_gpu), acc)
    np.testing.assert_array_equal(cp.asnumpy(weight_gpu), weight)
    for dtype in (np.uint8, np.uint16, np.float32):
        got = stitch_finalize(acc_gpu, weight_gpu, dtype, uncovered="zero")
        want = stitch_finalize_reference(acc, weight, dtype, uncovered="zero")
        np.testing.assert_array_equal(cp.asnumpy(got), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_preprocessing_on_gpu_equals_reference(cp, rng, dtype):
    image = rng.integers(0, 256, (53, 71, 3), dtype=np.uint8)
    offsets = np.array([[0, 0], [-10, -12], [30, 40], [-40, 50]])
    got = preprocess_tiles(cp.asarray(image), offsets, 32, MEAN, STD, dtype)
    np.testing.assert_array_equal(cp.asnumpy(got), preprocess_tiles_reference(image, offsets, 32, MEAN, STD, dtype))


@pytest.mark.parametrize("radius", [0, 1, 4, 9])
def test_min_max_filters_on_gpu_equal_reference(cp, rng, radius):
    mask = (rng.random((2, 1, 45, 77)) > 0.6).astype(np.float32)
    np.testing.assert_array_equal(cp.asnumpy(erode(cp.asarray(mask), radius)), erode_reference(mask, radius))
    np.testing.assert_array_equal(cp.asnumpy(dilate(cp.asarray(mask), radius)), dilate_reference(mask, radius))


@pytest.mark.parametrize("radius", [0, 3, 40])
def test_refinement_kernels_on_gpu_equal_reference(cp, rng, radius):
    """guided_filter.cu on the GPU: the same IEEE operations as the references, so equal bit for bit."""
    planes = rng.random((5, 61, 83), dtype=np.float32)
    np.testing.assert_array_equal(cp.asnumpy(box_mean(cp.asarray(planes), radius)), box_mean_reference(planes, radius))
    alpha = rng.random((61, 83), dtype=np.float32)
    alpha[alpha < 0.4], alpha[alpha > 0.7] = 0.0, 1.0
    np.testing.assert_array_equal(cp.asnumpy(band_seed(cp.asarray(alpha), 0.02, 0.98)),
                                  band_seed_reference(alpha, 0.02, 0.98))
    guide = rng.random((61, 83, 3), dtype=np.float32)
    window = alpha[10:40, 5:70].copy()
    band = (rng.random(window.shape) > 0.3).astype(np.uint8)
    got = guided_filter_band(cp.asarray(guide), cp.asarray(alpha), cp.asarray(window), cp.asarray(band), (10, 5),
                             radius, 1e-5)
    np.testing.assert_array_equal(cp.asnumpy(got),
                                  guided_filter_band_reference(guide, alpha, window, band, (10, 5), radius, 1e-5))


def test_refinement_on_the_device_equals_the_host(rng):
    from mattrt.data.synthetic import generate_sample, sample_rng
    from mattrt.runtime.refine import RefineOptions, refine_alpha

    sample = generate_sample("salient_opaque", (480, 320), sample_rng(5, 0))
    alpha = np.clip(sample.alpha + rng.normal(0, 0.05, sample.alpha.shape).astype(np.float32), 0, 1)
    options = RefineOptions(tile=128, coarse_side=240)
    stats = {}
    got = refine_alpha(sample.image, alpha, options, "device", stats=stats)
    assert stats["pixel"] == "device" and stats["tiles_refined"] > 1
    np.testing.assert_array_equal(got, refine_alpha(sample.image, alpha, options))


@needs_torch_cuda
@pytest.mark.parametrize("name", ["aim_tiny", "shm_tiny", "alphanet_tiny"])
def test_routed_cuda_engine_equals_eager_cuda(name):
    from mattrt.engines.torch.engine import StageLoader, TorchEngine
    from mattrt.models import create_model
    from mattrt.runtime.diagnostics import calibrated_random_weights

    torch.manual_seed(0)
    model = calibrated_random_weights(create_model(name))
    for stage in model.settings.stages:
        plain = TorchEngine(StageLoader(model, stage), device="cuda")
        routed = TorchEngine(StageLoader(model, stage), device="cuda", kernels=True)
        rng = np.random.default_rng(0)
        size = plain.stage_spatial_size
        feeds = {m.name: rng.random((2, m.shape[1], size, size)).astype(np.float32) for m in plain.inputs}
        with plain, routed:
            want, got = plain.run(feeds), routed.run(feeds)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-4, rtol=1e-4)


@needs_torch_cuda
@pytest.mark.parametrize("name", ["aim_tiny", "shm_tiny", "alphanet_tiny", "salient_tiny"])
def test_device_pipeline_equals_host_pipeline_on_cuda_engines(name, rng):
    from mattrt.engines.torch.engine import load_model_engines
    from mattrt.models import create_model
    from mattrt.runtime.diagnostics import calibrated_random_weights
    from mattrt.runtime.pipeline import Pipeline

    torch.manual_seed(0)
    model = calibrated_random_weights(create_model(name))
    image = rng.integers(0, 256, (157, 203, 3), dtype=np.uint8)
    spec, engines = load_model_engines(model, device="cuda")
    with Pipeline(spec, engines, pixel_ops="host") as pipeline:
        want = pipeline.run(image).alpha
    spec, engines = load_model_engines(model, device="cuda", kernels=True)
    with Pipeline(spec, engines, pixel_ops="device") as pipeline:
        assert pipeline.describe()["pixel_ops"] == "device"
        got = pipeline.run(image).alpha
    np.testing.assert_allclose(got, want, atol=1e-4)
