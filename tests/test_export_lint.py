"""The TensorRT lint on planted graphs: each rule must name the offending node."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mattrt.cli import main
from mattrt.engines.tensorrt.lint import TABLE_FILE, lint_directory, lint_model, operator_table
from mattrt.errors import InputError

FLOAT = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, initializers=(), opset=18, domains=()):
    graph = helper.make_graph(nodes, "planted", inputs, outputs, list(initializers))
    imports = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in domains]]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 10
    return model


def tensor(name, shape, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def reasons(model):
    return [(p.node, p.op_type, p.reason) for p in lint_model(model, "planted")]


def test_table_records_its_source():
    table = operator_table()
    source = table["source"]
    assert source["document"].startswith("onnx/onnx-tensorrt") and len(source["commit"]) == 40
    assert table["opset"]["min"] == 9 and table["opset"]["max"] >= 18
    assert table["operators"]["MaxUnpool"]["supported"] is False
    assert table["operators"]["ScatterElements"]["supported"] is True
    assert json.loads(TABLE_FILE.read_text()) == table


def test_clean_graph_passes():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    assert reasons(make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", [1, 3, 4, 4])])) == []


def test_max_unpool_is_rejected():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["y", "i"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxUnpool", ["y", "i"], ["z"], name="unpool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    found = reasons(make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("z", [1, 3, 8, 8])]))
    assert ("unpool", "MaxUnpool", "TensorRT's ONNX parser does not implement this operator") in found
    assert any(node == "pool" and "Indices" in why for node, _, why in found)


def test_max_pool_with_indices_output_is_rejected():
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "i"], name="pool_with_indices", kernel_shape=[3, 3], strides=[2, 2])]
    model = make_model(nodes, [tensor("x", [1, 3, 9, 9])], [tensor("y", [1, 3, 4, 4]), tensor("i", [1, 3, 4, 4], TensorProto.INT64)])
    found = reasons(model)
    assert len(found) == 1 and found[0][:2] == ("pool_with_indices", "MaxPool") and "Indices" in found[0][2]


@pytest.mark.parametrize("op", ["ScatterND", "ScatterElements"])
def test_scatter_with_reduction_is_rejected(op):
    indices = numpy_helper.from_array(np.zeros((1, 1), dtype=np.int64), "idx")
    updates = numpy_helper.from_array(np.ones((1, 4) if op == "ScatterND" else (1, 1), dtype=np.float32), "upd")
    nodes = [helper.make_node(op, ["x", "idx", "upd"], ["y"], name="scatter_add", reduction="add")]
    model = make_model(nodes, [tensor("x", [2, 4])], [tensor("y", [2, 4])], [indices, updates])
    found = reasons(model)
    assert len(found) == 1 and found[0][0] == "scatter_add" and "reduction 'add'" in found[0][2]
    plain = helper.make_node(op, ["x", "idx", "upd"], ["y"], name="scatter")
    assert reasons(make_model([plain], [tensor("x", [2, 4])], [tensor("y", [2, 4])], [indices, updates])) == []


def qdq_model(zero_point, zp_type=np.int8, scale=np.float32(0.1), weight_scale=None):
    """x -> Q -> DQ -> Conv with per-channel int8 weights (W -> DQ)."""
    weights = numpy_helper.from_array(np.ones((2, 3, 1, 1), dtype=np.int8), "w_q")
    w_scale = numpy_helper.from_array(
        np.full(2, 0.05, dtype=np.float32) if weight_scale is None else weight_scale, "w_scale"
    )
    w_zero = numpy_helper.from_array(np.zeros(2, dtype=np.int8), "w_zero")
    inits = [
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "a_scale"),
        numpy_helper.from_array(np.array(zero_point, dtype=zp_type), "a_zero"),
        weights, w_scale, w_zero,
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zero"], ["x_q"], name="quant_x"),
        helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zero"], ["x_dq"], name="dequant_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dequant_w", axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], name="conv"),
    ]
    return make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 2, 4, 4])], inits)


def test_symmetric_int8_qdq_passes():
    assert reasons(qdq_model(0)) == []


def test_nonzero_zero_point_is_rejected():
    found = reasons(qdq_model(3))
    assert {node for node, _, _ in found} == {"quant_x", "dequant_x"}
    assert all("zero point" in why and "not all 0" in why for _, _, why in found)


def test_uint8_qdq_is_rejected():
    found = reasons(qdq_model(0, zp_type=np.uint8))
    assert {node for node, _, _ in found} == {"quant_x", "dequant_x"}
    assert any("UINT8" in why for _, _, why in found)


def test_per_channel_scale_on_activations_is_rejected():
    model = qdq_model(0, scale=np.full(3, 0.1, dtype=np.float32))
    for node in model.graph.node[:2]:
        node.attribute.append(helper.make_attribute("axis", 1))
    found = reasons(model)
    assert {node for node, _, _ in found} == {"quant_x", "dequant_x"}
    assert all("per-channel" in why for _, _, why in found)


def test_opset_custom_domain_and_resize_mode():
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="bicubic", mode="cubic"),
        helper.make_node("FancyOp", ["r"], ["y"], name="plugin_op", domain="com.example"),
    ]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    model = make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", [1, 3, 8, 8])], [scales], opset=21, domains=["com.example"])
    found = reasons(model)
    assert ("", "", "opset 21 is outside 9..20, the range TensorRT 10.x and 11.x parse") in found
    assert any(node == "bicubic" and "cubic" in why for node, _, why in found)
    assert any(node == "plugin_op" and "custom domain" in why for node, _, why in found)


def test_axes_must_be_constant():
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="dynamic_slice")]
    starts = numpy_helper.from_array(np.array([0], dtype=np.int64), "starts")
    ends = numpy_helper.from_array(np.array([2], dtype=np.int64), "ends")
    model = make_model(nodes, [tensor("x", [4, 4]), tensor("axes", [1], TensorProto.INT64)], [tensor("y", [2, 4])], [starts, ends])
    found = reasons(model)
    assert len(found) == 1 and found[0][0] == "dynamic_slice" and "constant" in found[0][2]


def test_lint_command_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    nodes = [helper.make_node("MaxUnpool", ["x", "i"], ["z"], name="unpool", kernel_shape=[2, 2], strides=[2, 2])]
    onnx.save(make_model(nodes, [tensor("x", [1, 1, 2, 2]), tensor("i", [1, 1, 2, 2], TensorProto.INT64)], [tensor("z", [1, 1, 4, 4])]), str(bad / "detail.onnx"))
    good = tmp_path / "good.onnx"
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x", [1])], [tensor("y", [1])]), str(good))
    assert main(["lint", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "detail.onnx: node 'unpool' (MaxUnpool)" in out
    assert main(["lint", str(good)]) == 0
    assert not lint_directory(bad).passed
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no .onnx files"):
        lint_directory(empty)
