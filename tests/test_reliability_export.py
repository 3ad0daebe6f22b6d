"""Bad exports, manifests and checkpoints get clear errors and lose nothing (issue 10, part B):
`export --force` replaces only an export and only the files it wrote; damaged graphs and
manifests are refused naming the file and field; manifest paths stay inside the export; a full
disk publishes nothing; the published folder follows the umask; checkpoint refusals say what
the file is."""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from mattrt.cli import main
from mattrt.engines.onnxruntime.engine import open_artifacts
from mattrt.engines.tensorrt.lint import lint_directory
from mattrt.errors import CheckpointError, InputError
from mattrt.export import exporter
from mattrt.export.exporter import ExportError, export_model
from mattrt.manifest import MANIFEST_FILE, Manifest
from mattrt.models import create_model
from mattrt.models.checkpoints import read_state_dict
from mattrt.paths import new_directory

MODEL = "shm_tiny"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("reliability") / "shm_tiny"
    export_model(MODEL, directory, max_batch=2, simplify=False, log=None)
    return directory


@pytest.fixture()
def copy(export_dir, tmp_path) -> Path:
    """A fresh copy of the export."""
    target = tmp_path / "export"
    shutil.copytree(export_dir, target)
    return target


def _edit_manifest(directory: Path, change) -> None:
    data = json.loads((directory / MANIFEST_FILE).read_text())
    change(data)
    (directory / MANIFEST_FILE).write_text(json.dumps(data))


def _error(capsys) -> str:
    """What a command printed (lint reports on stdout, errors on stderr), checked for tracebacks."""
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    return text


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# -- 1: --force replaces only an export, and only the files it wrote --------------------------
def test_force_refuses_a_folder_whose_manifest_is_not_an_export(tmp_path, capsys):
    dataset = tmp_path / "dataset"
    assert main(["synth", "--out", str(dataset), "--count", "2", "--size", "32", "--no-progress"]) == 0
    assert (dataset / MANIFEST_FILE).is_file()
    before = _snapshot(dataset)
    capsys.readouterr()
    assert main(["export", MODEL, "--out", str(dataset), "--force"]) == 1
    err = _error(capsys)
    assert "not a mattrt export manifest" in err and "nothing was deleted" in err
    assert _snapshot(dataset) == before


def test_force_refuses_an_export_holding_files_it_did_not_write(copy, capsys):
    (copy / "notes.txt").write_text("mine")
    (copy / "results").mkdir()
    (copy / "results" / "alpha.png").write_bytes(b"png")
    before = _snapshot(copy)
    assert main(["export", MODEL, "--out", str(copy), "--force"]) == 1
    err = _error(capsys)
    assert "notes.txt" in err and "results" in err and "does not" in err and "nothing was deleted" in err
    assert _snapshot(copy) == before


def test_force_is_named_as_the_flag(copy, capsys):
    assert main(["export", MODEL, "--out", str(copy)]) == 1
    err = _error(capsys)
    assert "--force" in err and "force=True" not in err


def test_publish_deletes_only_the_files_the_manifest_names(copy, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    # a file that appears during the export (after the first check) stops the replacement
    (copy / "late.txt").write_text("mine")
    with pytest.raises(InputError, match="late.txt"):
        exporter._publish(staging, copy, log=lambda m: None)
    assert (copy / "late.txt").read_text() == "mine" and (staging / "new.txt").is_file()
    (copy / "late.txt").unlink()
    exporter._publish(staging, copy, log=lambda m: None)
    assert sorted(p.name for p in copy.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export.")] == []


def test_weights_kept_beside_a_large_graph_count_as_the_exports_files(copy):
    model = onnx.load(str(copy / "detail.onnx"))
    onnx.save_model(model, str(copy / "detail.onnx"), save_as_external_data=True, location="detail.onnx.data",
                    size_threshold=0)
    assert "detail.onnx.data" in exporter._replaceable_files(copy)
    (copy / "detail.onnx.data.bak").write_bytes(b"")
    with pytest.raises(InputError, match=r"detail\.onnx\.data\.bak"):
        exporter._replaceable_files(copy)


# -- 14: the published folder follows the umask -------------------------------------------------
def test_staging_folder_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        made = new_directory(tmp_path, ".x.partial-")
    finally:
        os.umask(previous)
    assert made.stat().st_mode & 0o777 == 0o755
    previous = os.umask(0o077)
    try:
        private = new_directory(tmp_path, ".x.partial-")
    finally:
        os.umask(previous)
    assert private.stat().st_mode & 0o777 == 0o700


# -- 8: damaged graph files ---------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "random", "truncated"])
def test_damaged_graph_is_named_by_infer_lint_and_precision(copy, tmp_path, capsys, damage):
    graph = copy / "detail.onnx"
    data = graph.read_bytes()
    graph.write_bytes({"empty": b"", "random": np.random.default_rng(0).bytes(4096), "truncated": data[: len(data) // 2]}[damage])
    with pytest.raises(InputError, match=r"detail\.onnx.*re-export"):
        open_artifacts(copy)
    image = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (200, 100, 50)).save(image)
    commands = {
        "infer": ["infer", str(image), "--artifacts", str(copy), "--out", str(tmp_path / "out")],
        "lint": ["lint", str(copy)],
        "precision": ["precision", str(copy), "--precision", "fp16"],
    }
    for name, argv in commands.items():
        assert main(argv) == 1, name
        err = _error(capsys)
        assert "detail.onnx" in err and "re-export" in err, (name, err)


def test_graph_onnxruntime_cannot_load_is_an_input_error(copy):
    model = onnx.load(str(copy / "detail.onnx"))
    del model.graph.node[len(model.graph.node) // 2]  # same inputs and outputs, a broken graph
    onnx.save_model(model, str(copy / "detail.onnx"))
    _, engines = open_artifacts(copy)
    with pytest.raises(InputError, match=r"onnxruntime cannot load .*detail\.onnx.*re-export"):
        engines["detail"].activate()


# -- 9: manifest errors, and graphs that disagree with the manifest ----------------------------
MANIFEST_DAMAGE = {
    "no normalization": (lambda d: d.pop("normalization"), "'normalization' is a required property"),
    "stage without inputs": (lambda d: d["stages"][0].pop("inputs"), r"stages\[0\]: 'inputs' is a required"),
    "stage without files": (lambda d: d["stages"][1].pop("files"), r"stages\[1\]: 'files' is a required"),
    "stages null": (lambda d: d.__setitem__("stages", None), "stages: None is not of type 'array'"),
    "size not an integer": (lambda d: d.__setitem__("tile_size", "64px"), "tile_size: '64px' is not of type 'integer'"),
    "unknown dtype": (lambda d: d["stages"][0]["inputs"][0].__setitem__("dtype", "float128"),
                      r"stages\[0\]\.inputs\[0\]\.dtype: 'float128' is not one of"),
    "max_batch 0": (lambda d: d.__setitem__("max_batch", 0), "max_batch: 0 is less than the minimum of 1"),
    "backend file outside": (lambda d: d["stages"][0].__setitem__("backend_files", {"onnxruntime": {"int8": "../x.onnx"}}),
                             r"backend_files\.onnxruntime\.int8: '\.\./x\.onnx' is not a plain file name"),
}


@pytest.mark.parametrize("case", list(MANIFEST_DAMAGE))
def test_manifest_errors_name_the_field(copy, tmp_path, capsys, case):
    change, message = MANIFEST_DAMAGE[case]
    _edit_manifest(copy, change)
    with pytest.raises(InputError, match=message):
        Manifest.load(copy)
    assert main(["lint", str(copy)]) == 1
    err = _error(capsys)
    assert "manifest.json" in err and "re-export" in err.lower()
    if case == "max_batch 0":
        assert "--batch 0" not in err


def test_graph_shapes_that_disagree_with_the_manifest_are_refused_and_fail_lint(copy, capsys):
    def shrink(data):
        detail = next(s for s in data["stages"] if s["name"] == "detail")
        detail["inputs"][0]["shape"] = ["batch", 3, 32, 32]

    _edit_manifest(copy, shrink)
    with pytest.raises(InputError, match=r"detail\.onnx does not match the manifest's graph 'detail'.*3 x 64 x 64"):
        open_artifacts(copy)
    report = lint_directory(copy)
    assert not report.passed and any("does not match the manifest" in p.reason for p in report.problems)
    assert main(["lint", str(copy)]) == 1


def test_manifest_schema_accepts_what_export_writes_and_backend_files(export_dir):
    data = json.loads((export_dir / MANIFEST_FILE).read_text())
    data["stages"][0]["backend_files"] = {"onnxruntime": {"int8": "semantic.int8.u8s8.onnx"}}
    manifest = Manifest.from_dict(data)
    assert manifest.stages[0].file_for("int8", "onnxruntime") == "semantic.int8.u8s8.onnx"
    assert Manifest.from_dict(json.loads(manifest.to_json())).to_dict() == manifest.to_dict()


# -- 11: paths in a manifest stay inside the export ---------------------------------------------
def test_manifest_paths_outside_the_export_are_refused(copy, tmp_path):
    _edit_manifest(copy, lambda d: d["stages"][0]["files"].__setitem__("fp32", "../../../../etc/passwd"))
    with pytest.raises(InputError, match=r"stages\[0\]\.files\.fp32: '\.\./\.\./\.\./\.\./etc/passwd' is not a plain"):
        open_artifacts(copy)
    with pytest.raises(InputError, match="not a plain"):
        lint_directory(copy)


def test_a_link_leading_out_of_the_export_is_refused(copy, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(copy / "detail.onnx", outside)
    (copy / "detail.onnx").symlink_to(outside)
    with pytest.raises(InputError, match="leads outside the export directory"):
        open_artifacts(copy)
    with pytest.raises(InputError, match="leads outside the export directory"):
        lint_directory(copy)


# -- 10: a full disk while writing the graphs ---------------------------------------------------
def test_write_failure_names_the_path_and_publishes_nothing(export_dir, tmp_path):
    """A real write failure: the file size limit (RLIMIT_FSIZE, EFBIG) stands in for a full disk."""
    manifest = Manifest.load(export_dir)
    graphs = [
        exporter._Graph(entry.name, None, entry.input_names, entry.output_names, entry.spatial_size, (), {}, {},
                        proto=onnx.load(str(export_dir / entry.files["fp32"])), entry=entry)
        for entry in manifest.graphs()
    ]
    out = tmp_path / "export"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    try:
        with pytest.raises(ExportError) as caught:
            exporter._write(manifest, graphs, out, log=lambda m: None)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    message = str(caught.value)
    assert "semantic.onnx failed: File too large (EFBIG)" in message
    assert f"nothing was published to {out}" in message and "MB" in message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_too_little_free_space_is_refused_before_the_work(tmp_path):
    with pytest.raises(InputError, match="MB free; the graphs need about"):
        exporter._check_free_space(tmp_path, 1 << 62)


# -- 15: checkpoint messages ---------------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_refusals_say_what_the_file_is(tmp_path):
    random_bytes = tmp_path / "random.pth"
    random_bytes.write_bytes(np.random.default_rng(1).bytes(3000))
    with pytest.raises(CheckpointError) as caught:
        read_state_dict(random_bytes)
    assert "is not a PyTorch checkpoint" in str(caught.value) and "file an issue" not in str(caught.value)

    for protocol in (2, 4):
        malicious = tmp_path / f"code{protocol}.pth"
        malicious.write_bytes(pickle.dumps(_RunsCode(), protocol=protocol))
        with pytest.raises(CheckpointError) as caught:
            read_state_dict(malicious)
        message = str(caught.value)
        assert "holds objects other than tensors" in message and "refused for safety" in message
        assert "system" in message and "weights_only" not in message

    module = tmp_path / "module.pth"
    torch.save(torch.nn.Conv2d(1, 1, 1), module)
    with pytest.raises(CheckpointError, match=r"other than tensors \(it names torch\.nn\.modules\.conv\.Conv2d\)"):
        read_state_dict(module)

    damaged = tmp_path / "damaged.pth"
    torch.save({"w": torch.zeros(8)}, damaged)
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="is damaged"):
        read_state_dict(damaged)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        read_state_dict(tmp_path / "empty.pth")


def test_checkpoint_mismatch_names_the_models_width(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1, 1, 1, 1)}, other)
    with pytest.raises(CheckpointError) as caught:
        create_model(MODEL, checkpoint=other)
    message = str(caught.value)
    assert "at width 0.125 (this model's width setting)" in message and "width 1.0 models only" in message
