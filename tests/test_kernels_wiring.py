"""The CUDA kernels wired into the runtime, checked on a CPU through the kernels' g++ host
emulation of the same .cu sources:

- the kernel extensions the pipeline needs (a stack of blending windows + a window index per
  tile, the unclamped stitched ratio, banded and clamped trimap fusion, uint16/float32 images):
  emulation against the NumPy reference, which is also the pipeline's host implementation
  (runtime/ops.py); NVRTC compiles them in test_kernels_compile.py;
- the torch engine's kernel routing (mattrt custom ops in place of F.max_unpool2d and AlphaNet's
  attention functions): same outputs as eager PyTorch, and the custom ops really ran;
- whole pipelines whose per-pixel work runs through the kernels (pixel_ops="emulate", the code
  path of pixel_ops="device" with NumPy standing in for CuPy) against the host pipeline.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mattrt.availability import available
from mattrt.engines.torch.engine import StageLoader, TorchEngine, load_model_engines
from mattrt.engines.torch.kernel_routing import KernelRouting, unpool_output_size
from mattrt.errors import InputError, MissingDependencyError
from mattrt.fusion_kinds import FUSION_KINDS
from mattrt.kernels import emulate, fusion, preprocess, stitch
from mattrt.kernels.backends import get_backend
from mattrt.kernels.emulate import HostEmulationBackend
from mattrt.models import alphanet, create_model
from mattrt.runtime import ops
from mattrt.runtime.diagnostics import calibrated_random_weights
from mattrt.runtime.engine import Engine
from mattrt.runtime.pipeline import Pipeline
from mattrt.runtime.tiling import TilePlan

needs_emulation = pytest.mark.skipif(bool(emulate.skip_reason()), reason=emulate.skip_reason())
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.fixture(scope="module")
def host():
    return get_backend("emulate") if not emulate.skip_reason() else None


# -- 1. kernel extensions: emulation vs reference vs the pipeline's NumPy ------------------------------
def _plan_tiles(rng, height=150, width=233, tile=32, overlap=12, stride=8):
    plan = TilePlan.build(height, width, tile, overlap, stride)
    tiles = rng.uniform(-0.2, 1.2, (len(plan), tile, tile)).astype(np.float32)
    return plan, tiles


@needs_emulation
@pytest.mark.parametrize("tile_dtype", [np.float32, np.float16])
def test_stitch_with_a_window_stack_matches_reference_and_the_pipelines_numpy(host, rng, tile_dtype):
    plan, tiles = _plan_tiles(rng)
    tiles = tiles.astype(tile_dtype)
    stack, index = plan.window_stack()
    assert stack.shape == (9, 32, 32) and len(index) == len(plan) > 64  # two launches of at most 64 tiles
    np.testing.assert_array_equal(stack[index], plan.windows(range(len(plan))))
    offsets = plan.offsets()
    shape = (plan.height, plan.width)
    acc, weight = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    stitch.launch_accumulate(host, acc, weight, tiles, stack, offsets, index)
    acc_ref, weight_ref = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    stitch.stitch_accumulate_reference(acc_ref, weight_ref, tiles, stack, offsets, index)
    acc_ops, weight_ops = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    ops.stitch_accumulate(acc_ops, weight_ops, tiles, plan.windows(range(len(plan))), offsets)  # one window per tile
    for got in (acc, acc_ref):
        np.testing.assert_array_equal(got, acc_ops)
    for got in (weight, weight_ref):
        np.testing.assert_array_equal(got, weight_ops)
    # the unclamped ratio is the pipeline's stitch_normalize, bit for bit
    ratio = stitch.launch_finalize(host, acc, weight, np.float32, clamp=False)
    np.testing.assert_array_equal(ratio, stitch.stitch_finalize_reference(acc, weight, np.float32, clamp=False))
    np.testing.assert_array_equal(ratio, ops.stitch_normalize(acc_ops, weight_ops))
    assert ratio.min() < 0 and ratio.max() > 1  # not clamped


@needs_emulation
def test_stitch_window_forms_and_their_errors(host, rng):
    tiles = rng.random((3, 8, 8)).astype(np.float32)
    offsets = np.array([[0, 0], [4, 5], [-3, 9]])
    per_tile = rng.uniform(0.1, 1, (3, 8, 8)).astype(np.float32)
    results = []
    for window, index in ((per_tile, None), (per_tile[[2, 0, 1]], np.array([1, 2, 0]))):
        acc, weight = np.zeros((12, 16), np.float32), np.zeros((12, 16), np.float32)
        stitch.launch_accumulate(host, acc, weight, tiles, window, offsets, index)
        results.append((acc, weight))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    acc, weight = np.zeros((12, 16), np.float32), np.zeros((12, 16), np.float32)
    with pytest.raises(InputError, match=r"window_index\[1\] = 3 is not a window of the stack \(0 .. 2\)"):
        stitch.launch_accumulate(host, acc, weight, tiles, per_tile, offsets, [0, 3, 1])
    with pytest.raises(InputError, match="a stack of 2 windows needs window_index"):
        stitch.launch_accumulate(host, acc, weight, tiles, per_tile[:2], offsets)
    with pytest.raises(InputError, match="window_index picks windows from a K x T x T stack"):
        stitch.stitch_accumulate_reference(acc, weight, tiles, per_tile[0], offsets, [0, 0, 0])
    with pytest.raises(InputError, match="window_index must be 3 integers"):
        stitch.launch_accumulate(host, acc, weight, tiles, per_tile, offsets, [0, 1])
    with pytest.raises(InputError, match="clamp=False keeps the raw ratio and needs dtype float32"):
        stitch.stitch_finalize_reference(acc, weight + 1, np.uint8, clamp=False)


@needs_emulation
@pytest.mark.parametrize("kind", sorted(FUSION_KINDS))
def test_banded_clamped_fusion_is_the_pipelines_cpu_fusion(host, rng, kind):
    low = rng.random((3, 13, 17)).astype(np.float32)
    low /= low.sum(axis=0, keepdims=True)
    height, width = 101, 77
    detail = rng.uniform(-0.3, 1.3, (height, width)).astype(np.float32)
    for first, rows in ((0, 40), (40, 1), (41, 60)):
        band = detail[first:first + rows]
        got = fusion.launch(host, low[None], band[None, None].copy(), kind, band=(first, height), clamp=True)
        want = fusion.trimap_fusion_reference(low[None], band[None, None], kind, band=(first, height), clamp=True)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got[0, 0], ops.fuse_band(low, band, first, height, kind))  # the pipeline's host fusion
    whole = fusion.launch(host, low[None], detail[None, None].copy(), kind)
    np.testing.assert_array_equal(whole, fusion.trimap_fusion_reference(low[None], detail[None, None], kind))
    if kind != "argmax_trimap":
        assert whole.min() < 0 or whole.max() > 1  # without clamp the formula's value is kept
    with pytest.raises(InputError, match=r"band rows \[90, 191\) do not lie inside an image of 101 rows"):
        fusion.launch(host, low[None], detail[None, None].copy(), kind, band=(90, height))


@needs_emulation
@pytest.mark.parametrize("image_dtype", [np.uint8, np.uint16, np.float32])
def test_preprocess_reads_8_and_16_bit_and_float_images_like_the_pipeline(host, rng, image_dtype):
    image = rng.integers(0, 256, (37, 51, 3)).astype(np.uint8)
    image = {np.uint8: image, np.uint16: image.astype(np.uint16) * 257 + 3,
             np.float32: rng.random((37, 51, 3), dtype=np.float32)}[image_dtype]
    offsets = np.array([[0, 0], [-9, 40], [30, -12], [-70, 90]])
    got = preprocess.launch(host, image, offsets, 24, MEAN, STD)
    np.testing.assert_array_equal(got, preprocess.preprocess_tiles_reference(image, offsets, 24, MEAN, STD))
    half = preprocess.launch(host, image, offsets, 24, MEAN, STD, np.float16)
    np.testing.assert_array_equal(half, preprocess.preprocess_tiles_reference(image, offsets, 24, MEAN, STD, np.float16))


def test_kernel_backends_by_name():
    with pytest.raises(InputError, match="unknown kernel backend 'tpu'; choose one of: cupy, emulate"):
        get_backend("tpu")
    if not available("cupy_device"):
        with pytest.raises(MissingDependencyError, match="cupy_device"):
            get_backend("cupy")


# -- 2. the torch engine's kernel routing --------------------------------------------------------------
class _OpCounter(TorchDispatchMode):
    """Counts the operators that reach the dispatcher (custom ops included)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.name()] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {name: calibrated_random_weights(create_model(name)) for name in ("aim_tiny", "shm_tiny", "alphanet_tiny")}


def _stage_feeds(engine, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    size = engine.stage_spatial_size
    feeds = {m.name: rng.normal(size=(batch, m.shape[1], size, size)).astype(np.float32) for m in engine.inputs}
    if "guidance" in feeds:
        logits = feeds["guidance"] * 3
        feeds["guidance"] = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    return feeds


ROUTED_OPS = {"aim_tiny": {"max_unpool2d"}, "shm_tiny": {"max_unpool2d"},
              "alphanet_tiny": {"attention_pool2d", "attention_unpool2d"}}


@pytest.mark.parametrize("name", sorted(ROUTED_OPS))
def test_routed_engines_equal_eager_and_really_call_the_custom_ops(tiny_models, name):
    model = tiny_models[name]
    called = Counter()
    for stage in model.settings.stages:
        plain = TorchEngine(StageLoader(model, stage))
        routed = TorchEngine(StageLoader(model, stage), kernels=True)
        feeds = _stage_feeds(plain)
        with plain, routed:
            plain_counter, routed_counter = _OpCounter(), _OpCounter()
            with plain_counter:
                want = plain.run(feeds)
            with routed_counter:
                got = routed.run(feeds)
            assert "mattrt kernels: on" in routed.describe() and "mattrt kernels: off" in plain.describe()
            calls = routed.kernel_calls
        for key in want:
            if name == "alphanet_tiny":  # a float32 softmax with max subtraction vs the model's exp ratio
                np.testing.assert_allclose(got[key], want[key], rtol=0, atol=2e-6)
            else:  # max-unpooling moves values: exact (single-threaded torch keeps the last of tied inputs, as the op)
                np.testing.assert_array_equal(got[key], want[key])
        mattrt_ops = {op.split("::")[1]: n for op, n in routed_counter.ops.items() if op.startswith("mattrt::")}
        assert mattrt_ops == calls  # the engine's counts are the dispatcher's
        assert not any(op.startswith("mattrt::") for op in plain_counter.ops)
        assert routed_counter.ops["aten::max_unpool2d"] == 0
        if calls.get("max_unpool2d"):
            assert plain_counter.ops["aten::max_unpool2d"] == calls["max_unpool2d"]
        if calls.get("attention_pool2d"):
            # the model's own attention (avg_pool2d of weighted features) no longer runs
            assert routed_counter.ops["aten::avg_pool2d"] == 0 < plain_counter.ops["aten::avg_pool2d"]
        called.update(calls)
    assert set(called) == ROUTED_OPS[name] and all(n > 0 for n in called.values())


def test_routing_leaves_the_model_and_other_engines_alone(tiny_models):
    model = tiny_models["alphanet_tiny"]
    original = (alphanet.attention_pool2d, alphanet.attention_unpool2d)
    routed = TorchEngine(StageLoader(model, "detail"), kernels=True)
    feeds = _stage_feeds(routed)
    with routed:
        routed.run(feeds)
        assert "AttentionMattingNet.forward: attention_pool2d, attention_unpool2d" in routed.describe()
        counter = _OpCounter()
        with counter, torch.inference_mode():  # the model's own stage module, used beside the engine
            model.stages()["detail"].module(*(torch.from_numpy(feeds[m.name]) for m in routed.inputs))
    assert (alphanet.attention_pool2d, alphanet.attention_unpool2d) == original
    assert "forward" not in vars(model.matting)
    assert not any(op.startswith("mattrt::") for op in counter.ops) and counter.ops["aten::avg_pool2d"] > 0


def test_max_unpool_routing_sizes_and_fallbacks():
    routing = KernelRouting()
    x = torch.relu(torch.randn(2, 3, 11, 14))
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    for kwargs in (dict(), dict(output_size=(11, 14)), dict(output_size=[2, 3, 11, 15])):
        with routing.mode():
            got = F.max_unpool2d(pooled, indices, 2, **kwargs)
        torch.testing.assert_close(got, F.max_unpool2d(pooled, indices, 2, **kwargs), rtol=0, atol=0)
    for kernel, stride, padding in ((3, 2, 1), (2, None, 0), ((3, 2), (2, 1), (1, 0))):
        expected = F.max_unpool2d(pooled, torch.zeros_like(indices), kernel, stride, padding).shape[-2:]
        assert unpool_output_size(pooled, kernel, stride, padding, None) == tuple(expected)
    with pytest.raises(InputError, match="output_size"):
        unpool_output_size(pooled, 2, 2, 0, (11, 16))
    with routing.mode():  # a 3-D input is not the op's layout: PyTorch runs it, and it is counted
        F.max_unpool2d(pooled[0], indices[0], 2)
    assert routing.calls["max_unpool2d"] == 3 and routing.fallbacks["max_unpool2d"] == 1


@pytest.mark.skipif(available("cupy_device") and available("torch_cuda"), reason="this machine has CUDA and CuPy")
def test_kernels_on_cuda_need_cupy_and_a_device(tiny_models):
    with pytest.raises(MissingDependencyError, match="with mattrt kernels needs .*cupy_device"):
        TorchEngine(StageLoader(tiny_models["aim_tiny"], "detail"), device="cuda", kernels=True)
    with pytest.raises(InputError, match="kernels must be True or False"):
        TorchEngine(StageLoader(tiny_models["aim_tiny"], "detail"), kernels="yes")


# -- 3. whole pipelines with the per-pixel work on the kernels (emulated) -----------------------------------
class _HostOnlyEngine(Engine):
    """Wraps an engine behind the plain NumPy run() (device_arrays False), as onnxruntime engines are."""

    backend = "host-only"

    def __init__(self, inner):
        super().__init__(inner.name, inner.device, inner.precision)
        self.inner, self.inputs, self.outputs = inner, inner.inputs, inner.outputs
        self.fixed_spatial = inner.fixed_spatial

    def _activate(self):
        self.inner.activate()

    def _deactivate(self):
        self.inner.deactivate()

    def _infer(self, feeds, batch):
        return self.inner.run(feeds)


def _launch_counter(monkeypatch) -> Counter:
    launched = Counter()
    run_kernel = HostEmulationBackend.run_kernel

    def counting(self, source, kernel, grid, block, args):
        launched[kernel] += 1
        return run_kernel(self, source, kernel, grid, block, args)

    monkeypatch.setattr(HostEmulationBackend, "run_kernel", counting)
    return launched


def _image(rng, height, width, dtype=np.uint8):
    yy, xx = np.mgrid[0:height, 0:width]
    disc = ((yy - height / 2) ** 2 + (xx - width / 2.2) ** 2 < (min(height, width) / 3) ** 2)[..., None]
    base = np.where(disc, [220, 180, 150], [40, 90, 60]) + rng.integers(-30, 30, (height, width, 3))
    image = np.clip(base, 0, 255).astype(np.uint8)
    if dtype == np.uint16:
        return image.astype(np.uint16) * 257
    if dtype == np.float32:
        return image.astype(np.float32) / 255
    return image


PIPELINE_CASES = [  # model, image size (not multiples of the tile or the kernels' blocks), options
    ("aim_tiny", (157, 203), dict(kernels=True)),
    ("shm_tiny", (133, 98), dict(kernels=True, batch=3)),  # BGR model
    ("alphanet_tiny", (97, 141), dict(kernels=True, detail_scale=0.7)),
    ("alphanet_tiny", (5, 9), dict()),  # smaller than one tile: one reflected tile
    ("salient_tiny", (71, 150), dict(image_dtype=np.uint16)),
    ("semantic_tiny", (83, 66), dict(image_dtype=np.float32)),  # "sim" guidance, built on the host
]


@needs_emulation
@pytest.mark.parametrize("name, size, options", PIPELINE_CASES, ids=[f"{c[0]}-{c[1][0]}x{c[1][1]}" for c in PIPELINE_CASES])
def test_pipeline_on_emulated_kernels_equals_the_host_pipeline(tiny_models, monkeypatch, rng, name, size, options):
    options = dict(options)
    kernels = options.pop("kernels", False)
    image = _image(rng, *size, dtype=options.pop("image_dtype", np.uint8))
    model = tiny_models.get(name) or calibrated_random_weights(create_model(name))
    spec, plain_engines = load_model_engines(model)
    with Pipeline(spec, plain_engines, pixel_ops="host", **options) as pipeline:  # the normal CPU pipeline
        want = pipeline.run(image, keep_detail=True)
    _, engines = load_model_engines(model, kernels=kernels)
    launched = _launch_counter(monkeypatch)
    dlpack_calls = Counter()
    run_device = TorchEngine.run_device

    def counting_dlpack(self, feeds):
        dlpack_calls[self.name] += 1
        return run_device(self, feeds)

    monkeypatch.setattr(TorchEngine, "run_device", counting_dlpack)
    with Pipeline(spec, engines, pixel_ops="emulate", **options) as pipeline:
        got = pipeline.run(image, keep_detail=True)
        described = pipeline.describe()
    assert described["pixel_ops"] == "emulate" and described["kernels"] is kernels
    assert got.plan["pixel_ops"] == "emulate" and "upload" in got.timings
    # Bit for bit: the kernels do their NumPy references' float32 operations in their order. AlphaNet's
    # routed attention pooling (a softmax with max subtraction instead of the model's ratio of
    # exp means) moves its raw alpha by float rounding.
    tolerance = 1e-5 if kernels and name.startswith("alphanet") else 0.0
    difference = float(np.abs(got.alpha - want.alpha).max())
    assert difference <= tolerance, f"alpha differs from the host pipeline by {difference}"
    np.testing.assert_allclose(got.detail, want.detail, rtol=0, atol=tolerance)
    assert got.alpha.dtype == np.float32 and got.alpha.shape == size and isinstance(got.alpha, np.ndarray)
    assert 0 < float(want.alpha.std())  # a real matte, not a constant
    tiles_batches = -(-got.plan["tiles"] // pipeline.batch)
    preprocess_kernel = {np.uint8: "u8", np.uint16: "u16", np.float32: "f32"}[
        np.float32 if options.get("detail_scale", 1.0) != 1.0 else image.dtype.type]
    assert launched[f"preprocess_tiles_{preprocess_kernel}_f32"] == tiles_batches
    assert launched["stitch_accumulate_f32"] >= tiles_batches
    assert launched["stitch_finalize_ratio_f32"] >= 1 and launched["trimap_fusion_t32_d32"] >= 1
    assert dlpack_calls["detail"] == tiles_batches  # tiles reach the engine without a copy


@needs_emulation
def test_engines_without_device_feeds_and_whole_image_mode(tiny_models, rng):
    spec, engines = load_model_engines(tiny_models["shm_tiny"])
    image = _image(rng, 77, 120)
    with Pipeline(spec, engines, pixel_ops="host") as pipeline:
        want = pipeline.run(image).alpha
        whole = pipeline.run(image, whole=True).alpha
    wrapped = {name: _HostOnlyEngine(engine) for name, engine in engines.items()}
    with Pipeline(spec, wrapped, pixel_ops="emulate") as pipeline:
        np.testing.assert_array_equal(pipeline.run(image).alpha, want)  # through host copies
    with Pipeline(spec, engines, pixel_ops="emulate") as pipeline:
        result = pipeline.run(image, whole=True)  # the reference mode runs on the host
    assert result.plan["pixel_ops"] == "host"
    np.testing.assert_array_equal(result.alpha, whole)


def test_pixel_ops_selection_is_reported_and_never_silent(tiny_models):
    spec, engines = load_model_engines(tiny_models["aim_tiny"])
    with Pipeline(spec, engines) as pipeline:
        described = pipeline.describe()
    assert described["pixel_ops"] == "host" and described["kernels"] is False
    assert described["pixel_ops_reason"] == "auto: the detail engine runs on cpu"
    with pytest.raises(InputError, match="unknown pixel_ops 'gpu'; choose one of: auto, host, device, emulate"):
        Pipeline(spec, engines, pixel_ops="gpu")
    if not available("cupy_device"):
        with pytest.raises(MissingDependencyError, match="cupy_device"):
            Pipeline(spec, engines, pixel_ops="device")


@needs_emulation
def test_cli_options_reach_the_engines_and_the_pixel_ops(tmp_path):
    import json

    from PIL import Image

    from mattrt.cli import main

    Image.fromarray(_image(np.random.default_rng(3), 45, 70)).save(tmp_path / "in.png")
    args = ["infer", str(tmp_path / "in.png"), "--out", str(tmp_path / "out"), "--model", "aim_tiny", "--no-progress"]
    assert main([*args, "--backend", "torch", "--kernels", "--pixel-ops", "emulate"]) == 0  # --kernels: torch engines
    described = json.loads((tmp_path / "out" / "summary.json").read_text())["pipeline"]
    assert described["kernels"] is True and described["pixel_ops"] == "emulate"
