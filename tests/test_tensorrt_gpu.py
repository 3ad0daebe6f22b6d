"""The tensorrt backend end to end on a machine with TensorRT's builder and a CUDA device: plans
built from a tiny AIM export (FP32, FP16 graph, INT8 Q/DQ graph) agree with onnxruntime running
the same graphs, CUDA-graph replay gives the plain run's outputs, the device pipeline gives the
host pipeline's alpha, up-to-date plans are reused and changed ones rebuilt, and plans that do
not match this runtime are refused. Also the review's fixes (issue 22): a CUDA-graph capture that
fails falls back to plain runs once; feeds at unaligned addresses and short batches of a
fixed-batch plan are copied and padded; a graph with a fixed batch and a profile TensorRT refuses
are BuildErrors; on a Jetson AGX Orin with DLA, the DLA plan's placement and core; with a
tritonserver that has the TensorRT backend, the GPU repository served. Skipped (by the runtime's
own probes) elsewhere: nothing here has run yet."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mattrt.availability import available, skip_reason, tritonserver_binary
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


# -- the review's fixes (issue 22) ----------------------------------------------------------------
def test_a_failed_graph_capture_falls_back_to_plain_runs_logged_once(plans_dir, capsys):
    import cupy

    from mattrt.engines.tensorrt.engine import open_plans

    _, plain = open_plans(plans_dir, precision="fp16", cuda_graphs=False)
    _, graphs = open_plans(plans_dir, precision="fp16", cuda_graphs=True)
    with plain["detail"] as a, graphs["detail"] as b:
        context = b._context

        class SynchronizeWhileCapturing:
            """The real context; a stream synchronize during capture invalidates the capture (CUDA)."""

            def __getattr__(self, name):
                return getattr(context, name)

            def execute_async_v3(self, stream):
                if b._stream.is_capturing():
                    try:
                        b._stream.synchronize()
                    except cupy.cuda.runtime.CUDARuntimeError:
                        pass  # the capture is invalidated now
                return context.execute_async_v3(stream)

        b._context = SynchronizeWhileCapturing()
        for seed in (0, 1):
            feeds = {k: cupy.asarray(v) for k, v in _feeds(a, 3, seed=seed).items()}
            want = {k: cupy.asnumpy(v) for k, v in a.run_device(feeds).items()}
            got = {k: cupy.asnumpy(v) for k, v in b.run_device(feeds).items()}
            for name in want:
                np.testing.assert_array_equal(got[name], want[name])
        assert 3 not in b._graphs and 3 in b._graphless
        assert capsys.readouterr().err.count("no CUDA graph at batch 3") == 1


def test_unaligned_device_feeds_are_copied_not_refused(plans_dir):
    import cupy

    from mattrt.engines.tensorrt.engine import TENSOR_ALIGNMENT, open_plans

    _, engines = open_plans(plans_dir, precision="fp32", cuda_graphs=False)
    with engines["detail"] as engine:
        feeds = _feeds(engine, 3)
        shifted = {}
        for name, array in feeds.items():
            view = cupy.empty(array.size + 1, dtype=array.dtype)[1:].reshape(array.shape)  # 4 bytes off
            view[...] = cupy.asarray(array)
            assert view.data.ptr % TENSOR_ALIGNMENT
            shifted[name] = view
        want = engine.run(feeds)
        got = {k: cupy.asnumpy(v) for k, v in engine.run_device(shifted).items()}
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_a_fixed_batch_engine_pads_short_batches(plans_dir):
    import cupy

    from mattrt.engines.tensorrt.engine import TrtEngine, open_plans

    _, engines = open_plans(plans_dir, precision="fp32", cuda_graphs=False)
    plain = engines["detail"]
    fixed = TrtEngine(plain.plan, name="detail", precision="fp32", inputs=plain.inputs, outputs=plain.outputs,
                      max_batch=plain.max_batch, plan_sha256=plain.plan_sha256, fixed_batch=True)
    with plain, fixed:
        for batch in (1, 3):
            feeds = _feeds(plain, batch, seed=batch)
            want = plain.run(feeds)
            got = fixed.run(feeds)
            on_device = fixed.run_device({k: cupy.asarray(v) for k, v in feeds.items()})
            got_device = {k: cupy.asnumpy(v) for k, v in on_device.items()}
            for name in want:
                assert got[name].shape == want[name].shape == got_device[name].shape
                np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)  # batch-4 kernels
                np.testing.assert_array_equal(got_device[name], got[name])


def test_a_graph_with_a_fixed_batch_is_a_build_error_naming_the_input(export_dir, tmp_path):
    import onnx

    from mattrt.engines.tensorrt.build import BuildError, build_plans

    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    entry = Manifest.load(copy).stages[0]
    graph = copy / entry.file_for("fp32", "tensorrt")
    model = onnx.load(str(graph))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1
    onnx.save(model, str(graph))
    with pytest.raises(BuildError, match=rf"input '{model.graph.input[0].name}' has shape \[1, .*batch dimension is "
                                         r"fixed at 1, but the plan's optimization profile needs 1\.\.4"):
        build_plans(copy, tmp_path / "plans", precision="fp32", log=lambda message: None)


def test_a_profile_tensorrt_refuses_is_a_build_error(export_dir):
    import tensorrt as trt

    from mattrt.engines.tensorrt.build import BuildError, add_profile, capturing_logger, parse_graph

    entry = Manifest.load(export_dir).stages[0]
    graph = export_dir / entry.file_for("fp32", "tensorrt")
    logger = capturing_logger(trt)
    builder, network, _parser = parse_graph(graph, logger)
    shapes = {t.name: [list(t.concrete_shape(b)) for b in (4, 1, 4)] for t in entry.inputs}  # min > opt
    with pytest.raises(BuildError, match="TensorRT refused the profile"):
        add_profile(builder, builder.create_builder_config(), network, shapes, graph, logger)


def test_a_dla_plan_records_where_its_layers_run_and_runs_on_its_core(tmp_path):
    import tensorrt as trt

    from mattrt.calibration import add_precisions
    from mattrt.engines.tensorrt.build import build_plans, capturing_logger, gpu_identity
    from mattrt.engines.tensorrt.engine import open_plans
    from mattrt.export import export_model

    if gpu_identity().compute_capability != (8, 7) or trt.Builder(capturing_logger(trt)).num_DLA_cores < 1:
        pytest.skip("needs a Jetson AGX Orin with DLA cores (TensorRT >= 11.4.1, JetPack >= 7.2.2)")
    export = tmp_path / "aim_tiny"
    export_model("aim_tiny", export, tile_size=512, max_batch=4, log=None)
    add_precisions(export, ["fp16"], calibration="synthetic:2", batch=2, synthetic_size=(512, 512), log=None)
    metadata = build_plans(export, tmp_path / "plans", precision="fp16", profile="jetson-orin-dla",
                           log=lambda message: None)
    detail = metadata["stages"]["detail"]
    assert detail["dla"]["core"] == 0 and detail["dla"]["dla_subgraphs"]  # the inspector's reading holds
    assert detail["min_batch"] == detail["opt_batch"] == detail["max_batch"] == 2
    _, engines = open_plans(tmp_path / "plans", precision="fp16")
    with engines["detail"] as engine:
        assert engine._runtime.DLA_core == 0 and engine.fixed_batch
        outputs = engine.run(_feeds(engine, 1))  # padded to 2
        assert all(v.shape[0] == 1 and np.isfinite(v).all() for v in outputs.values())


def test_a_gpu_repository_serves_through_tritons_tensorrt_backend(export_dir, plans_dir, tmp_path):
    from pathlib import Path

    from mattrt.engines.triton.client import TritonMattingClient
    from mattrt.export.parity import generated_image
    from mattrt.runtime.pipeline import Pipeline
    from mattrt.serving.gpu_repository import GPU_PINNED_MEMORY_BYTES
    from mattrt.serving.repository import RepositoryOptions, build_repository
    from mattrt.serving.server import ServerOptions, TritonServer

    binary = tritonserver_binary()
    if binary is None or not (binary.parent.parent / "backends" / "tensorrt" / "libtriton_tensorrt.so").is_file():
        pytest.skip("needs a tritonserver with the TensorRT backend (NVIDIA's Triton container)")
    repo = build_repository(export_dir, tmp_path / "repo", RepositoryOptions(target="gpu", plans=plans_dir,
                                                                             name="aim"), log=None)
    rgb = generated_image(200, 0)[:150, :190]
    with TritonServer(repo, ServerOptions(key="k" * 20, ready_timeout=600)) as server:
        command = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().split(b"\0")
        assert f"--pinned-memory-pool-byte-size={GPU_PINNED_MEMORY_BYTES}".encode() in command
        with TritonMattingClient(server.endpoints["http"]) as remote:
            matte = remote.matte(rgb)
    with Pipeline.open("tensorrt", plans_dir, device="cuda", precision="fp32") as pipeline:
        expected = np.rint(pipeline.run(rgb).alpha * 255).astype(np.uint8)
    assert np.abs(matte[..., 0].astype(int) - expected).max() <= 1
