"""onnxruntime's CPU INT8 graph (calibration/int8_cpu.py: build_cpu_int8), written beside the
TensorRT-form INT8 graph from the same calibration, on the tiny AIM export of test_calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from mattrt.calibration.calibrate import CALIBRATED_OPS, FeedReader, quantize_symmetric
from mattrt.calibration.graphs import WEIGHTED_OPS, CalibrationError
from mattrt.calibration.int8_cpu import CPU_INT8_RECORD, build_cpu_int8, check_cpu_qdq, cpu_int8_fp32_nodes
from mattrt.calibration.int8_tensorrt import build_int8

STAGES = ("semantic", "detail")


@pytest.fixture(scope="module")
def export_dir() -> Path:
    from test_calibration import tiny_export_with_precisions

    return tiny_export_with_precisions()


def _stage(directory: Path, name: str) -> dict:
    manifest = json.loads((directory / "manifest.json").read_text())
    return next(s for s in manifest["stages"] if s["name"] == name)


def _feeds(directory: Path, stage: str, count: int = 8) -> list[dict]:
    data = np.load(directory / f"{stage}.int8.calib.npz")
    return [{"image": data["image"][i : i + 1]} for i in range(min(count, len(data["image"])))]


def _run(path: Path, feeds: list[dict]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = [session.run(names, feed) for feed in feeds]
    return [np.concatenate([o[i] for o in outputs]) for i in range(len(names))]


def _zero_points(model) -> list:
    initializers = {i.name: i for i in model.graph.initializer}
    return [initializers[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in initializers]


def test_manifest_names_the_cpu_graph_for_onnxruntime(export_dir):
    from mattrt.engines.tensorrt.lint import lint_directory, lint_models

    for stage in STAGES:
        entry = _stage(export_dir, stage)
        cpu_file = f"{stage}.int8_cpu.onnx"
        assert entry["backend_files"] == {"onnxruntime": {"int8": cpu_file}}
        assert entry["files"]["int8"] == f"{stage}.int8.onnx"  # TensorRT and the lint keep the symmetric graph
        assert (export_dir / cpu_file).is_file()
        record = entry["parity"][CPU_INT8_RECORD]
        details = record["int8_cpu"]
        int8 = entry["parity"]["int8"]["int8"]
        assert record["backend"] == "onnxruntime" and record["file"] == cpu_file
        assert details["ranges"] == int8["ranges"] and details["method"] == int8["method"]
        assert details["unquantised"] == int8["unquantised"]["excluded_nodes"]
        assert "not a TensorRT graph" in details["tensorrt"]
        assert set(record["vs_fp32"]) == set(entry["parity"]["int8"]["vs_fp32"])
        assert int8["calibrated_ops"] == list(CALIBRATED_OPS)
    report = lint_directory(export_dir)  # the graphs `files` names, TensorRT's INT8 form included
    assert report.passed, report.summary()
    assert "detail.int8.onnx" in report.graphs and "detail.int8_cpu.onnx" not in report.graphs
    # and the manifest's word holds: TensorRT could not take the CPU graph
    cpu = lint_models([("detail.int8_cpu.onnx", onnx.load(str(export_dir / "detail.int8_cpu.onnx")))])
    assert not cpu.passed and "zero point" in cpu.summary()


def test_cpu_graph_is_u8s8_with_integer_convolutions(export_dir):
    for stage in STAGES:
        model = onnx.load(str(export_dir / f"{stage}.int8_cpu.onnx"))
        fp32 = onnx.load(str(export_dir / f"{stage}.onnx"))
        facts = check_cpu_qdq(model, cpu_int8_fp32_nodes(fp32))
        unquantised = len(_stage(export_dir, stage)["parity"]["int8"]["int8"]["unquantised"]["excluded_nodes"])
        assert facts["weighted"] == sum(n.op_type in WEIGHTED_OPS for n in fp32.graph.node)
        # every quantised weighted layer reads dequantised inputs and writes one QuantizeLinear: fusable
        assert facts["weighted_integer"] >= facts["weighted"] - unquantised - 2 > 0
        assert facts["per_channel_weights"] > 0
        zero_points = _zero_points(model)
        assert zero_points and all(z.data_type == TensorProto.UINT8 for z in zero_points)
        assert any(numpy_helper.to_array(z).any() for z in zero_points)  # asymmetric: not all zero
        assert facts == _stage(export_dir, stage)["parity"][CPU_INT8_RECORD]["int8_cpu"]["qdq"]


def test_cpu_graph_keeps_unpool_index_arithmetic_on_fp32(export_dir):
    fp32 = onnx.load(str(export_dir / "detail.onnx"))
    fixed = cpu_int8_fp32_nodes(fp32)
    kinds = {n.op_type for n in fp32.graph.node if n.name in fixed}
    assert {"MaxPool", "Equal", "ScatterElements"} <= kinds
    model = onnx.load(str(export_dir / "detail.int8_cpu.onnx"))
    inputs = {n.name: list(n.input) for n in model.graph.node}
    for node in fp32.graph.node:
        if node.name in fixed:
            assert inputs[node.name] == list(node.input), node.name  # the very tensors the FP32 graph reads


def test_cpu_graph_rebuilt_from_saved_ranges_is_identical(export_dir, tmp_path):
    for stage in STAGES:
        details = _stage(export_dir, stage)["parity"][CPU_INT8_RECORD]["int8_cpu"]
        rebuilt = build_cpu_int8(export_dir / f"{stage}.onnx", export_dir / details["ranges"], tmp_path / "cpu.onnx",
                                 method=details["method"], exclude=details["unquantised"])
        original = onnx.load(str(export_dir / f"{stage}.int8_cpu.onnx"))
        assert rebuilt.graph.SerializeToString() == original.graph.SerializeToString()


def test_one_calibration_pass_serves_both_graphs(export_dir, tmp_path):
    """Recording the CPU graph's tensors too leaves the TensorRT form's ranges (and graph) as a
    calibration of the weighted layers alone makes them."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    fp32_path = export_dir / "detail.onnx"
    feeds = _feeds(export_dir, "detail", 8)
    weighted_only = tmp_path / "weighted.json"
    quantize_symmetric(fp32_path, weighted_only, "entropy", (), tmp_path / "scratch.onnx", FeedReader(feeds), 4,
                      op_types=WEIGHTED_OPS)
    both = tmp_path / "both.json"
    quantize_symmetric(fp32_path, both, "entropy", (), tmp_path / "scratch.onnx", FeedReader(feeds), 4,
                      op_types=CALIBRATED_OPS)
    narrow, wide = load_tensors_data(weighted_only), load_tensors_data(both)
    assert set(narrow.keys()) < set(wide.keys())
    for name in narrow:
        assert narrow[name].range_value == wide[name].range_value, name
    excluded = _stage(export_dir, "detail")["parity"]["int8"]["int8"]["unquantised"]["excluded_nodes"]
    a = build_int8(fp32_path, weighted_only, tmp_path / "a.onnx", exclude=excluded)
    b = build_int8(fp32_path, both, tmp_path / "b.onnx", exclude=excluded)
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    # a ranges file of the weighted layers alone (an older export) cannot make the CPU graph
    with pytest.raises(CalibrationError, match="--force"):
        build_cpu_int8(fp32_path, weighted_only, tmp_path / "cpu.onnx", exclude=excluded)


def test_cpu_graph_runs_close_to_fp32_but_quantised(export_dir):
    for stage in STAGES:
        feeds = _feeds(export_dir, stage)
        reference = _run(export_dir / f"{stage}.onnx", feeds)
        got = _run(export_dir / f"{stage}.int8_cpu.onnx", feeds)
        tensorrt_form = _run(export_dir / f"{stage}.int8.onnx", feeds)
        for ref, out, trt in zip(reference, got, tensorrt_form):
            rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
            rel_trt = np.linalg.norm(trt - ref) / np.linalg.norm(ref)
            assert not np.array_equal(out, trt)  # a graph of its own
            # random weights: loose, but wrong scales or zero points would exceed it (or be exact);
            # the CPU graph quantises more tensors (convolution outputs) than the TensorRT form
            assert 0 < rel < 0.05, (stage, rel, rel_trt)


def test_open_artifacts_runs_the_cpu_graph_for_int8(export_dir):
    from mattrt.engines.onnxruntime.engine import open_artifacts

    _, engines = open_artifacts(export_dir, precision="int8")
    assert {n: e.loader.path.name for n, e in engines.items()} == {s: f"{s}.int8_cpu.onnx" for s in STAGES}
    _, fp32_engines = open_artifacts(export_dir, precision="fp32")
    feeds = _feeds(export_dir, "detail", 2)
    batch = {"image": np.concatenate([f["image"] for f in feeds])}
    with engines["detail"] as engine, fp32_engines["detail"] as reference:
        got, want = engine.run(batch), reference.run(batch)
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == np.float32
        assert 0 < np.abs(got[name] - want[name]).max() < 0.5


def test_infer_cli_runs_int8_on_the_cpu_graph(export_dir, tmp_path):
    from PIL import Image

    from mattrt.cli import main
    from mattrt.data.synthetic import generate_sample, sample_rng

    Image.fromarray(generate_sample("salient_opaque", (80, 60), sample_rng(4, 0)).image).save(tmp_path / "p.png")
    out = tmp_path / "out"
    assert main(["infer", str(tmp_path / "p.png"), "--out", str(out), "--artifacts", str(export_dir),
                 "--backend", "onnxruntime", "--precision", "int8"]) == 0
    assert Image.open(out / "p_alpha.png").size == (80, 60)
