"""FP16 and INT8 graphs of an export (calibration/variants.py) and their calibration data
(calibration/feeds.py), on a tiny AIM export (64 px stages, 1/8 width)."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from mattrt.calibration.calibrate import calibrate_ranges
from mattrt.calibration.feeds import collect_stage_feeds, parse_data_source
from mattrt.calibration.fp16 import convert_fp16, fp16_candidate_groups
from mattrt.calibration.graphs import CalibrationError, output_errors
from mattrt.calibration.int8_tensorrt import build_int8, check_qdq
from mattrt.calibration.variants import add_precisions
from mattrt.errors import InputError

TINY_IMAGE = (96, 80)  # width x height: 2 x 2 tiles of 64 px, letterboxed on the 64 px canvas


def _perturbed_aim_tiny():
    """aim_tiny with seeded weights, non-trivial BatchNorm statistics (fresh ones make every
    activation alike) and the paper's soft fusion, so that alpha depends smoothly on both stages
    (the argmax fusion of random weights can give an alpha of only 0s and 1s)."""
    from mattrt.models import create_model

    torch.manual_seed(0)
    model = create_model("aim_tiny", fusion="aim_soft")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) * 0.4 - 0.1)
    return model.eval()


@functools.lru_cache(maxsize=None)
def tiny_export_with_precisions() -> Path:
    """One tiny export per test session with FP16 and INT8 graphs added (shared with test_fidelity)."""
    from mattrt.export.exporter import export_model

    root = Path(tempfile.mkdtemp(prefix="mattrt-test-calibration-"))
    directory = root / "aim_tiny"
    export_model(_perturbed_aim_tiny(), directory, max_batch=4, log=None)
    shutil.copytree(directory, root / "fp32_only")
    add_precisions(directory, ["fp16", "int8"], calibration="synthetic:4", batch=4, synthetic_size=TINY_IMAGE,
                   log=None)
    return directory


@pytest.fixture(scope="module")
def export_dir() -> Path:
    return tiny_export_with_precisions()


@pytest.fixture()
def fp32_copy(export_dir, tmp_path) -> Path:
    """A fresh copy of the FP32-only export."""
    target = tmp_path / "export"
    shutil.copytree(export_dir.parent / "fp32_only", target)
    return target


def _manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def _stage(directory: Path, name: str) -> dict:
    return next(s for s in _manifest(directory)["stages"] if s["name"] == name)


def _feeds(directory: Path, stage: str, count: int = 4) -> list[dict]:
    data = np.load(directory / f"{stage}.int8.calib.npz")
    return [{"image": data["image"][i : i + 1]} for i in range(min(count, len(data["image"])))]


def _run(path: Path, feeds: list[dict]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = [session.run(names, feed) for feed in feeds]
    return [np.concatenate([o[i] for o in outputs]) for i in range(len(names))]


def test_manifest_lists_precision_graphs_and_lint_passes(export_dir):
    from mattrt.engines.tensorrt.lint import lint_directory

    for stage in ("semantic", "detail"):
        entry = _stage(export_dir, stage)
        assert entry["files"] == {"fp32": f"{stage}.onnx", "fp16": f"{stage}.fp16.onnx", "int8": f"{stage}.int8.onnx"}
        for name in entry["files"].values():
            assert (export_dir / name).is_file()
        int8 = entry["parity"]["int8"]["int8"]
        assert (export_dir / int8["ranges"]).is_file() and (export_dir / int8["tensors"]).is_file()
        assert entry["side_files"] == {"int8": [int8["ranges"], int8["tensors"]]}
    assert _stage(export_dir, "detail")["files"]  # the fusion graph stays FP32 only
    assert _manifest(export_dir)["fusion_graph"]["files"] == {"fp32": "fusion.onnx"}
    report = lint_directory(export_dir)
    assert report.passed, report.summary()
    assert set(report.graphs) >= {"detail.int8.onnx", "detail.fp16.onnx", "semantic.int8.onnx"}


def test_fp16_graph_is_half_precision_and_close_to_fp32(export_dir):
    for stage in ("semantic", "detail"):
        model = onnx.load(str(export_dir / f"{stage}.fp16.onnx"))
        conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
        types = {i.name: i.data_type for i in model.graph.initializer}
        half = sum(types.get(w) == TensorProto.FLOAT16 for w in conv_weights)
        # most convolutions run in FP16; the FP32 ones are exactly the measured block list
        blocked = set(_stage(export_dir, stage)["parity"]["fp16"]["fp16"]["excluded_nodes"])
        convs_blocked = sum(1 for n in model.graph.node if n.op_type == "Conv" and n.name in blocked)
        assert half == len(conv_weights) - convs_blocked and half > len(conv_weights) // 2
        assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
        feeds = _feeds(export_dir, stage)
        reference = _run(export_dir / f"{stage}.onnx", feeds)
        got = _run(export_dir / f"{stage}.fp16.onnx", feeds)
        for ref, out in zip(reference, got):
            assert out.dtype == np.float32
            rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
            assert 0 < rel < 1e-2  # rounded, yet close


def test_fp16_conversion_keeps_fp32_chains_exact():
    """Blocked neighbours exchange FP32 values: onnxruntime's converter rounds them through FP16
    (Cast pairs) and convert_fp16 folds those pairs away."""
    from onnx import helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Mul", ["x", "k"], ["a"], name="first"),
             helper.make_node("Add", ["a", "k"], ["b"], name="second"),
             helper.make_node("Relu", ["b"], ["y"], name="third")]
    k = numpy_helper.from_array(np.full((1, 4), 1.0001, dtype=np.float32), "k")
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [k]), opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    feed = {"x": np.array([[1.0001, 2.0003, 3.0007, 1000.01]], dtype=np.float32)}
    exact = feed["x"] * np.float32(1.0001) + np.float32(1.0001)
    import onnxruntime as ort

    all_fp32 = convert_fp16(model, ["first", "second", "third"])
    out = ort.InferenceSession(all_fp32.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_array_equal(out, exact)
    all_fp16 = convert_fp16(model, [])
    out16 = ort.InferenceSession(all_fp16.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert not np.array_equal(out16, exact)  # FP16 really rounds


def test_int8_graph_places_symmetric_qdq_on_weighted_inputs_only(export_dir):
    for stage in ("semantic", "detail"):
        model = onnx.load(str(export_dir / f"{stage}.int8.onnx"))
        facts = check_qdq(model)
        record = _stage(export_dir, stage)["parity"]["int8"]["int8"]
        unquantised = set(record["unquantised"]["excluded_nodes"])
        assert facts["weighted_quantized"] == facts["weighted"] - len(unquantised) > 0
        producers = {o: n for n in model.graph.node for o in n.output}
        consumers = {}
        for node in model.graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        initializers = {i.name: i for i in model.graph.initializer}
        per_channel = 0
        for node in model.graph.node:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                zero_point = initializers[node.input[2]]
                assert zero_point.data_type == TensorProto.INT8 and not numpy_helper.to_array(zero_point).any()
            if node.op_type == "Conv" and node.name not in unquantised:
                activation, weight = (producers[n] for n in node.input[:2])
                assert activation.op_type == weight.op_type == "DequantizeLinear"
                scale = numpy_helper.to_array(initializers[weight.input[1]])
                channels = initializers[weight.input[0]].dims[0]
                assert scale.shape == (channels,)  # per output channel
                per_channel += channels > 1
                assert initializers[weight.input[0]].data_type == TensorProto.INT8
            if node.op_type in ("Sigmoid", "Equal", "ScatterElements", "Where", "MaxPool", "Add"):
                for name in node.input:
                    assert name not in producers or producers[name].op_type != "DequantizeLinear", node.name
        assert per_channel > 0
        final = [n for n in model.graph.node if n.output[0] in {o.name for o in model.graph.output}]
        assert all(n.op_type != "DequantizeLinear" for n in final)


def test_int8_graph_runs_close_to_fp32_but_quantised(export_dir):
    for stage in ("semantic", "detail"):
        feeds = _feeds(export_dir, stage)
        reference = _run(export_dir / f"{stage}.onnx", feeds)
        got = _run(export_dir / f"{stage}.int8.onnx", feeds)
        for ref, out in zip(reference, got):
            rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
            # random weights: loose, but wrong scales or a lost Q/DQ pair would exceed it (or be exact)
            assert 0 < rel < 0.15, (stage, rel)


def test_int8_rebuilt_from_saved_ranges_equals_original(export_dir, tmp_path):
    for stage in ("semantic", "detail"):
        record = _stage(export_dir, stage)["parity"]["int8"]["int8"]
        rebuilt = build_int8(export_dir / f"{stage}.onnx", export_dir / record["ranges"], tmp_path / f"{stage}.onnx",
                             method=record["method"], exclude=record["unquantised"]["excluded_nodes"])
        original = onnx.load(str(export_dir / f"{stage}.int8.onnx"))
        assert rebuilt.graph.SerializeToString() == original.graph.SerializeToString()
        # the saved calibration tensors are the runtime's stage inputs at the graph's fixed size
        tensors = np.load(export_dir / record["tensors"])["image"]
        size = 64
        assert tensors.shape[1:] == (3, size, size) and tensors.dtype == np.float32
        assert len(tensors) == record["tensors_saved"] > 0 and np.isfinite(tensors).all()


def test_fp16_candidate_groups_find_pool_index_arithmetic(export_dir):
    model = onnx.load(str(export_dir / "detail.onnx"))
    groups = {g.name: g for g in fp16_candidate_groups(model)}
    assert any(name.startswith("pool0") for name in groups)
    op_types = {n.name: n.op_type for n in model.graph.node}
    pool_group = next(g for name, g in groups.items() if name.startswith("pool0"))
    kinds = {op_types[n] for n in pool_group.nodes}
    assert {"Equal", "ScatterElements", "Conv"} <= kinds
    assert "output detail" in groups and {op_types[n] for n in groups["output detail"].nodes} >= {"Sigmoid", "Conv"}


def test_collect_feeds_records_runtime_tiles_of_mixed_sizes(export_dir, tmp_path):
    from mattrt.data.synthetic import KINDS, generate_sample, sample_rng
    from mattrt.imagewrite import write_rgb
    from mattrt.runtime.tiling import TilePlan

    sizes = [(96, 80), (130, 70)]
    for index, size in enumerate(sizes):
        sample = generate_sample(KINDS[index], size, sample_rng(9, index))
        write_rgb(tmp_path / f"image{index}.png", sample.image)
    feeds = collect_stage_feeds(export_dir, parse_data_source(tmp_path))
    assert feeds["semantic"].recorded == 2  # one letterboxed canvas per image
    manifest = _manifest(export_dir)
    expected = sum(len(TilePlan.build(h, w, manifest["tile_size"], manifest["tile_overlap"],
                                      manifest["stride_multiple"])) for w, h in sizes)
    assert feeds["detail"].recorded == expected > 2  # every tile of the runtime's plans
    assert all(s["image"].shape == (1, 3, 64, 64) for s in feeds["detail"].samples)


def test_empty_or_unreadable_calibration_folder_is_an_error_and_writes_nothing(fp32_copy, tmp_path):
    before = sorted(p.name for p in fp32_copy.iterdir())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="holds no images"):
        add_precisions(fp32_copy, ["int8"], calibration=empty, log=None)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="bad.png"):
        add_precisions(fp32_copy, ["fp16"], calibration=broken, log=None)
    with pytest.raises(InputError, match="neither"):
        add_precisions(fp32_copy, ["int8"], calibration=tmp_path / "missing", log=None)
    assert sorted(p.name for p in fp32_copy.iterdir()) == before
    assert not list(fp32_copy.parent.glob(".*precision-*"))


def test_calibration_set_smaller_than_batch_calibrates_one_smaller_batch(fp32_copy):
    """`--calibration synthetic:4` with the default batch of 8: the semantic stage has 4 samples
    (one canvas per image) and calibrates them as one batch of 4, said in the log and manifest."""
    lines = []
    add_precisions(fp32_copy, ["int8"], calibration="synthetic:4", synthetic_size=TINY_IMAGE, log=lines.append)
    semantic = _stage(fp32_copy, "semantic")["parity"]["int8"]
    assert semantic["samples"] == 4
    assert semantic["int8"]["calibration_batch"] == 4 and semantic["int8"]["calibration_batch_requested"] == 8
    assert any("4 calibration sample(s), fewer than the calibration batch of 8: calibrating in batches of 4" in line
               for line in lines)
    detail = _stage(fp32_copy, "detail")["parity"]["int8"]
    assert detail["samples"] >= 8 and detail["int8"]["calibration_batch"] == 8


def test_non_finite_activations_stop_calibration(tmp_path):
    from onnx import helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 4, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1, 4, 4])
    big = numpy_helper.from_array(np.full((1,), 1e30, dtype=np.float32), "big")
    weight = numpy_helper.from_array(np.ones((1, 1, 1, 1), dtype=np.float32), "w")
    nodes = [helper.make_node("Mul", ["image", "big"], ["a"], name="scale1"),
             helper.make_node("Mul", ["a", "big"], ["b"], name="scale2"),  # overflows to inf
             helper.make_node("Conv", ["b", "w"], ["out"], name="conv")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [big, weight]),
                              opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    path = tmp_path / "overflow.onnx"
    onnx.save_model(model, str(path))
    feeds = [{"image": np.full((1, 1, 4, 4), 2.0, dtype=np.float32)} for _ in range(2)]
    ranges = tmp_path / "ranges.json"
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        calibrate_ranges(path, feeds, ranges, method="max", batch=2)
    assert not ranges.exists()


def test_unknown_precision_or_method_is_an_error(fp32_copy):
    with pytest.raises(InputError, match="unknown precision"):
        add_precisions(fp32_copy, ["int4"], log=None)
    with pytest.raises(InputError, match="calibration method"):
        add_precisions(fp32_copy, ["int8"], method="mse", log=None)


def test_output_errors_report_argmax_changes():
    reference = np.zeros((1, 3, 2, 2), np.float32)
    reference[:, 0] = 1
    candidate = reference.copy()
    candidate[0, :, 0, 0] = [0, 1, 0]
    errors = output_errors([reference], [candidate], ["trimap"])["trimap"]
    assert errors["argmax_changed"] == 0.25 and errors["max_abs"] == 1.0


def test_precision_cli_adds_fp16_and_refuses_to_replace_without_force(fp32_copy, tmp_path):
    from mattrt.cli import main

    images = tmp_path / "images"
    images.mkdir()
    from mattrt.data.synthetic import generate_sample, sample_rng
    from mattrt.imagewrite import write_rgb

    write_rgb(images / "a.png", generate_sample("salient_opaque", TINY_IMAGE, sample_rng(11, 0)).image)
    assert main(["precision", str(fp32_copy), "--precision", "fp16", "--calibration", str(images)]) == 0
    entry = _stage(fp32_copy, "detail")
    assert entry["files"]["fp16"] == "detail.fp16.onnx" and "int8" not in entry["files"]
    assert entry["parity"]["fp16"]["calibration_data"] == str(images)
    # the manifest embedded in the graphs follows the new manifest
    from mattrt.manifest import Manifest

    assert Manifest.from_onnx(fp32_copy / "detail.onnx").stage("detail").files == entry["files"]
    assert main(["precision", str(fp32_copy), "--precision", "fp16", "--calibration", str(images)]) == 1
    assert main(["precision", str(fp32_copy), "--precision", "fp16", "--calibration", str(images), "--force"]) == 0
