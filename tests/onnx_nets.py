"""Tiny synthetic alpha networks as ONNX graphs, and their model cards, for the import and fetch tests.

`alpha_net(...)` builds a 3 -> 4 -> 1 channel network shaped like imgly's ISNet export: FP16 weights
and compute with Cast nodes around a Resize kept in FP32 (as onnxconverter-common's float16
converter leaves it), the Casts appended after their consumers (not topologically sorted), a
Resize whose `sizes` follow the tensor's batch (Shape -> Slice -> Concat), and side outputs (one
with 4 channels). Variants: NHWC input and output, logits instead of probabilities, plain FP32,
and the refusals' graphs (two image inputs, no 4-D input, a 2-channel output, a batch baked into a
Reshape, ConvInteger that TensorRT's parser lacks).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SIZE = 32


def _init(name: str, array: np.ndarray):
    return numpy_helper.from_array(array, name)


def alpha_net(*, layout: str = "NCHW", activation: str = "none", fp16: bool = True, side_outputs: bool = True,
              unsorted: bool = True, size: int = SIZE, batch="N", input_name: str = "input",
              output_name: str = "output", out_channels: int = 1, seed: int = 0, reshape_batch: bool = False,
              conv_integer: bool = False, dynamic_size: bool = False, middle_conv: bool = False):
    """The network (module docstring); dynamic_size: height and width are named dimensions and the
    Resize takes scales, so any even size runs; middle_conv: a 4 -> 4 convolution after the pooling,
    a layer that reads neither the graph input nor feeds the head (INT8 plans quantise it)."""
    rng = np.random.default_rng(seed)
    side_len = size
    size = "S" if dynamic_size else size
    float_type = np.float16 if fp16 else np.float32
    onnx_float = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(float_type)
    b1 = (rng.standard_normal(4) * 0.1).astype(float_type)
    w2 = (rng.standard_normal((out_channels, 4, 3, 3)) * 0.5).astype(float_type)
    b2 = (rng.standard_normal(out_channels) * 0.1).astype(float_type)
    inits = [_init("w1", w1), _init("b1", b1), _init("w2", w2), _init("b2", b2),
             _init("hw", np.array([side_len, side_len], dtype=np.int64)), _init("zero", np.array([0], dtype=np.int64)),
             _init("two", np.array([2], dtype=np.int64))]
    nodes, tail = [], []  # tail: Casts, appended at the end when unsorted
    x = input_name
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        x = "x_nchw"
    if fp16:
        tail.append(helper.make_node("Cast", [x], ["x16"], name="graph_input_cast_0", to=TensorProto.FLOAT16))
        x = "x16"
    if conv_integer:
        inits += [_init("w1q", rng.integers(-8, 8, (4, 3, 3, 3), dtype=np.int8)),
                  _init("w1q_zp", np.array(0, dtype=np.int8)), _init("w1q_scale", np.array(0.05, dtype=float_type))]
        nodes += [helper.make_node("DynamicQuantizeLinear", [x], ["xq", "xq_scale", "xq_zp"], name="quantise_x"),
                  helper.make_node("ConvInteger", ["xq", "w1q", "xq_zp", "w1q_zp"], ["c1i"], name="conv1_integer",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Cast", ["c1i"], ["c1f"], name="conv1_cast", to=onnx_float),
                  helper.make_node("Mul", ["xq_scale", "w1q_scale"], ["c1_scale"], name="conv1_scale"),
                  helper.make_node("Mul", ["c1f", "c1_scale"], ["c1"], name="conv1_rescale")]
    else:
        nodes.append(helper.make_node("Conv", [x, "w1", "b1"], ["c1"], name="/conv1/Conv", pads=[1, 1, 1, 1]))
    nodes += [helper.make_node("Relu", ["c1"], ["r1"], name="/relu1/Relu"),
              helper.make_node("MaxPool", ["r1"], ["p1"], name="/pool1/MaxPool", kernel_shape=[2, 2], strides=[2, 2])]
    resize_in = "p1"
    if middle_conv:
        inits += [_init("w_mid", (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(float_type)),
                  _init("b_mid", (rng.standard_normal(4) * 0.1).astype(float_type))]
        nodes += [helper.make_node("Conv", ["p1", "w_mid", "b_mid"], ["c_mid"], name="/conv2/Conv", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c_mid"], ["p_mid"], name="/relu2/Relu")]
        resize_in = "p_mid"
    if fp16:
        tail.append(helper.make_node("Cast", [resize_in], ["p1f"], name="/Resize_input_cast0", to=TensorProto.FLOAT))
        resize_in = "p1f"
    if dynamic_size:
        inits.append(_init("up_scales", np.array([1, 1, 2, 2], dtype=np.float32)))
        nodes.append(helper.make_node("Resize", [resize_in, "", "up_scales"], ["upf"], name="/Resize", mode="linear",
                                      coordinate_transformation_mode="half_pixel"))
    else:
        nodes += [helper.make_node("Shape", [resize_in], ["p_shape"], name="/Shape"),
                  helper.make_node("Slice", ["p_shape", "zero", "two"], ["nc"], name="/Slice"),
                  helper.make_node("Concat", ["nc", "hw"], ["up_size"], name="/Concat", axis=0),
                  helper.make_node("Resize", [resize_in, "", "", "up_size"], ["upf"], name="/Resize", mode="linear",
                                   coordinate_transformation_mode="half_pixel")]
    up = "upf"
    if fp16:
        tail.append(helper.make_node("Cast", ["upf"], ["up16"], name="/Resize_output_cast0", to=TensorProto.FLOAT16))
        up = "up16"
    if reshape_batch:  # a batch of 1 baked into the graph: the dynamic batch cannot hold
        inits.append(_init("shape_1", np.array([1, 4, side_len, side_len], dtype=np.int64)))
        nodes.append(helper.make_node("Reshape", [up, "shape_1"], ["up_fixed"], name="/Reshape"))
        up = "up_fixed"
    nodes.append(helper.make_node("Conv", [up, "w2", "b2"], ["logits"], name="/side1/Conv", pads=[1, 1, 1, 1]))
    head = "logits"
    if activation == "none":
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["prob"], name="/Sigmoid"))
        head = "prob"
    outputs = []
    final = head
    if fp16:
        tail.append(helper.make_node("Cast", [head], ["head32"], name="graph_output_cast_0", to=TensorProto.FLOAT))
        final = "head32"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [final], [output_name], name="to_nhwc", perm=[0, 2, 3, 1]))
        out_shape = [batch, size, size, out_channels]
    else:
        nodes.append(helper.make_node("Identity", [final], [output_name], name="output_identity"))
        out_shape = [batch, out_channels, size, size]
    outputs.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape))
    if side_outputs:
        side = "r1"
        if fp16:
            tail.append(helper.make_node("Cast", ["r1"], ["side_features"], name="side_cast", to=TensorProto.FLOAT))
            side = "side_features"
        else:
            nodes.append(helper.make_node("Identity", ["r1"], ["side_features"], name="side_identity"))
            side = "side_features"
        outputs.append(helper.make_tensor_value_info(side, TensorProto.FLOAT, [batch, 4, size, size]))
        nodes.append(helper.make_node("Identity", ["logits"], ["side_logits16"], name="side_logits"))
        if fp16:
            tail.append(helper.make_node("Cast", ["side_logits16"], ["side_logits"], name="side_logits_cast",
                                         to=TensorProto.FLOAT))
        else:
            nodes.append(helper.make_node("Identity", ["side_logits16"], ["side_logits"], name="side_logits_id"))
        outputs.append(helper.make_tensor_value_info("side_logits", TensorProto.FLOAT,
                                                     [batch, out_channels, size, size]))
    in_shape = [batch, size, size, 3] if layout == "NHWC" else [batch, 3, size, size]
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, in_shape)]
    if unsorted:
        ordered = nodes + tail
    else:
        ordered = _toposort(nodes + tail, [input_name] + [i.name for i in inits])
    graph = helper.make_graph(ordered, "alpha_net", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="mattrt-tests")
    model.ir_version = 8
    return model


def _toposort(nodes, known):
    known, ordered, pending = set(known) | {""}, [], list(nodes)
    while pending:
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
                pending.remove(node)
                break
        else:
            raise AssertionError("cycle")
    return ordered


def two_input_net(size: int = SIZE):
    a = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])
    b = helper.make_tensor_value_info("trimap", TensorProto.FLOAT, [1, 1, size, size])
    out = helper.make_tensor_value_info("alpha_out", TensorProto.FLOAT, [1, 1, size, size])
    nodes = [helper.make_node("ReduceMean", ["image"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Add", ["m", "trimap"], ["alpha_out"])]
    model = helper.make_model(helper.make_graph(nodes, "two", [a, b], [out]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def flat_input_net(size: int = SIZE):
    a = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3 * size * size])
    out = helper.make_tensor_value_info("alpha_out", TensorProto.FLOAT, [1, size * size])
    shape = numpy_helper.from_array(np.array([1, 3, size * size], dtype=np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["pixels", "shape"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["alpha_out3"], axes=[1], keepdims=0),
             helper.make_node("Identity", ["alpha_out3"], ["alpha_out"])]
    model = helper.make_model(helper.make_graph(nodes, "flat", [a], [out], [shape]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def card_text(name: str, file: str = "net.onnx", *, input_name: str = "input", output_name: str = "output",
              layout: str = "NCHW", activation: str = "none", size: int | None = SIZE, fit: str = "stretch",
              extra: str = "", sha256: str | None = None) -> str:
    lines = [f'name = "{name}"', f'file = "{file}"']
    if sha256:
        lines.append(f'sha256 = "{sha256}"')
    lines += ['source = "https://example.org/tiny"', 'license = "CC0-1.0"', "", "[input]", f'name = "{input_name}"',
              f'layout = "{layout}"']
    if size is not None:
        lines.append(f"size = [{size}, {size}]")
    lines += [f'fit = "{fit}"', "scale = 255.0", "mean = [0.5, 0.5, 0.5]", "std = [1.0, 1.0, 1.0]", "", "[output]",
              f'name = "{output_name}"', f'activation = "{activation}"', extra]
    return "\n".join(lines) + "\n"


def write_model(folder: Path, name: str, model, **card) -> Path:
    """Save `model` as folder/net.onnx and a card for it as folder/<name>.toml; the card's path."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / "net.onnx"))
    path = folder / f"{name}.toml"
    path.write_text(card_text(name, **card))
    return path


__all__ = ["SIZE", "alpha_net", "card_text", "flat_input_net", "two_input_net", "write_model"]
