"""Triton repositories from an export: layout, configs parsed with Triton's own ModelConfig schema,
the GPU target's TensorRT configs (generated only: loading needs a GPU with TensorRT), records
and the errors for missing graphs, plans and stale repositories; and what `mattrt serve` derives
from a GPU repository's records before it starts a server (backends, the plans' TensorRT version
against the server's, flags, the advice for a plan the server refused). The plans here are stand-in
bytes with `mattrt build`-shaped metadata: no TensorRT has read them."""

from __future__ import annotations

import json
import shutil

import pytest

from mattrt import __version__
from mattrt.availability import available, skip_reason
from mattrt.cli import main
from mattrt.engines.tensorrt.plan_files import METADATA_FORMAT, metadata_path, plan_file_name, write_json
from mattrt.errors import InputError, MissingDependencyError
from mattrt.lazy import lazy_import
from mattrt.manifest import Manifest
from mattrt.models.checkpoints import file_sha256
from mattrt.serving.gpu_repository import (
    check_backends,
    check_tensorrt_version,
    nvinfer_from_ldd,
    tensorrt_flags,
    tensorrt_load_advice,
)
from mattrt.serving.repository import (
    RECORD_FILE,
    RepositoryOptions,
    batch_sizes,
    build_repository,
    check_repository,
    needed_backends,
    tensorrt_models,
)

text_format = lazy_import("google.protobuf.text_format", probe="tritonclient")
model_config_pb2 = lazy_import("tritonclient.grpc.model_config_pb2", probe="tritonclient")
needs_client = pytest.mark.skipif(not available("tritonclient"), reason=skip_reason("tritonclient"))


def parse_config(path):
    """The config as Triton's ModelConfig message (fails on any field Triton would reject)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def write_plans(plans, export, precision="fp32", tensorrt="11.4.1.5", version_compatible=False, dla=None,
                max_batch=4, stages=("semantic", "detail")):
    """Stand-in plan files and the metadata `mattrt build` writes beside them."""
    plans.mkdir(parents=True, exist_ok=True)
    records = {}
    for stage in stages:
        plan = plans / plan_file_name(stage, precision)
        plan.write_bytes(f"{stage} plan bytes".encode())
        records[stage] = {"plan": plan.name, "plan_sha256": file_sha256(plan), "dla": dla, "min_batch": 1,
                          "opt_batch": max_batch, "max_batch": max_batch}
    write_json(metadata_path(plans, precision), {
        "format": METADATA_FORMAT, "model": "shm_tiny", "export_dir": str(export), "precision": precision,
        "tensorrt": tensorrt, "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
        "profile": {"name": "server", "workspace_mb": None},
        "options": {"version_compatible": version_compatible, "hardware_compatible": False, "workspace_mb": None},
        "stages": records})
    return plans


@needs_client
def test_cpu_repository_layout_and_configs(serving_export, tmp_path):
    repo = build_repository(serving_export, tmp_path / "repo", RepositoryOptions(name="m", instances=2, max_batch=2),
                            log=None)
    assert sorted(p.name for p in repo.iterdir()) == ["m", "m_detail", "m_semantic"]
    manifest = Manifest.load(serving_export)
    for stage in ("semantic", "detail"):
        model = repo / f"m_{stage}"
        config = parse_config(model / "config.pbtxt")
        assert config.backend == "python" and config.max_batch_size == 2
        assert config.instance_group[0].count == 2 and config.dynamic_batching.max_queue_delay_microseconds > 0
        entry = manifest.stage(stage)
        assert [i.name for i in config.input] == entry.input_names
        assert list(config.input[0].dims) == [int(d) for d in entry.inputs[0].shape[1:]]
        assert (model / "1" / "model.onnx").read_bytes() == (serving_export / entry.files["fp32"]).read_bytes()
        assert "from mattrt.serving.triton_models import StageModel" in (model / "1" / "model.py").read_text()
    pipeline = parse_config(repo / "m" / "config.pbtxt")
    assert pipeline.max_batch_size == 0 and not pipeline.response_cache.enable
    assert {i.name: i.optional for i in pipeline.input} == {"IMAGE": True, "IMAGE_ENCODED": True}
    assert json.loads(pipeline.parameters["stage_models"].string_value) == {"semantic": "m_semantic", "detail": "m_detail"}
    assert Manifest.from_json(pipeline.parameters["manifest"].string_value).model == manifest.model
    record = json.loads((repo / "m" / RECORD_FILE).read_text())
    assert record["mattrt_version"] == __version__ and record["export"]["checkpoint_sha256"] == manifest.checkpoint_sha256
    assert record["models"]["m_detail"]["sha256"] and len(check_repository(repo)) == 3


@needs_client
def test_gpu_target_configs_plans_warmup_and_cuda_graphs(serving_export, tmp_path):
    with pytest.raises(InputError, match="mattrt build"):
        build_repository(serving_export, tmp_path / "r0", RepositoryOptions(target="gpu"), log=None)
    plans = write_plans(tmp_path / "plans", serving_export, stages=("semantic",))
    with pytest.raises(InputError, match="no TensorRT plan for stage 'detail'.*mattrt build"):
        build_repository(serving_export, tmp_path / "r1", RepositoryOptions(target="gpu", plans=plans), log=None)
    write_plans(plans, serving_export)
    repo = build_repository(serving_export, tmp_path / "repo",
                            RepositoryOptions(target="gpu", plans=plans, instances=2, name="g"), log=None)
    detail = parse_config(repo / "g_detail" / "config.pbtxt")
    assert detail.platform == "tensorrt_plan" and detail.max_batch_size == 4
    assert detail.instance_group[0].kind == detail.instance_group[0].KIND_GPU and detail.instance_group[0].count == 2
    assert list(detail.dynamic_batching.preferred_batch_size) == [2, 4]
    assert detail.optimization.cuda.graphs
    assert [s.batch_size for s in detail.optimization.cuda.graph_spec] == [1, 2, 4]
    assert sorted(detail.optimization.cuda.graph_spec[0].input) == ["guidance", "image"]
    assert [w.batch_size for w in detail.model_warmup] == [1, 2, 4]
    assert all(w.inputs["image"].zero_data for w in detail.model_warmup)
    assert (repo / "g_detail" / "1" / "model.plan").read_bytes() == b"detail plan bytes"
    assert not (repo / "g_detail" / "1" / "model.py").exists()
    assert parse_config(repo / "g" / "config.pbtxt").backend == "python"
    assert batch_sizes(6) == [1, 2, 4, 6] and batch_sizes(1) == [1]
    records = check_repository(repo)
    assert needed_backends(records) == {"python": ["g"], "tensorrt": ["g_detail", "g_semantic"]}
    plans_record = tensorrt_models(records)["g_detail"]
    assert plans_record["tensorrt"] == "11.4.1.5" and not plans_record["version_compatible"]
    assert plans_record["rebuild"].startswith(f"mattrt build {serving_export} --out {plans.resolve()} --precision fp32")


def test_gpu_plans_must_be_the_ones_their_metadata_records_and_fit_triton(serving_export, tmp_path):
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "semantic-fp32.plan").write_bytes(b"plan")
    (plans / "detail-fp32.plan").write_bytes(b"plan")
    with pytest.raises(InputError, match="has no tensorrt-fp32.json: pass the directory `mattrt build --out DIR"):
        build_repository(serving_export, tmp_path / "r", RepositoryOptions(target="gpu", plans=plans), log=None)
    write_plans(plans, serving_export)
    (plans / "detail-fp32.plan").write_bytes(b"rebuilt by hand")
    with pytest.raises(InputError, match="detail-fp32.plan is not the plan its metadata records: rebuild the plans "
                                         "with `mattrt build"):
        build_repository(serving_export, tmp_path / "r", RepositoryOptions(target="gpu", plans=plans), log=None)
    write_plans(plans, serving_export, dla={"core": 0, "dla_subgraphs": ["{ForeignNode[a...b]}"], "other_layers": 2})
    with pytest.raises(InputError, match="runs on DLA.*--profile jetson-orin or server"):
        build_repository(serving_export, tmp_path / "r", RepositoryOptions(target="gpu", plans=plans), log=None)
    write_plans(plans, serving_export, max_batch=2)
    with pytest.raises(InputError, match="takes batches up to 2: pass --max-batch 2"):
        build_repository(serving_export, tmp_path / "r", RepositoryOptions(target="gpu", plans=plans), log=None)
    assert build_repository(serving_export, tmp_path / "r", RepositoryOptions(target="gpu", plans=plans, max_batch=2),
                            log=None).is_dir()


# -- what `mattrt serve` needs from the server for a GPU repository --------------------------------
def gpu_records(serving_export, tmp_path, **plans):
    repo = build_repository(serving_export, tmp_path / "repo", RepositoryOptions(
        target="gpu", name="g", plans=write_plans(tmp_path / "plans", serving_export, **plans)), log=None)
    return check_repository(repo)


def fake_triton_install(root, backends):
    """A Triton install's layout (bin/tritonserver, backends/<name>/libtriton_<name>.so), empty files."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").touch()
    for name in backends:
        (root / "backends" / name).mkdir(parents=True)
        (root / "backends" / name / f"libtriton_{name}.so").touch()
    return root / "bin" / "tritonserver"


def test_a_server_without_the_tensorrt_backend_is_refused_before_start(serving_export, tmp_path):
    needed = needed_backends(gpu_records(serving_export, tmp_path))
    wheel_like = fake_triton_install(tmp_path / "pytriton", ["python"])
    with pytest.raises(MissingDependencyError) as refused:
        check_backends(needed, wheel_like)
    message = str(refused.value)
    assert "lacks the tensorrt backend (for g_detail, g_semantic;" in message
    assert "backends/tensorrt/libtriton_tensorrt.so is missing" in message
    assert "NVIDIA's Triton container" in message and "nvcr.io/nvidia/tritonserver" in message
    assert "--tritonserver PATH" in message and "only the Python backend" in message
    check_backends(needed, fake_triton_install(tmp_path / "container", ["python", "tensorrt"]))


def test_the_plans_tensorrt_must_be_one_the_servers_tensorrt_runs(serving_export, tmp_path):
    plans = tensorrt_models(gpu_records(serving_export, tmp_path, tensorrt="10.16.1.11"))
    check_tensorrt_version(plans, ("10.16.1", "/usr/lib/libnvinfer.so.10.16.1"))
    check_tensorrt_version(plans, ("10", "/usr/lib/libnvinfer.so.10"))  # only the major known: the load tells
    check_tensorrt_version(plans, None)  # not readable before start: checked from the load error
    with pytest.raises(InputError, match=r"g_detail, g_semantic: the plans were built by TensorRT 10.16.1.11 \(not "
                                         r"version compatible\), this is TensorRT 11.4.1 \(the server's TensorRT backend "
                                         r"loads /x/libnvinfer.so.11.4.1\): rebuild the plans with the server's TensorRT "
                                         r"11.4.1 \(e.g. in the same container\): `mattrt build "):
        check_tensorrt_version(plans, ("11.4.1", "/x/libnvinfer.so.11.4.1"))


def test_version_compatible_plans_get_the_backend_option_and_gpu_repositories_a_pinned_pool(serving_export,
                                                                                            tmp_path):
    assert tensorrt_flags({}) == ["--pinned-memory-pool-byte-size=0"]  # a CPU repository: nothing to pin
    plans = tensorrt_models(gpu_records(serving_export, tmp_path))
    assert tensorrt_flags(plans) == [f"--pinned-memory-pool-byte-size={1 << 28}"]
    compatible = tensorrt_models(gpu_records(serving_export, tmp_path / "vc", tensorrt="10.16.1.11",
                                             version_compatible=True))
    assert tensorrt_flags(compatible)[1:] == ["--backend-config=tensorrt,version-compatible=true"]
    check_tensorrt_version(compatible, ("11.4.1", "/x/libnvinfer.so.11.4.1"))  # 10 -> 11: TensorRT allows it


def test_a_plan_the_server_refused_while_loading_gets_the_rebuild_command(serving_export, tmp_path):
    plans = tensorrt_models(gpu_records(serving_export, tmp_path))
    log = ("E1207 logging.cc:43] 6: The engine plan file is not compatible with this version of TensorRT, expecting "
           "library version 10.3.0.26 got 11.4.1.5, please rebuild.\nE1207 failed to load 'g_detail'")
    advice = tensorrt_load_advice(log, plans)
    assert "refused the plans (built by TensorRT 11.4.1.5 on NVIDIA H100 80GB HBM3, sm_90)" in advice
    assert "expecting library version 10.3.0.26 got 11.4.1.5" in advice and "`mattrt build " in advice
    assert tensorrt_load_advice("E1207 model.py: this model cannot load", plans) == ""
    assert tensorrt_load_advice(log, {}) == ""


def test_the_servers_tensorrt_version_is_read_from_the_libnvinfer_ldd_resolves(tmp_path):
    real = tmp_path / "libnvinfer.so.10.3.0"
    real.touch()
    (tmp_path / "libnvinfer.so.10").symlink_to(real.name)
    ldd = (f"\tlinux-vdso.so.1 (0x00007ffd)\n\tlibnvinfer.so.10 => {tmp_path}/libnvinfer.so.10 (0x00007f12)\n"
           "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f00)\n")
    assert nvinfer_from_ldd(ldd) == ("10.3.0", str(real))
    assert nvinfer_from_ldd("\tlibnvinfer.so.10 => not found\n") is None
    assert nvinfer_from_ldd("\tnot a dynamic executable\n") is None


def test_missing_graphs_options_and_existing_models_are_errors(serving_export, tmp_path):
    with pytest.raises(InputError, match="no int8 graph.*mattrt precision"):
        build_repository(serving_export, tmp_path / "r", RepositoryOptions(precision="int8"), log=None)
    with pytest.raises(InputError, match="exceeds the export's maximum batch 4"):
        build_repository(serving_export, tmp_path / "r", RepositoryOptions(max_batch=8), log=None)
    with pytest.raises(InputError, match="model name"):
        build_repository(serving_export, tmp_path / "r", RepositoryOptions(name="a b"), log=None)
    build_repository(serving_export, tmp_path / "r", RepositoryOptions(name="m"), log=None)
    (tmp_path / "r" / "other").mkdir()
    with pytest.raises(InputError, match="already holds model.*--overwrite"):
        build_repository(serving_export, tmp_path / "r", RepositoryOptions(name="m"), log=None)
    build_repository(serving_export, tmp_path / "r", RepositoryOptions(name="m", overwrite=True), log=None)
    assert (tmp_path / "r" / "other").is_dir()  # not ours: left alone


def test_stale_or_altered_repositories_are_refused(serving_export, tmp_path):
    repo = build_repository(serving_export, tmp_path / "r", RepositoryOptions(name="m"), log=None)
    altered = tmp_path / "altered"
    shutil.copytree(repo, altered)
    (altered / "m_detail" / "1" / "model.onnx").write_bytes(b"not the graph")
    with pytest.raises(InputError, match="differs from the file the repository recorded"):
        check_repository(altered)
    record_path = repo / "m" / RECORD_FILE
    record = json.loads(record_path.read_text())
    record["mattrt_version"] = "0.0.1"
    record_path.write_text(json.dumps(record))
    with pytest.raises(InputError, match="generated by mattrt 0.0.1.*regenerate it with `mattrt triton-repo`"):
        check_repository(repo)


def test_cli_writes_a_repository_and_reports_errors(serving_export, tmp_path, capsys):
    assert main(["triton-repo", str(serving_export), "--out", str(tmp_path / "r"), "--instances", "2"]) == 0
    assert "wrote Triton repository" in capsys.readouterr().out
    assert main(["triton-repo", str(serving_export), "--out", str(tmp_path / "r")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "nothing")]) == 1
    assert "is not a directory" in capsys.readouterr().err
