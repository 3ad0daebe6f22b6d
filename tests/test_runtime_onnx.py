"""The onnxruntime backend over an export directory, read through its manifest only; torch and
onnxruntime pipelines agree within the export parity tolerance."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mattrt.availability import available
from mattrt.cli import main
from mattrt.deploy.plan import export_pipeline, model_pipeline
from mattrt.engines.onnxruntime.engine import OnnxRuntimeEngine, SessionLoader, open_artifacts
from mattrt.errors import InputError, MissingDependencyError
from mattrt.export.exporter import export_model
from mattrt.export.parity import TOLERANCE, generated_image
from mattrt.models import create_model
from mattrt.runtime.artifacts import ModelSpec
from mattrt.runtime.diagnostics import calibrated_random_weights


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """shm_tiny with calibrated random weights (outputs far from constant), exported once."""
    model = calibrated_random_weights(create_model("shm_tiny"), seed=1)
    directory = tmp_path_factory.mktemp("exports") / "shm_tiny"
    export_model(model, directory, max_batch=4, simplify=False, log=None)
    return model, directory


def test_engines_come_from_the_manifest(exported):
    model, directory = exported
    spec, engines = open_artifacts(directory)
    assert list(engines) == ["semantic", "detail"] and spec.source == str(directory)
    detail = engines["detail"]
    assert isinstance(detail, OnnxRuntimeEngine) and detail.fixed_spatial and detail.max_batch == 4
    assert detail.input_names == ["image", "guidance"] and detail.inputs[0].shape == (None, 3, 64, 64)
    expected = ModelSpec.from_settings(model.settings)
    for field in ("name", "stages", "fusion", "guidance", "guidance_channels", "channel_order", "mean", "std",
                  "stride_multiple", "semantic_size", "tile_size", "tile_overlap"):
        assert getattr(spec, field) == getattr(expected, field), field


def test_torch_and_onnxruntime_pipelines_agree_within_the_parity_tolerance(exported):
    model, directory = exported
    image = generated_image(200, 0)[:150, :190]
    with model_pipeline(model, batch=4) as pipeline:
        reference = pipeline.run(image, keep_detail=True)
    with export_pipeline(directory, batch=4) as pipeline:
        result = pipeline.run(image, keep_detail=True)
    for name in ("alpha", "detail", "trimap"):
        a, b = getattr(reference, name), getattr(result, name)
        rel = np.linalg.norm(a - b) / np.linalg.norm(a)
        assert rel <= TOLERANCE["fp32"], (name, rel, np.abs(a - b).max())
    assert np.ptp(reference.detail) > 0.5  # the comparison is not between constants


def test_manifest_alone_suffices(exported, tmp_path):
    """A manifest naming a model this process never registered still runs: nothing is looked up
    in the registry or built from a Python class."""
    _, directory = exported
    copy = tmp_path / "renamed"
    shutil.copytree(directory, copy)
    manifest_file = copy / "manifest.json"
    data = json.loads(manifest_file.read_text())
    data["model"] = "model_from_elsewhere"
    data["settings"]["name"] = "model_from_elsewhere"
    manifest_file.write_text(json.dumps(data))
    with export_pipeline(copy) as pipeline:
        result = pipeline.run(generated_image(70, 1))
    assert pipeline.spec.name == "model_from_elsewhere" and result.alpha.shape == (70, 70)


def test_fixed_graphs_constrain_tile_batch_and_whole_image_mode(exported):
    _, directory = exported
    with pytest.raises(InputError, match="fixed at tile 64 x 64.*--tile 128"):
        export_pipeline(directory, tile_size=128)
    with pytest.raises(InputError, match="maximum batch 4"):
        export_pipeline(directory, batch=8)
    with export_pipeline(directory) as pipeline, pytest.raises(InputError, match="whole-image mode needs a detail engine that runs any size"):
        pipeline.run(generated_image(70, 1), whole=True)


def test_missing_precisions_devices_and_files_are_named(exported, tmp_path):
    _, directory = exported
    with pytest.raises(InputError, match="no fp16 graph for stage 'semantic' \\(it has: fp32\\)"):
        open_artifacts(directory, precision="fp16")
    with pytest.raises(InputError, match="no export manifest"):
        open_artifacts(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        SessionLoader(tmp_path / "missing.onnx")
    if available("onnxruntime_cuda"):
        pytest.skip("this machine has onnxruntime's CUDA provider")
    with pytest.raises(MissingDependencyError, match="needs onnxruntime_cuda"):
        open_artifacts(directory, device="cuda")


def test_cli_runs_an_export_directory(exported, tmp_path, capsys):
    _, directory = exported
    Image.fromarray(generated_image(90, 2)).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    code = main(["infer", str(tmp_path / "photo.png"), "--out", str(out), "--artifacts", str(directory), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    # --backend auto on the CPU: onnxruntime, or openvino where it is installed and measured faster
    assert summary["pipeline"]["backend"] in ("onnxruntime", "openvino") and summary["processed"] == 1
    assert summary["pipeline"]["selection"]["reason"].startswith("auto chose")
    assert Image.open(out / "photo_alpha.png").size == (90, 90)


def test_cli_refuses_mismatched_backends(exported, tmp_path, capsys):
    _, directory = exported
    code = main(["infer", "x.png", "--out", str(tmp_path), "--artifacts", str(directory), "--backend", "torch"])
    assert code == 1 and "the torch backend runs a registered model (--model NAME)" in capsys.readouterr().err
    code = main(["infer", "x.png", "--out", str(tmp_path / "o"), "--model", "shm_tiny", "--backend", "onnxruntime",
                 "--kernels"])
    err = capsys.readouterr().err
    assert code == 1 and "the onnxruntime backend takes no --kernels" in err and "exporting" not in err
