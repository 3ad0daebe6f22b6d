"""INT8 graphs for TensorRT's explicit quantization (strongly typed networks): symmetric int8
activations per tensor (zero point 0), per-channel symmetric int8 weights, Q/DQ only on the
inputs of weighted layers; everything else (the final sigmoid, the fusion graph, the max-unpool
index arithmetic) reads FP32 tensors. The weighted layers whose quantisation measurably hurts
stay unquantised (`plan_int8`). Built from the FP32 graph and the ranges file of the shared
calibration pass (calibration/calibrate.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from mattrt.calibration.calibrate import quantize_symmetric
from mattrt.calibration.fp16 import fp16_candidate_groups
from mattrt.calibration.graphs import (
    WEIGHTED_OPS,
    CalibrationError,
    NodeGroup,
    PrecisionPlan,
    bypass_activation_qdq,
    cpu_session,
    greedy_exclusion,
    output_channel_axis,
    output_errors,
    run_feeds,
    tensor_consumers,
    tensor_producers,
)
from mattrt.errors import InputError
from mattrt.lazy import lazy_import

onnx = lazy_import("onnx", probe="onnxruntime")


INT8_TARGET_REL_L2 = 1e-2


INT8_MIN_GAIN = 0.2


def restrict_qdq_to_weighted_inputs(model) -> int:
    """Keep Q/DQ only where a weighted layer reads it: other consumers of a dequantised
    activation are switched back to the FP32 tensor, and Q/DQ pairs nobody reads any more are
    removed. Returns the number of rewired inputs."""
    return bypass_activation_qdq(model, lambda node: node.op_type not in WEIGHTED_OPS)


def check_qdq(model) -> dict:
    """Placement facts of an INT8 graph; raises CalibrationError when a rule is broken.

    Rules: every QuantizeLinear output feeds DequantizeLinear only; every activation DQ feeds
    weighted layers only; zero points are int8 zeros; weights with more than one output channel
    have one scale per output channel, on the layer's output-channel axis. Counted: weighted
    layers and those whose two inputs are both dequantised."""

    producers = tensor_producers(model)
    initializers = {init.name: init for init in model.graph.initializer}
    consumers = tensor_consumers(model)
    facts = {"quantize": 0, "dequantize": 0, "weighted": 0, "weighted_quantized": 0, "per_channel_weights": 0}
    problems = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            facts["quantize" if node.op_type == "QuantizeLinear" else "dequantize"] += 1
            zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
            if zero_point is None or zero_point.data_type != onnx.TensorProto.INT8 or onnx.numpy_helper.to_array(zero_point).any():
                problems.append(f"{node.name}: zero point is not an int8 zero")
            if node.op_type == "QuantizeLinear":
                bad = [c.op_type for c in consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
                if bad:
                    problems.append(f"{node.name}: quantised tensor read by {bad}")
            elif node.input[0] in initializers:
                scale = onnx.numpy_helper.to_array(initializers[node.input[1]])
                weight = initializers[node.input[0]]
                users = consumers.get(node.output[0], [])
                axis = output_channel_axis(users[0], len(weight.dims)) if users else 0
                channels = weight.dims[axis] if weight.dims else 1
                given_axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                if channels > 1 and (scale.size != channels or given_axis % max(1, len(weight.dims)) != axis):
                    problems.append(f"{node.name}: weight scales are not per output channel (axis {axis}, "
                                    f"{channels} channels; got {scale.size} scale(s) on axis {given_axis})")
                elif scale.size > 1:
                    facts["per_channel_weights"] += 1
            else:
                bad = [c.op_type for c in consumers.get(node.output[0], []) if c.op_type not in WEIGHTED_OPS]
                if bad:
                    problems.append(f"{node.name}: dequantised activation read by {sorted(set(bad))}")
        elif node.op_type in WEIGHTED_OPS:
            facts["weighted"] += 1
            inputs = [producers.get(n) for n in node.input[:2]]
            if all(p is not None and p.op_type == "DequantizeLinear" for p in inputs):
                facts["weighted_quantized"] += 1
    if problems:
        raise CalibrationError("INT8 graph breaks the Q/DQ rules:\n  " + "\n  ".join(problems[:20]))
    return facts


def build_int8(fp32_path: str | Path, ranges: str | Path, out: str | Path, *, method: str = "entropy",
               exclude: Sequence[str] = ()):
    """The INT8 graph from the FP32 graph and a ranges file (no calibration data needed): the
    same inputs always give the same graph. Returns the ModelProto (also written to `out`)."""
    ranges = Path(ranges)
    if not ranges.is_file():
        raise InputError(f"ranges file {ranges} does not exist")
    quantize_symmetric(Path(fp32_path), ranges, method, exclude, Path(out))
    return finish_int8(Path(out))


rebuild_int8 = build_int8


def int8_candidate_groups(model) -> list[NodeGroup]:
    """The weighted layers of each FP16 candidate group (those are what INT8 quantises), less
    the input layers (always unquantised)."""
    weighted = {n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS}
    fixed = int8_input_layers(model).nodes
    groups = []
    for group in fp16_candidate_groups(model):
        members = (group.nodes & weighted) - fixed
        if members:
            groups.append(NodeGroup(group.name, frozenset(members), group.reason))
    return groups


def int8_input_layers(model) -> NodeGroup:
    """The weighted layers reading the graph's inputs, which every INT8 plan leaves unquantised:
    the first convolution of an image network reads every pixel, and its quantisation alone
    moved ISNet's thresholded mask on thin structures (rocket photograph: IoU against FP32 0.977
    quantised, 0.981 not, CPU graph); it holds a small share of the compute (3 input channels)."""
    inputs = {i.name for i in model.graph.input}
    readers = {n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and inputs & set(n.input)}
    return NodeGroup("input layers", frozenset(readers), "the weighted layers reading the graph inputs")


def plan_int8(fp32_path: str | Path, ranges: str | Path, feeds: Sequence[Mapping[str, np.ndarray]], *,
              method: str = "entropy", target: float = INT8_TARGET_REL_L2, min_gain: float = INT8_MIN_GAIN,
              log: Callable[[str], None] = lambda m: None) -> PrecisionPlan:
    """Choose the weighted layers an INT8 graph leaves unquantised by measurement: the same
    greedy rule as FP16 over the weighted layers of the candidate groups, rebuilding from the
    ranges file for every trial."""

    fp32 = onnx.load(str(fp32_path))
    names = [o.name for o in fp32.graph.output]
    reference = run_feeds(cpu_session(fp32), feeds)
    with tempfile.TemporaryDirectory(prefix="mattrt-int8-plan-") as scratch:

        def measure(excluded: set[str]) -> dict:
            model = build_int8(fp32_path, ranges, Path(scratch) / "trial.onnx", method=method, exclude=sorted(excluded))
            return output_errors(reference, run_feeds(cpu_session(model), feeds), names)

        return greedy_exclusion("int8", int8_candidate_groups(fp32), measure, target=target, min_gain=min_gain,
                                fixed=[int8_input_layers(fp32)], log=log)


def finish_int8(path: Path):

    model = onnx.load(str(path))
    restrict_qdq_to_weighted_inputs(model)
    check_qdq(model)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return model


__all__ = ["INT8_MIN_GAIN", "INT8_TARGET_REL_L2", "build_int8", "check_qdq", "finish_int8", "int8_candidate_groups",
           "int8_input_layers", "plan_int8", "rebuild_int8", "restrict_qdq_to_weighted_inputs"]
