"""`mattrt triton-repo --backend openvino`: the CPU repository's stage models run on OpenVINO, the
repository and the configs say so, and alpha through a real Triton server (2.51 from the
nvidia-pytriton wheel) equals the in-process openvino pipeline on the same export within 1/255.
The onnxruntime stage models are covered by tests/test_serving_triton.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mattrt.availability import available, skip_reason
from mattrt.cli import main
from mattrt.deploy.plan import export_pipeline
from mattrt.engines.openvino import engine as ov_engine
from mattrt.engines.triton.client import TritonMattingClient
from mattrt.errors import InputError
from mattrt.export.parity import generated_image
from mattrt.serving.processes import process_tree
from mattrt.serving.repository import RECORD_FILE, RepositoryOptions, build_repository
from mattrt.serving.server import ServerOptions, TritonServer

needs_openvino = pytest.mark.skipif(not available("openvino"), reason=skip_reason("openvino"))
MODEL = "shmov"


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _image(height: int, width: int, index: int = 0) -> np.ndarray:
    return np.ascontiguousarray(generated_image(max(height, width), index)[:height, :width])


@needs_openvino
def test_the_repository_records_the_stage_backend(serving_export, tmp_path, capsys):
    assert main(["triton-repo", str(serving_export), "--out", str(tmp_path / "repo"), "--name", MODEL,
                 "--backend", "openvino"]) == 0
    record = json.loads((tmp_path / "repo" / f"{MODEL}_detail" / RECORD_FILE).read_text())
    assert record["stage_backend"] == "openvino" and record["precision"] == "fp32"
    config = (tmp_path / "repo" / f"{MODEL}_detail" / "config.pbtxt").read_text()
    assert 'key: "backend" value: { string_value: "openvino" }' in config
    # the default stays onnxruntime
    build_repository(serving_export, tmp_path / "plain", RepositoryOptions(name="plain"), log=None)
    assert json.loads((tmp_path / "plain" / "plain_detail" / RECORD_FILE).read_text())["stage_backend"] == "onnxruntime"


@needs_openvino
def test_bad_backend_options_are_refused_before_writing(serving_export, tmp_path, monkeypatch):
    out = tmp_path / "repo"
    with pytest.raises(InputError, match="runs precision fp32, fp16, int8, not 'bf16'"):
        build_repository(serving_export, out, RepositoryOptions(precision="bf16"), log=None)
    with pytest.raises(InputError, match="--backend openvino applies to the cpu target"):
        build_repository(serving_export, out, RepositoryOptions(target="gpu", backend="openvino"), log=None)
    monkeypatch.setattr(ov_engine, "capabilities", lambda: ["FP32", "INT8"])
    with pytest.raises(InputError, match="needs a CPU with native bfloat16"):
        build_repository(serving_export, out, RepositoryOptions(backend="openvino", precision="bf16"), log=None)
    assert not out.exists()


@needs_openvino
@pytest.mark.skipif(not available("tritonserver"), reason=skip_reason("tritonserver"))
@pytest.mark.skipif(not available("tritonclient"), reason=skip_reason("tritonclient"))
def test_alpha_through_the_server_equals_in_process(serving_export, tmp_path):
    repo = build_repository(serving_export, tmp_path / "repo",
                            RepositoryOptions(name=MODEL, backend="openvino", max_pixels=400 * 400), log=None)
    images = [_image(150, 190), _image(96, 130, 1)]
    with export_pipeline(serving_export, backend="openvino", threads=1) as pipeline:
        expected = [np.rint(pipeline.run(rgb).alpha * 255).astype(int) for rgb in images]
    with TritonServer(repo, ServerOptions(ready_timeout=240, drain_seconds=3)) as server:
        try:
            for protocol in ("http", "grpc"):
                with TritonMattingClient(server.endpoints[protocol], protocol=protocol) as remote:
                    mattes = remote.matte_many(images, concurrency=2)  # tiles of both meet in the batcher
                for matte, want in zip(mattes, expected):
                    assert np.abs(matte[..., 0].astype(int) - want).max() <= 1
            assert expected[0].std() > 10  # a matte, not a constant
            # the stage models' stub processes run OpenVINO, the pipeline's does not need it
            maps = [_maps(pid) for pid in process_tree(server.process.pid)]
            assert sum("libopenvino" in m for m in maps) >= 2 and not any("libonnxruntime" in m for m in maps)
        finally:
            print(server.log_tail(40))
