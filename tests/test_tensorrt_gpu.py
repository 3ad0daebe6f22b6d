"""The tensorrt backend end to end on a machine with TensorRT's builder and a CUDA device: plans
built from a tiny AIM export (FP32, FP16 graph, INT8 Q/DQ graph) agree with onnxruntime running
the same graphs, CUDA-graph replay gives the plain run's outputs, the device pipeline gives the
host pipeline's alpha, up-to-date plans are reused and changed ones rebuilt, and plans that do
not match this runtime are refused. Skipped (by the runtime's own probes) elsewhere: nothing
here has run yet."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mattrt.availability import available, skip_reason
from mattrt.engines.backends import get_backend
from mattrt.manifest import Manifest

NEEDS = ("tensorrt", "cupy_device")
pytestmark = pytest.mark.skipif(
    not all(available(name) for name in NEEDS),
    reason="; ".join(skip_reason(name) for name in NEEDS if not available(name)),
)

# rel L2 of TensorRT against onnxruntime on the same graph (TF32 off: FP32 kernels differ only in
# summation order; FP16/INT8 kernels round differently from onnxruntime's CPU ones).
SAME_GRAPH_REL_L2 = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}


@pytest.fixture(scope="module")
def export_dir():
    from test_calibration import tiny_export_with_precisions

    return tiny_export_with_precisions()


@pytest.fixture(scope="module")
def plans_dir(export_dir, tmp_path_factory):
    from mattrt.engines.tensorrt.build import build_plans

    out = tmp_path_factory.mktemp("plans")
    for precision in ("fp32", "fp16", "int8"):
        build_plans(export_dir, out, precision=precision, log=lambda message: None)
    return out


def _feeds(engine, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {meta.name: rng.standard_normal((batch, *meta.shape[1:])).astype(np.float32) if meta.name == "image"
            else rng.random((batch, *meta.shape[1:])).astype(np.float32) for meta in engine.inputs}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_plans_agree_with_onnxruntime_on_the_same_graph(export_dir, plans_dir, precision):
    import onnxruntime as ort

    from mattrt.engines.tensorrt.engine import open_plans

    manifest = Manifest.load(export_dir)
    _, engines = open_plans(plans_dir, precision=precision, cuda_graphs=False)
    for entry in manifest.stages:
        session = ort.InferenceSession(str(export_dir / entry.file_for(precision, "tensorrt")),
                                       providers=["CPUExecutionProvider"])
        with engines[entry.name] as engine:
            for batch in (1, engine.max_batch):
                feeds = _feeds(engine, batch)
                got = engine.run(feeds)
                want = dict(zip(engine.output_names, session.run(engine.output_names, feeds)))
                for name in engine.output_names:
                    rel = np.linalg.norm(got[name] - want[name]) / np.linalg.norm(want[name])
                    assert rel <= SAME_GRAPH_REL_L2[precision], (entry.name, name, batch, rel)


def test_cuda_graph_replay_gives_the_plain_runs_outputs(plans_dir):
    import cupy

    from mattrt.engines.tensorrt.engine import open_plans

    _, plain = open_plans(plans_dir, precision="fp16", cuda_graphs=False)
    _, graphs = open_plans(plans_dir, precision="fp16", cuda_graphs=True)
    with plain["detail"] as a, graphs["detail"] as b:
        for batch in (3, 1, 3, a.max_batch, 3):  # captures, replays and a batch size seen before
            feeds = {k: cupy.asarray(v) for k, v in _feeds(a, batch, seed=batch).items()}
            want = {k: cupy.asnumpy(v) for k, v in a.run_device(feeds).items()}
            got = {k: cupy.asnumpy(v) for k, v in b.run_device(feeds).items()}
            for name in want:
                np.testing.assert_array_equal(got[name], want[name])
        assert sorted(b._graphs) == [1, 3, a.max_batch]


def test_the_device_pipeline_matches_the_host_pipeline(plans_dir):
    from mattrt.export.parity import generated_image
    from mattrt.runtime.pipeline import Pipeline

    image = generated_image(200, 0)[:150, :190]
    alphas = {}
    for pixel_ops in ("host", "device"):
        spec, engines = get_backend("tensorrt").open(plans_dir, device="cuda", precision="fp32")
        with Pipeline(spec, engines, batch=4, pixel_ops=pixel_ops) as pipeline:
            assert pipeline.pixel_ops.name == pixel_ops
            alphas[pixel_ops] = pipeline.run(image).alpha
    np.testing.assert_allclose(alphas["device"], alphas["host"], atol=1e-6)


def test_up_to_date_plans_are_reused_and_changed_ones_rebuilt(export_dir, plans_dir):
    from mattrt.engines.tensorrt.build import build_plans

    logged: list[str] = []
    build_plans(export_dir, plans_dir, precision="fp32", log=logged.append)
    assert logged and all("plan up to date" in line for line in logged)
    logged.clear()
    build_plans(export_dir, plans_dir, precision="fp32", workspace_mb=2048, log=logged.append)
    assert any("rebuilding" in line and "builder options changed" in line for line in logged)
    build_plans(export_dir, plans_dir, precision="fp32", log=lambda message: None)  # back to the fixture's


def test_plans_for_another_tensorrt_version_or_changed_plans_are_refused(plans_dir, tmp_path):
    import shutil

    from mattrt.engines.tensorrt.engine import PlanError, open_plans

    copy = tmp_path / "plans"
    shutil.copytree(plans_dir, copy)
    path = copy / "tensorrt-fp32.json"
    metadata = json.loads(path.read_text())
    metadata["tensorrt"] = "9.0.0.1"
    path.write_text(json.dumps(metadata))
    with pytest.raises(PlanError, match="built by TensorRT 9.0.0.1"):
        open_plans(copy, precision="fp32")
    shutil.copy(plans_dir / "tensorrt-fp32.json", path)
    plan = copy / metadata["stages"]["detail"]["plan"]
    plan.write_bytes(plan.read_bytes()[:-16])
    _, engines = open_plans(copy, precision="fp32")
    with pytest.raises(PlanError, match="differs from the one its metadata records"):
        engines["detail"].activate()
