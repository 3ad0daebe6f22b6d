"""The tensorrt backend without a TensorRT builder or GPU: profiles and their mapping from the
manifest, cache keys and invalidation, plan metadata, timing-cache bookkeeping, whether plans
can run on a given runtime and GPU, DLA decisions, CUDA-graph capture bookkeeping, and the clear
errors (no TensorRT, no GPU, wrong plans, parser errors, profiles a graph cannot take). Small
fakes stand in for TensorRT's and CuPy's objects only where our own bookkeeping is tested: they
are no evidence that TensorRT behaves so (tests/test_tensorrt_gpu.py and benchmarks/trt_parity.py
run the real thing)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from mattrt.availability import available, probe
from mattrt.cli import main
from mattrt.deploy.choice import choose_auto
from mattrt.engines import backends
from mattrt.engines.tensorrt.build import (
    PROFILES,
    BuildError,
    BuildOptions,
    GpuIdentity,
    build_failure_message,
    check_dla_support,
    check_request,
    dla_placement,
    format_parser_errors,
    optimum_batch,
    profile_mismatch,
    profile_shapes,
)
from mattrt.engines.tensorrt.engine import (
    BACKEND,
    PlanError,
    TrtEngine,
    check_runnable,
    open_plans,
    version_refusal,
)
from mattrt.engines.tensorrt.plan_files import (
    METADATA_FORMAT,
    metadata_path,
    plan_key,
    prepare_out_dir,
    read_metadata,
    read_timing_cache,
    stale_reasons,
    write_json,
    write_timing_cache,
)
from mattrt.errors import InputError, MissingDependencyError
from mattrt.manifest import GraphEntry, Manifest, TensorInfo

H200 = GpuIdentity("NVIDIA H200", (9, 0))
H100 = GpuIdentity("NVIDIA H100 80GB HBM3", (9, 0))
ORIN = GpuIdentity("Orin", (8, 7))
T4 = GpuIdentity("Tesla T4", (7, 5))
A100 = GpuIdentity("NVIDIA A100-SXM4-80GB", (8, 0))
CAN_BUILD = available("tensorrt") and available("cupy_device")


def tensor(name: str, channels: int, size: int) -> TensorInfo:
    return TensorInfo(name, ["batch", channels, size, size], "float32")


def manifest(tile: int = 512, max_batch: int = 8, precisions=("fp32", "fp16")) -> Manifest:
    """The manifest of a two-stage export (semantic canvas 320, detail tiles `tile`)."""
    def entry(name, inputs, outputs, size):
        return GraphEntry(name, inputs, outputs, size, {p: f"{name}.{p}.onnx" for p in precisions})

    return Manifest(
        model="aim_synthetic", settings={}, fusion="aim", stride_multiple=32, semantic_size=320,
        stages=[entry("semantic", [tensor("image", 3, 320)], [tensor("trimap", 3, 320)], 320),
                entry("detail", [tensor("image", 3, tile), tensor("guidance", 3, tile)], [tensor("detail", 1, tile)],
                      tile)],
        fusion_graph=None, normalization={"channel_order": "RGB", "mean": [0.5] * 3, "std": [0.5] * 3,
                                          "input_range": [0.0, 1.0]},
        guidance={"kind": "trimap", "channels": 3}, tile_size=tile, tile_overlap=64, max_batch=max_batch, opset=18,
        checkpoint_sha256="untrained", versions={}, created="2026-12-02T00:00:00Z",
    )


# -- profiles and the mapping from the manifest ------------------------------------------------
def test_profiles_are_the_documented_targets():
    server, jetson, dla = PROFILES["server"], PROFILES["jetson-orin"], PROFILES["jetson-orin-dla"]
    assert (server.optimization_level, server.cuda_graphs, server.tile_batch, server.dla) == (5, True, 8, False)
    assert (jetson.compute_capability, jetson.tile_size, jetson.dla, jetson.workspace_mb) == ((8, 7), 512, False, 1024)
    assert jetson.tile_batch < server.tile_batch and not jetson.allows_hardware_compatible
    # the DLA target is the Orin target with layers on DLA, nothing else changed
    assert replace(dla, name=jetson.name, summary=jetson.summary, dla=False) == jetson
    with pytest.raises(Exception):  # frozen
        server.tile_batch = 4


def test_optimization_profile_spans_the_batch_range_at_the_fixed_shape():
    export = manifest(tile=512, max_batch=8)
    semantic, detail = export.stages
    server = profile_shapes(detail, export, PROFILES["server"])
    assert server == {"image": [[1, 3, 512, 512], [8, 3, 512, 512], [8, 3, 512, 512]],
                      "guidance": [[1, 3, 512, 512], [8, 3, 512, 512], [8, 3, 512, 512]]}
    assert profile_shapes(semantic, export, PROFILES["server"])["image"] == [[1, 3, 320, 320], [1, 3, 320, 320],
                                                                            [8, 3, 320, 320]]
    assert optimum_batch(detail, export, PROFILES["jetson-orin"]) == 2
    assert optimum_batch(detail, manifest(max_batch=4), PROFILES["server"]) == 4  # never above max_batch


def test_dla_profiles_fix_every_batch_at_the_optimum():
    # DLA runs no dynamic dimensions: min = opt = max (TensorRT's DLA restrictions)
    export = manifest(tile=512, max_batch=8)
    semantic, detail = export.stages
    dla = PROFILES["jetson-orin-dla"]
    assert profile_shapes(detail, export, dla)["image"] == [[2, 3, 512, 512]] * 3
    assert profile_shapes(semantic, export, dla)["image"] == [[1, 3, 320, 320]] * 3
    assert profile_shapes(detail, manifest(tile=512, max_batch=1), dla)["guidance"] == [[1, 3, 512, 512]] * 3


def test_a_graph_input_that_cannot_take_the_profile_is_named_with_both_shapes():
    shapes = [[1, 3, 512, 512], [8, 3, 512, 512], [8, 3, 512, 512]]
    assert profile_mismatch("image", (-1, 3, 512, 512), shapes) is None
    assert profile_mismatch("image", (-1, -1, -1, -1), shapes) is None
    fixed = profile_mismatch("image", (1, 3, 512, 512), shapes)
    assert "input 'image' has shape [1, 3, 512, 512] in the graph" in fixed
    assert "batch dimension is fixed at 1" in fixed and "needs 1..8 (opt 8)" in fixed and "dynamic batch" in fixed
    assert "dimension 2 is fixed at 256" in profile_mismatch("image", (-1, 3, 256, 512), shapes)
    assert "has 3 dimensions" in profile_mismatch("image", (-1, 3, 512), shapes)
    assert profile_mismatch("image", (2, 3, 512, 512), [[2, 3, 512, 512]] * 3) is None  # a DLA profile


def test_build_options_are_checked():
    assert BuildOptions(profile="jetson-orin").workspace == 1024
    assert BuildOptions(profile="jetson-orin", workspace_mb=512).workspace == 512
    assert BuildOptions().workspace is None  # server: TensorRT's default
    for bad in (dict(precision="bf16"), dict(profile="laptop"), dict(workspace_mb=0), dict(workspace_mb=True)):
        with pytest.raises(InputError):
            BuildOptions(**bad)


def test_requests_that_cannot_work_are_refused_with_what_to_do():
    assert check_request(manifest(), BuildOptions(), H200).name == "server"
    assert check_request(manifest(tile=512), BuildOptions(profile="jetson-orin", precision="fp32"), ORIN).tile_size == 512
    with pytest.raises(InputError, match="--tile 512"):
        check_request(manifest(tile=1024), BuildOptions(profile="jetson-orin"), ORIN)
    with pytest.raises(InputError, match=r"sm_87.*NVIDIA H200 \(sm_90\)"):
        check_request(manifest(), BuildOptions(profile="jetson-orin"), H200)
    with pytest.raises(InputError, match="not supported on the jetson-orin"):
        check_request(manifest(), BuildOptions(profile="jetson-orin", hardware_compatible=True), ORIN)
    with pytest.raises(InputError, match="Ampere-or-newer"):
        check_request(manifest(), BuildOptions(hardware_compatible=True), T4)
    with pytest.raises(InputError, match="no int8 graph for stage.*mattrt precision"):
        check_request(manifest(), BuildOptions(precision="int8"), H200)


def test_dla_is_refused_where_it_cannot_run_strongly_typed_networks_never_quietly_replaced():
    assert check_request(manifest(), BuildOptions(profile="jetson-orin-dla", precision="fp16"), ORIN).dla
    with pytest.raises(InputError, match="FP16/INT8 only.*--precision fp16 or int8.*--profile jetson-orin"):
        check_request(manifest(), BuildOptions(profile="jetson-orin-dla"), ORIN)
    check_dla_support("11.4.1.2", 2)
    check_dla_support("11.5.0", 1)
    for version in ("10.3.0", "10.7.0.23", "11.2.0", "11.4.0.106"):  # 10.x: weak typing only; 11.0-11.4.0: no DLA
        with pytest.raises(BuildError, match=rf"TensorRT {version} cannot place strongly typed networks on DLA.*"
                                             r">= 11\.4\.1.*--profile jetson-orin"):
            check_dla_support(version, 2)
    with pytest.raises(BuildError, match="11.4.1 reports 0 DLA core.*--profile jetson-orin"):
        check_dla_support("11.4.1", 0)


def test_the_dla_placement_is_read_from_the_engine_inspectors_layers():
    # Our reading of the inspector's JSON (the format as TensorRT's layer profiles show DLA
    # subgraphs, TensorRT#3143); a real DLA plan checks it in tests/test_tensorrt_gpu.py.
    information = json.dumps({"Layers": [
        {"Name": "image to nvm", "LayerType": "Reformat"},
        {"Name": "{ForeignNode[/enc/conv1/Conv.../enc/relu4/Relu]}", "LayerType": "DLA"},
        {"Name": "image from nvm", "LayerType": "Reformat"},
        {"Name": "{ForeignNode[/dec/MatMul.../dec/Softmax]}", "LayerType": "Myelin"},
        {"Name": "/dec/Resize", "LayerType": "Resize"},
    ], "Bindings": ["image", "detail"]})
    assert dla_placement(information) == {"core": 0, "dla_subgraphs": ["{ForeignNode[/enc/conv1/Conv.../enc/relu4/Relu]}"],
                                          "other_layers": 4}
    assert dla_placement(json.dumps({"Layers": [{"Name": "conv", "LayerType": "CaskConvolution"}]}))["dla_subgraphs"] == []


# -- cache keys ---------------------------------------------------------------------------------
def key(**changes):
    parts = dict(graph="a" * 64, version="11.4.1.5", gpu=H200, profile=PROFILES["server"], options=BuildOptions(),
                 shapes={"image": [[1, 3, 512, 512]] * 3})
    parts.update(changes)
    return plan_key(parts["graph"], parts["version"], parts["gpu"], parts["profile"], parts["options"], parts["shapes"])


def test_a_plan_is_reused_only_when_every_key_part_is_equal():
    assert stale_reasons(key(), key()) == []
    assert stale_reasons(None, key()) == ["no plan yet"]
    assert stale_reasons(key(graph="b" * 64), key()) == ["the graph changed"]
    assert stale_reasons(key(version="10.16.1.11"), key()) == ["TensorRT 10.16.1.11 -> 11.4.1.5"]
    assert stale_reasons(key(gpu=H100), key()) == ["GPU NVIDIA H100 80GB HBM3 -> NVIDIA H200"]
    assert stale_reasons(key(gpu=A100), key()) == ["GPU NVIDIA A100-SXM4-80GB -> NVIDIA H200",
                                                   "compute capability 8.0 -> 9.0"]
    assert stale_reasons(key(options=BuildOptions(version_compatible=True)), key()) == ["builder options changed"]
    assert stale_reasons(key(options=BuildOptions(workspace_mb=2048)), key()) == ["builder options changed"]
    changed = replace(PROFILES["server"], optimization_level=3)
    assert stale_reasons(key(profile=changed), key()) == ["profile settings changed"]
    assert stale_reasons(key(shapes={"image": [[1, 3, 512, 512]] * 2}), key()) == [
        "optimization-profile shapes changed"]


def test_the_workspace_in_the_key_is_the_one_the_build_uses():
    # --workspace 1024 with jetson-orin is the profile's own limit: the same plan
    jetson = PROFILES["jetson-orin"]
    assert key(profile=jetson, options=BuildOptions(profile="jetson-orin")) == key(
        profile=jetson, options=BuildOptions(profile="jetson-orin", workspace_mb=1024))


# -- metadata and the plans directory ------------------------------------------------------------
def test_metadata_round_trips_and_bad_files_say_what_to_do(tmp_path):
    data = {"format": METADATA_FORMAT, "precision": "fp16", "stages": {"detail": {"plan": "detail-fp16.plan", "key": key()}}}
    write_json(metadata_path(tmp_path, "fp16"), data)
    assert read_metadata(tmp_path, "fp16") == data
    assert read_metadata(tmp_path, "int8") is None
    metadata_path(tmp_path, "fp32").write_text("{not json")
    with pytest.raises(InputError, match="delete it to rebuild the fp32 plans"):
        read_metadata(tmp_path, "fp32")
    metadata_path(tmp_path, "fp32").write_text(json.dumps({"format": 99, "stages": {}}))
    with pytest.raises(InputError, match="not a mattrt plan metadata file"):
        read_metadata(tmp_path, "fp32")


def test_the_plans_directory_is_never_taken_from_something_else(tmp_path):
    logged = []
    out = tmp_path / "plans"
    prepare_out_dir(out, manifest(), logged.append)
    assert Manifest.load(out).to_dict() == manifest().to_dict()  # the directory opens alone
    prepare_out_dir(out, manifest(), logged.append)  # an earlier build of the same export
    assert logged == []
    prepare_out_dir(out, manifest(max_batch=4), logged.append)
    assert "manifest changed" in logged[0] and Manifest.load(out).max_batch == 4
    other = replace(manifest(), model="shm_tiny")
    with pytest.raises(InputError, match="holds plans of model 'aim_synthetic'"):
        prepare_out_dir(out, other, logged.append)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(InputError, match="not empty and holds no mattrt plans"):
        prepare_out_dir(foreign, manifest(), logged.append)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]


def test_a_timing_cache_from_another_tensorrt_or_gpu_starts_afresh(tmp_path):
    path = tmp_path / "timing.cache"
    assert read_timing_cache(path, "11.4.1.5", H200) == (b"", None)
    write_timing_cache(path, b"cache bytes", "11.4.1.5", H200)
    assert read_timing_cache(path, "11.4.1.5", H200) == (b"cache bytes", None)
    seed, note = read_timing_cache(path, "11.5.0.1", H200)
    assert seed == b"" and "written by TensorRT 11.4.1.5, this is 11.5.0.1" in note
    seed, note = read_timing_cache(path, "11.4.1.5", H100)
    assert seed == b"" and "written on NVIDIA H200" in note
    path.with_name("timing.cache.json").write_text("{broken")
    seed, note = read_timing_cache(path, "11.4.1.5", H200)
    assert seed == b"" and "unreadable timing.cache.json" in note
    (tmp_path / "trtexec.cache").write_bytes(b"from trtexec")  # no sidecar: TensorRT itself judges it
    assert read_timing_cache(tmp_path / "trtexec.cache", "11.4.1.5", H200) == (b"from trtexec", None)


# -- TensorRT's messages --------------------------------------------------------------------------
class FakeParserError:
    """Stands in for tensorrt.IParserError (no ONNX parser here) in a test of our formatting."""

    def __init__(self, node, name, operator, code, desc):
        self._values = node, name, operator, SimpleNamespace(name=code), desc

    def node(self):
        return self._values[0]

    def node_name(self):
        return self._values[1]

    def node_operator(self):
        return self._values[2]

    def code(self):
        return self._values[3]

    def desc(self):
        return self._values[4]


def test_parser_errors_name_nodes_and_operators(tmp_path):
    errors = [FakeParserError(41, "/decoder/MaxUnpool_2", "MaxUnpool", "UNSUPPORTED_NODE", "No importer registered"),
              FakeParserError(-1, "", "", "INVALID_GRAPH", "graph has no outputs")]
    parser = SimpleNamespace(num_errors=2, get_error=errors.__getitem__)
    text = format_parser_errors(parser, tmp_path / "exports" / "detail.fp32.onnx")
    assert "rejected detail.fp32.onnx (2 error(s))" in text
    assert "node 41 '/decoder/MaxUnpool_2' (MaxUnpool): [UNSUPPORTED_NODE] No importer registered" in text
    assert "graph: [INVALID_GRAPH] graph has no outputs" in text
    assert f"mattrt lint {tmp_path / 'exports'}" in text


def test_a_failed_build_shows_the_last_errors_and_what_to_do():
    logger = SimpleNamespace(messages=[(False, "some warning"),
                                       (True, "Error Code 2: OutOfMemory (workspace too small)")])
    message = build_failure_message("detail", logger, 1024)
    assert "OutOfMemory (workspace too small)" in message and "raise --workspace" in message and "1024 MiB" in message
    assert "TensorRT logged no error" in build_failure_message("detail", SimpleNamespace(messages=[]), None)


# -- can plans run here? ------------------------------------------------------------------------
def built(**changes):
    data = {"tensorrt": "11.4.1.5", "gpu": "NVIDIA H200", "compute_capability": "9.0",
            "options": {"version_compatible": False, "hardware_compatible": False}}
    options = changes.pop("options", {})
    data.update(changes)
    data["options"] = {**data["options"], **options}
    return data


def test_plans_run_only_on_the_tensorrt_and_gpu_they_were_built_for():
    assert check_runnable(built(), "11.4.1.5", "tensorrt", H200, "REBUILD") == []
    with pytest.raises(PlanError, match=r"built by TensorRT 11.4.1.5 \(not version compatible\), this is TensorRT "
                                        r"11.5.0.2: rebuild them with TensorRT 11.5.0.2: `REBUILD` \(add --version-comp"):
        check_runnable(built(), "11.5.0.2", "tensorrt", H200, "REBUILD")
    with pytest.raises(PlanError, match=r"built for NVIDIA H200 \(sm_90\); this GPU is Orin \(sm_87\)"):
        check_runnable(built(), "11.4.1.5", "tensorrt", ORIN, "REBUILD")
    notes = check_runnable(built(), "11.4.1.5", "tensorrt", H100, "REBUILD")
    assert len(notes) == 1 and "same compute capability" in notes[0]


def test_compatible_plans_run_where_tensorrt_says_they_can():
    # TensorRT 11.4.1 Support Matrix, "Engine Portability": later versions of the same major, and
    # across majors only 10 -> 11 and 8 -> 10
    compatible = built(options={"version_compatible": True})
    assert check_runnable(compatible, "11.6.0.1", "tensorrt", H200, "R") == []
    with pytest.raises(PlanError, match="run on that or later versions, not on 11.3.0.1"):
        check_runnable(compatible, "11.3.0.1", "tensorrt", H200, "R")
    with pytest.raises(PlanError, match="do not run on TensorRT 12.0.0.1: across major versions TensorRT supports only "
                                        "8 -> 10, 10 -> 11"):
        check_runnable(compatible, "12.0.0.1", "tensorrt", H200, "R")
    assert check_runnable(built(tensorrt="10.16.1.11", options={"version_compatible": True}), "11.4.1.5", "tensorrt",
                          H200, "R") == []
    assert version_refusal("8.6.1.6", "10.3.0", version_compatible=True) is None
    assert "do not run on TensorRT 11.4.1" in version_refusal("8.6.1.6", "11.4.1", version_compatible=True)
    assert "not on 10.16.1" in version_refusal("11.4.1.5", "10.16.1", version_compatible=True)
    # a version known in part (the server's libnvinfer.so.11) compares on the parts it names
    assert version_refusal("11.4.1.5", "11", version_compatible=False) is None
    assert version_refusal("10.16.1.11", "11", version_compatible=False) is not None
    hardware = built(options={"hardware_compatible": True})
    assert check_runnable(hardware, "11.4.1.5", "tensorrt", A100, "R") == []
    with pytest.raises(PlanError, match="Ampere or newer"):
        check_runnable(hardware, "11.4.1.5", "tensorrt", T4, "R")


def test_the_lean_runtime_needs_version_compatible_plans_of_its_own_version():
    # IRuntime::loadRuntime (NvInferRuntime.h): the lean runtime runs version-compatible plans built
    # by the same TensorRT version
    with pytest.raises(PlanError, match="lean runtime 11.4.1.5 runs version-compatible plans only.*"
                                        "`R --version-compatible`, or install the full TensorRT"):
        check_runnable(built(), "11.4.1.5", "tensorrt_lean_bindings", H200, "R")
    compatible = built(options={"version_compatible": True})
    assert check_runnable(compatible, "11.4.1.5", "tensorrt_lean", H200, "R") == []
    with pytest.raises(PlanError, match="lean runtime 11.6.0.1 runs version-compatible plans built by its own version; "
                                        "these were built by TensorRT 11.4.1.5: rebuild them with TensorRT 11.6.0.1"):
        check_runnable(compatible, "11.6.0.1", "tensorrt_lean", H200, "R")


# -- the engine's own bookkeeping (fakes stand in for TensorRT's context and CuPy's stream) -------
class FakeDeviceArray:
    def __init__(self, shape, pointer):
        self.shape, self.data = shape, SimpleNamespace(ptr=pointer)


class FakeContext:
    """An IExecutionContext stand-in that accepts every shape and address and counts runs."""

    def __init__(self, capture_enqueues=True):
        self.runs, self.capture_enqueues, self.capturing = 0, capture_enqueues, False

    def set_input_shape(self, name, shape):
        return True

    def set_tensor_address(self, name, pointer):
        return True

    def execute_async_v3(self, stream):
        self.runs += 1
        return self.capture_enqueues or not self.capturing


class FakeStream:
    """A CuPy stream stand-in whose capture ends as `end` says: a graph, or CuPy's CUDA error."""

    ptr = 7

    def __init__(self, context, end):
        self.context, self.end, self.captures = context, end, 0

    def begin_capture(self):
        self.captures += 1
        self.context.capturing = True

    def end_capture(self):
        self.context.capturing = False
        if isinstance(self.end, Exception):
            raise self.end
        return self.end


class FakeGraph:
    def __init__(self):
        self.launches = 0

    def launch(self, stream):
        self.launches += 1


def graph_engine(tmp_path, context, end) -> TrtEngine:
    meta = TensorInfo("image", ["batch", 3, 8, 8], "float32").meta()
    out = TensorInfo("detail", ["batch", 1, 8, 8], "float32").meta()
    engine = TrtEngine(tmp_path / "detail-fp16.plan", name="detail", precision="fp16", inputs=(meta,), outputs=(out,),
                       max_batch=4, cuda_graphs=True)
    engine._context, engine._stream, engine._logger = context, FakeStream(context, end), SimpleNamespace(messages=[])
    engine._buffers = {"image": FakeDeviceArray((4, 3, 8, 8), 512), "detail": FakeDeviceArray((4, 1, 8, 8), 1024)}
    return engine


def test_a_failed_graph_capture_is_logged_once_and_its_batch_runs_plain_from_then_on(tmp_path, capsys):
    context = FakeContext()
    invalidated = RuntimeError("cudaErrorStreamCaptureInvalidated: operation failed due to a previous error")
    engine = graph_engine(tmp_path, context, invalidated)
    feeds = {"image": FakeDeviceArray((3, 3, 8, 8), 512)}
    engine._execute(3, feeds)  # no exception: the plain run before the capture gave this call's outputs
    assert (context.runs, engine._stream.captures) == (2, 1)
    warning = capsys.readouterr().err
    assert "no CUDA graph at batch 3 (the capture was invalidated: cudaErrorStreamCaptureInvalidated" in warning
    assert "runs without a CUDA graph from now on" in warning
    engine._execute(3, feeds)
    assert (context.runs, engine._stream.captures) == (3, 1) and capsys.readouterr().err == ""  # once, not again
    graph = FakeGraph()
    engine._stream.end = graph  # another batch size still gets its graph
    engine._execute(2, {"image": FakeDeviceArray((2, 3, 8, 8), 512)})
    engine._execute(2, {"image": FakeDeviceArray((2, 3, 8, 8), 512)})
    assert (context.runs, graph.launches, sorted(engine._graphs), sorted(engine._graphless)) == (5, 1, [2], [3])


def test_a_capture_tensorrt_cannot_enqueue_is_recorded_with_its_message(tmp_path, capsys):
    context = FakeContext(capture_enqueues=False)
    engine = graph_engine(tmp_path, context, FakeGraph())
    engine._logger.messages.append((True, "Error Code 1: enqueue during capture"))
    engine._execute(1, {"image": FakeDeviceArray((1, 3, 8, 8), 512)})
    assert engine._graphs == {} and "enqueue during capture" in engine._graphless[1]
    assert "TensorRT could not enqueue while capturing" in capsys.readouterr().err


def test_a_dla_plan_gets_its_core_or_a_clear_refusal(tmp_path):
    meta = TensorInfo("image", ["batch", 3, 8, 8], "float32").meta()
    engine = TrtEngine(tmp_path / "detail-fp16.plan", name="detail", precision="fp16", inputs=(meta,), outputs=(meta,),
                       max_batch=2, fixed_batch=True, dla_core=0,
                       rebuild="mattrt build E --out P --precision fp16 --profile jetson-orin-dla")
    engine._runtime = SimpleNamespace(num_DLA_cores=2, DLA_core=-1)  # IRuntime's default core is -1
    engine._use_dla_core()
    assert engine._runtime.DLA_core == 0
    engine._runtime = SimpleNamespace(num_DLA_cores=0, DLA_core=-1)
    with pytest.raises(PlanError, match="DLA core 0; TensorRT reports 0 DLA core.*--profile jetson-orin`"):
        engine._use_dla_core()
    assert engine._run_batch(1) == 2 and engine._run_batch(2) == 2  # a fixed-batch plan always runs its batch
    engine.fixed_batch = False
    assert engine._run_batch(1) == 1


# -- the backend in the registry and the command --------------------------------------------------
def test_the_backend_is_registered_for_cuda_plans():
    assert backends.get_backend("tensorrt") is BACKEND
    assert BACKEND.artifacts == "plans" and BACKEND.devices == ("cuda",) and BACKEND.device_arrays
    assert BACKEND.needed_probes("cuda") == ("tensorrt_runtime", "cupy_device")
    assert BACKEND.prepare is not None
    with pytest.raises(InputError, match="runs on cuda, not 'cpu'"):
        BACKEND.check("cpu", "fp32")
    with pytest.raises(InputError, match="run on cuda, not 'cpu'"):
        BACKEND.prepare("EXPORT", "OUT", device="cpu", precision="fp32")


@pytest.mark.skipif(available("tensorrt_runtime") and available("cupy_device"), reason="this machine runs plans")
def test_without_tensorrt_or_a_gpu_the_backend_names_what_is_missing(tmp_path):
    missing = [name for name in ("tensorrt_runtime", "cupy_device") if not probe(name).found]
    with pytest.raises(MissingDependencyError) as caught:
        BACKEND.open(tmp_path, device="cuda", precision="fp32")
    assert all(name in str(caught.value) for name in missing)
    choice = None
    try:
        choice = choose_auto(precision="fp32", source_kinds=("onnx", "plans"))
    except MissingDependencyError as exc:
        assert "tensorrt on cuda: needs" in str(exc)
    if choice is not None:
        assert choice.backend.name != "tensorrt" and "tensorrt on cuda: needs" in choice.reason


def test_opening_plans_that_were_never_built_says_how_to_build_them(tmp_path):
    manifest().save(tmp_path)
    with pytest.raises(InputError, match=r"no fp16 plans.*mattrt build EXPORT_DIR --out .* --precision fp16"):
        open_plans(tmp_path, precision="fp16")
    with pytest.raises(InputError, match="run on cuda"):
        open_plans(tmp_path, device="cpu")


@pytest.mark.skipif(CAN_BUILD, reason="this machine can build plans")
def test_mattrt_build_without_tensorrt_is_a_one_line_error(tmp_path, capsys):
    manifest().save(tmp_path)
    assert main(["build", str(tmp_path), "--profile", "jetson-orin"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mattrt build: error: building TensorRT plans needs ") and "Traceback" not in err
    assert all(name in err for name in ("tensorrt", "cupy_device") if not available(name))
    assert not (tmp_path / "tensorrt").exists()  # nothing written


def test_mattrt_build_rejects_bad_options(tmp_path, capsys):
    manifest().save(tmp_path)
    with pytest.raises(SystemExit):
        main(["build", str(tmp_path), "--workspace", "0"])
    assert "--workspace must be at least 1 MiB" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "missing")]) == 1
    assert "no export manifest" in capsys.readouterr().err


@pytest.mark.skipif(CAN_BUILD and available("onnxruntime"), reason="this machine can run the benchmark")
def test_the_parity_benchmark_names_what_is_missing(tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "benchmarks/trt_parity.py", str(tmp_path)], cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("benchmarks/trt_parity.py: benchmarks/trt_parity.py needs ")
    assert "nothing was measured" in result.stderr and "Traceback" not in result.stderr
    assert not any((root / "benchmarks" / "results").glob("trt-parity-*.json"))
