"""The Engine interface through the torch backend: metadata, lifecycle, feed checks, options,
and errors that name what is missing (no silent fallback)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mattrt.availability import available
from mattrt.engines.torch.engine import StageLoader, TorchEngine, load_model_engines
from mattrt.errors import InputError, MissingDependencyError
from mattrt.models import create_model
from mattrt.runtime.artifacts import ModelSpec
from mattrt.runtime.diagnostics import calibrated_random_weights
from mattrt.runtime.engine import EngineError, run_in_chunks


@pytest.fixture(scope="module")
def model():
    return calibrated_random_weights(create_model("shm_tiny"))


def _feeds(batch=2, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(batch, 3, size, size)).astype(np.float32),
        "guidance": rng.random((batch, 3, size, size), dtype=np.float32),
    }


def test_metadata_names_shapes_and_dtypes(model):
    engine = TorchEngine(StageLoader(model, "detail"))
    assert engine.input_names == ["image", "guidance"] and engine.output_names == ["detail"]
    assert engine.inputs[0].shape == (None, 3, 64, 64) and engine.outputs[0].shape == (None, 1, 64, 64)
    assert all(meta.dtype == np.float32 for meta in engine.inputs + engine.outputs)
    assert engine.spatial_size == 64 and not engine.fixed_spatial
    assert "image [batch x 3 x 64 x 64] float32" in engine.describe()


def test_runs_as_a_context_manager_and_matches_the_stage_module(model):
    feeds = _feeds()
    engine = TorchEngine(StageLoader(model, "detail"))
    with pytest.raises(EngineError, match="not active"):
        engine.run(feeds)
    with engine:
        out = engine.run(feeds)
    assert not engine.is_active
    with torch.no_grad():
        expected = model.stages()["detail"].module(torch.from_numpy(feeds["image"]), torch.from_numpy(feeds["guidance"]))[0]
    np.testing.assert_array_equal(out["detail"], expected.numpy())
    assert out["detail"].dtype == np.float32


def test_feeds_are_checked_by_name_dtype_shape_and_batch(model):
    with TorchEngine(StageLoader(model, "detail")) as engine:
        feeds = _feeds()
        with pytest.raises(InputError, match="missing guidance"):
            engine.run({"image": feeds["image"]})
        with pytest.raises(InputError, match="unexpected extra"):
            engine.run({**feeds, "extra": feeds["image"]})
        with pytest.raises(InputError, match="must be float32, got float64"):
            engine.run({**feeds, "image": feeds["image"].astype(np.float64)})
        with pytest.raises(InputError, match="must have shape"):
            engine.run({**feeds, "image": feeds["image"][:, :2]})
        with pytest.raises(InputError, match="different batch sizes"):
            engine.run({**feeds, "image": feeds["image"][:1]})
        with pytest.raises(InputError, match="one spatial size"):
            engine.run({"image": feeds["image"], "guidance": _feeds(2, 32)["guidance"]})
        # torch runs other sizes (used by the whole-image reference)
        assert engine.run(_feeds(1, 96))["detail"].shape == (1, 1, 96, 96)


def test_fp16_and_channels_last_leave_the_model_untouched(model):
    feeds = _feeds(1)
    with TorchEngine(StageLoader(model, "detail")) as reference:
        expected = reference.run(feeds)["detail"]
    with TorchEngine(StageLoader(model, "detail"), channels_last=True) as engine:
        np.testing.assert_allclose(engine.run(feeds)["detail"], expected, rtol=1e-4, atol=1e-4)
    with TorchEngine(StageLoader(model, "detail"), precision="fp16") as engine:
        half = engine.run(feeds)["detail"]
    assert half.dtype == np.float32
    # fp16 rounding flips some max-pool choices, and unpooling then moves values: a few percent
    # relative L2 on this 18-layer network with random weights (garbage would be ~100 %).
    assert np.linalg.norm(half - expected) <= 0.15 * np.linalg.norm(expected)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_unavailable_devices_and_precisions_are_errors_not_fallbacks(model):
    with pytest.raises(InputError, match="int8 runs from an explicit Q/DQ ONNX graph"):
        TorchEngine(StageLoader(model, "detail"), precision="int8")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        TorchEngine(StageLoader(model, "detail"), device="tpu")
    if available("torch_cuda"):
        pytest.skip("this machine has CUDA: the missing-device error cannot be shown")
    with pytest.raises(MissingDependencyError, match="needs torch_cuda"):
        TorchEngine(StageLoader(model, "detail"), device="cuda")


def test_stage_loader_names_the_stages_it_has(model):
    with pytest.raises(InputError, match="has no stage 'trimap'; it has: semantic, detail"):
        TorchEngine(StageLoader(model, "trimap"))


def test_a_registered_name_is_built_lazily_with_its_checkpoint(tmp_path, model):
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    spec, engines = load_model_engines("shm_tiny", checkpoint=str(path))
    assert isinstance(spec, ModelSpec) and spec.trained and list(engines) == ["semantic", "detail"]
    feeds = _feeds(1)
    with engines["detail"] as engine, TorchEngine(StageLoader(model, "detail")) as reference:
        np.testing.assert_array_equal(engine.run(feeds)["detail"], reference.run(feeds)["detail"])


def test_spec_from_settings_carries_what_the_pipeline_needs(model):
    spec = ModelSpec.from_settings(model.settings)
    assert (spec.channel_order, spec.fusion, spec.guidance, spec.stride_multiple) == ("BGR", "unknown_blend", "trimap", 16)
    assert not spec.trained and spec.checkpoint_sha256 is None


def test_run_in_chunks_splits_batches_over_the_maximum(model):
    engine = TorchEngine(StageLoader(model, "detail"))
    engine.max_batch = 2
    feeds = _feeds(5)
    with engine:
        with pytest.raises(InputError, match="exceeds its maximum 2"):
            engine.run(feeds)
        chunked = run_in_chunks(engine, feeds)["detail"]
        engine.max_batch = None
        whole = engine.run(feeds)["detail"]
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-4)
