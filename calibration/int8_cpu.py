"""INT8 graphs for onnxruntime's CPU provider (U8S8): uint8 activations with zero points, int8
per-channel symmetric weights and int32 biases, Q/DQ on the inputs and outputs of the weighted
layers and of CPU_INT8_OPS, so that the provider fuses them into integer kernels. Built from the
same ranges file as the TensorRT form, with the same weighted layers unquantised and the same
FP32 index arithmetic. Not a TensorRT graph (TensorRT's explicit quantization needs zero point 0)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from mattrt.calibration.calibrate import calibration_method, quiet_quantize
from mattrt.calibration.graphs import (
    CPU_INT8_OPS,
    WEIGHTED_OPS,
    CalibrationError,
    bypass_activation_qdq,
    calib_file,
    constant_names,
    cpu_session,
    describe_error,
    output_channel_axis,
    output_errors,
    ranges_file,
    run_feeds,
    tensor_consumers,
    tensor_producers,
    unpool_index_nodes,
)
from mattrt.errors import InputError
from mattrt.lazy import lazy_import

onnx = lazy_import("onnx", probe="onnxruntime")
ort_quantization = lazy_import("onnxruntime.quantization", probe="onnxruntime")


# The TensorRT-form graph gives onnxruntime's CPU provider nothing to fuse: its integer kernels
# (QLinearConv, QLinearAdd, ...) replace DequantizeLinear -> op -> QuantizeLinear groups, so a
# convolution needs its output quantised too, and they are fastest with uint8 activations and
# int8 weights (U8S8). The CPU graph therefore quantises the outputs of the weighted layers and
# the cheap ops between them, asymmetrically, from the same ranges file.
CPU_INT8_BACKEND = "onnxruntime"


CPU_INT8_RECORD = "int8_cpu"  # key of the CPU graph's record in a stage's `parity`


_REMOVABLE_ACTIVATIONS = ("Relu", "Clip")  # folded into the producer's quantisation by onnxruntime


def cpu_graph_file(stage: str) -> str:
    return f"{stage}.int8_cpu.onnx"


def cpu_int8_fp32_nodes(model) -> set[str]:
    """Nodes the CPU graph keeps on exact FP32 tensors (the TensorRT-form graph never quantises
    them either): every unpooling max-pool with its index arithmetic (quantised windows tie and
    move the unpooled positions), and the Relu/Clip that produce what they read (onnxruntime would
    otherwise fold those into the upstream quantisation, leaving no FP32 tensor to read)."""
    protected: set[str] = set()
    for index_nodes in unpool_index_nodes(model).values():
        protected |= index_nodes
    producers = tensor_producers(model)
    read = {name for node in model.graph.node if node.name in protected for name in node.input}
    protected |= {producers[name].name for name in read
                  if name in producers and producers[name].op_type in _REMOVABLE_ACTIVATIONS}
    return protected


def _cpu_quantize_options() -> dict:
    return {
        "ActivationSymmetric": False,  # uint8 with a zero point: the range each tensor really has
        "WeightSymmetric": True,  # int8 weights, zero point 0, one scale per output channel
    }


def _tensors_to_calibrate(model, op_types: Sequence[str], skip: set[str] = frozenset()) -> set[str]:
    """Activations read or written by nodes of `op_types` (not in `skip`): the ranges the CPU
    graph needs, a subset of what calibration records (the same rule as onnxruntime's)."""
    constants = constant_names(model)
    graph_inputs = {i.name for i in model.graph.input}
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {v.name for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
              if v.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    names = set()
    for node in model.graph.node:
        if node.op_type in op_types and node.name not in skip:
            names |= {n for n in [*node.input, *node.output] if n and n not in constants}
    return {n for n in names if n in floats or n in graph_inputs}


def build_cpu_int8(fp32_path: str | Path, ranges: str | Path, out: str | Path, *, method: str = "entropy",
                   exclude: Sequence[str] = ()):
    """onnxruntime's CPU INT8 graph (U8S8 Q/DQ, per-channel weights) from the FP32 graph and the
    ranges file `calibrate_ranges` wrote, leaving the weighted layers in `exclude` (the INT8 plan's)
    unquantised: the same inputs always give the same graph. Returns the ModelProto (also written
    to `out`)."""
    fp32_path, ranges, out = Path(fp32_path), Path(ranges), Path(out)
    if not ranges.is_file():
        raise InputError(f"ranges file {ranges} does not exist")
    fp32 = onnx.load(str(fp32_path))
    fixed = cpu_int8_fp32_nodes(fp32)
    skipped = fixed | set(exclude)
    recorded = set(ort_quantization.calibrate.load_tensors_data(ranges).keys())
    missing = sorted(_tensors_to_calibrate(fp32, CPU_INT8_OPS, skipped) - recorded)
    if missing:
        raise CalibrationError(
            f"{ranges.name} has no ranges for {len(missing)} tensor(s) the CPU INT8 graph quantises "
            f"({', '.join(missing[:5])}); it was calibrated for the TensorRT-form graph only. Calibrate again: "
            "`mattrt precision DIR --precision int8 --force`"
        )
    try:
        quiet_quantize(
            model_input=str(fp32_path), model_output=str(out), calibration_data_reader=None,
            quant_format=ort_quantization.QuantFormat.QDQ, op_types_to_quantize=list(CPU_INT8_OPS),
            per_channel=True, reduce_range=False, activation_type=ort_quantization.QuantType.QUInt8,
            weight_type=ort_quantization.QuantType.QInt8, calibrate_method=calibration_method(method),
            nodes_to_exclude=sorted(skipped), calibration_cache_path=str(ranges), extra_options=_cpu_quantize_options(),
        )
    except (KeyError, ValueError) as exc:
        raise CalibrationError(f"onnxruntime could not quantise {fp32_path.name} for the CPU: {exc}") from exc
    model = onnx.load(str(out))
    _restore_fp32_reads(model, fp32, fixed)
    check_cpu_qdq(model, fixed)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out))
    return model


rebuild_cpu_int8 = build_cpu_int8


def _restore_fp32_reads(model, fp32, nodes: set[str]) -> None:
    """Make `nodes` read the FP32 tensors they read in the FP32 graph, not dequantised copies
    (onnxruntime's Q/DQ pairs feed every consumer of a quantised tensor)."""
    bypass_activation_qdq(model, lambda node: node.name in nodes)
    def reads(graph) -> dict[str, list]:
        made_by = {out: node.name for node in graph.node for out in node.output}
        return {node.name: [(name, made_by.get(name)) for name in node.input] for node in graph.node if node.name in nodes}

    # same tensor names made by the same nodes (a Relu folded into its producer's quantisation would
    # leave its output's name on the pre-activation tensor)
    expected, got = reads(fp32.graph), reads(model.graph)
    wrong = sorted(name for name in expected if got.get(name) != expected[name])
    if wrong:
        raise CalibrationError(f"the CPU INT8 graph changed the inputs of FP32 node(s) {', '.join(wrong[:5])}")


def check_cpu_qdq(model, fp32_nodes: Iterable[str] = ()) -> dict:
    """Facts of a CPU INT8 graph; raises CalibrationError when a rule is broken.

    Rules: activations are uint8 (any zero point), weights int8 with zero point 0 and one scale
    per output channel, every scale finite and positive, and the nodes in `fp32_nodes` read no
    dequantised tensor. Counted: Q/DQ nodes, weighted layers and those with dequantised inputs and a
    quantised output (what the CPU provider fuses into integer kernels)."""
    producers = tensor_producers(model)
    initializers = {init.name: init for init in model.graph.initializer}
    consumers = tensor_consumers(model)
    fp32_nodes = set(fp32_nodes)
    facts = {"quantize": 0, "dequantize": 0, "weighted": 0, "weighted_integer": 0, "per_channel_weights": 0,
             "fp32_nodes": len(fp32_nodes)}
    problems = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            facts["quantize" if node.op_type == "QuantizeLinear" else "dequantize"] += 1
            scale = initializers.get(node.input[1])
            values = np.asarray(onnx.numpy_helper.to_array(scale)) if scale is not None else None
            if values is None or not np.isfinite(values).all() or (values <= 0).any():
                problems.append(f"{node.name}: scale is not a finite positive constant")
            zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
            weight = node.op_type == "DequantizeLinear" and node.input[0] in initializers
            if weight:
                data = initializers[node.input[0]]
                if data.data_type == onnx.TensorProto.INT32:
                    continue  # a bias: int32, scale = input scale x weight scale
                if (zero_point is None or zero_point.data_type != onnx.TensorProto.INT8
                        or onnx.numpy_helper.to_array(zero_point).any()):
                    problems.append(f"{node.name}: weight zero point is not an int8 zero")
                users = consumers.get(node.output[0], [])
                axis = output_channel_axis(users[0], len(data.dims)) if users else 0
                channels = data.dims[axis] if data.dims else 1
                if channels > 1 and (values is None or values.size != channels):
                    problems.append(f"{node.name}: weight scales are not per output channel")
                elif values is not None and values.size > 1:
                    facts["per_channel_weights"] += 1
            elif zero_point is None or zero_point.data_type != onnx.TensorProto.UINT8:
                problems.append(f"{node.name}: activation is not quantised to uint8")
        elif node.op_type in WEIGHTED_OPS:
            facts["weighted"] += 1
            inputs = [producers.get(n) for n in node.input[:2]]
            readers = consumers.get(node.output[0], [])
            if (all(p is not None and p.op_type == "DequantizeLinear" for p in inputs)
                    and len(readers) == 1 and readers[0].op_type == "QuantizeLinear"):
                facts["weighted_integer"] += 1
        if node.name in fp32_nodes:
            read = [n for n in node.input if n in producers and producers[n].op_type == "DequantizeLinear"
                    and producers[n].input[0] not in initializers]
            if read:
                problems.append(f"{node.name}: reads dequantised {read[0]} (must read FP32)")
    if problems:
        raise CalibrationError("CPU INT8 graph breaks its Q/DQ rules:\n  " + "\n  ".join(problems[:20]))
    return facts


def add_cpu_int8(entry, fp32_path: Path, ranges: Path, staging: Path, method: str, excluded: Sequence[str],
                  reference: Sequence[np.ndarray], samples: Sequence[Mapping[str, np.ndarray]], int8_record: dict,
                  log: Callable[[str], None]) -> tuple[str, object]:
    """Build a stage's CPU INT8 graph beside its TensorRT-form graph (same ranges, same unquantised
    layers), measure it against FP32 and name it in the manifest entry: backend_files and the
    parity record CPU_INT8_RECORD. Returns (file name, ModelProto) for the caller to publish."""
    started = time.perf_counter()
    name = cpu_graph_file(entry.name)
    log(f"  {entry.name} -> int8 for {CPU_INT8_BACKEND} on the CPU")
    fp32_nodes = cpu_int8_fp32_nodes(onnx.load(str(fp32_path)))
    proto = build_cpu_int8(fp32_path, ranges, staging / name, method=method, exclude=excluded)
    outputs = [o.name for o in proto.graph.output]
    errors = output_errors(reference, run_feeds(cpu_session(proto), samples), outputs)
    if not all(e["finite"] for e in errors.values()):
        raise CalibrationError(f"stage {entry.name!r}: the CPU INT8 graph produces NaN or infinite outputs")
    log("    int8 (cpu) vs fp32: " + ", ".join(describe_error(k, v) for k, v in errors.items()))
    entry.backend_files.setdefault(CPU_INT8_BACKEND, {})["int8"] = name
    entry.parity[CPU_INT8_RECORD] = {
        "backend": CPU_INT8_BACKEND,
        "precision": "int8",
        "file": name,
        "calibration_data": int8_record["calibration_data"],
        "samples": int8_record["samples"],
        "int8_cpu": {
            "method": method,
            "ranges": ranges_file(entry.name),
            "tensors": calib_file(entry.name),
            "activations": "uint8 asymmetric per tensor (scale and zero point from the calibrated range)",
            "weights": "int8 symmetric per output channel; int32 biases",
            "quantised_ops": list(CPU_INT8_OPS),
            "unquantised": sorted(excluded),
            "unquantised_from": "the int8 plan (int8.unquantised.excluded_nodes): the same layers stay FP32",
            "fp32_nodes": len(fp32_nodes),
            "fp32_rule": "every unpooling max-pool, its index arithmetic and the Relu/Clip producing what they "
                         "read run on FP32 tensors, as in the TensorRT-form graph",
            "rebuild": "calibration.int8_cpu.build_cpu_int8(fp32 graph, ranges, out, method=method, "
                       "exclude=unquantised)",
            "qdq": check_cpu_qdq(proto, fp32_nodes),
            "tensorrt": "not a TensorRT graph (uint8 activations with zero points); TensorRT and `mattrt lint` use "
                        "files['int8']",
        },
        "vs_fp32": errors,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return name, proto


__all__ = ["CPU_INT8_BACKEND", "CPU_INT8_RECORD", "add_cpu_int8", "build_cpu_int8", "check_cpu_qdq", "cpu_graph_file",
           "cpu_int8_fp32_nodes", "rebuild_cpu_int8"]
