"""Triton repositories from an export: layout, configs parsed with Triton's own ModelConfig schema,
the GPU target's TensorRT configs (generated only: loading needs a GPU with TensorRT), records
and the errors for missing graphs, plans and stale repositories."""

from __future__ import annotations

import json
import shutil

import pytest

from mattrt import __version__
from mattrt.availability import available, skip_reason
from mattrt.cli import main
from mattrt.errors import InputError
from mattrt.lazy import lazy_import
from mattrt.manifest import Manifest
from mattrt.serving.repository import (
    RECORD_FILE,
    RepositoryOptions,
    batch_sizes,
    build_repository,
    check_repository,
)

text_format = lazy_import("google.protobuf.text_format", probe="tritonclient")
model_config_pb2 = lazy_import("tritonclient.grpc.model_config_pb2", probe="tritonclient")
needs_client = pytest.mark.skipif(not available("tritonclient"), reason=skip_reason("tritonclient"))


def parse_config(path):
    """The config as Triton's ModelConfig message (fails on any field Triton would reject)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


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
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "semantic-fp32.plan").write_bytes(b"semantic plan bytes")
    with pytest.raises(InputError, match="no TensorRT plan for stage 'detail'.*mattrt build"):
        build_repository(serving_export, tmp_path / "r1", RepositoryOptions(target="gpu", plans=plans), log=None)
    (plans / "detail-fp32.plan").write_bytes(b"detail plan bytes")
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
