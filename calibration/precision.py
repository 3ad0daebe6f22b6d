"""FP16 and INT8 variants of an export directory's stage graphs (TensorRT 11 is strongly typed:
precision lives in the ONNX graph, see DESIGN.md).

    add_precisions("exports/aim", ["fp16", "int8"], calibration="synthetic:32", method="entropy")

writes, beside each stage's FP32 graph `<stage>.onnx`:
- `<stage>.fp16.onnx`: mixed precision. Everything runs in FP16 except the nodes measurement
  says need FP32 (below); inputs and outputs stay FP32 (keep_io_types).
- `<stage>.int8.onnx`: explicit Q/DQ for TensorRT: symmetric int8 (zero point 0) activations per
  tensor, per-channel symmetric int8 weights, Q/DQ only on the inputs of weighted layers (Conv,
  ConvTranspose, Gemm, MatMul). Everything else reads the FP32 tensors: no Q/DQ before the final
  sigmoid, in the fusion graph or in the max-unpool index arithmetic (which compares pooled
  values with their windows; quantised copies would tie and move the unpooling positions).
  Weighted layers whose quantisation measurably hurts stay unquantised (below).
- `<stage>.int8_cpu.onnx`: the INT8 graph for onnxruntime's CPU provider (U8S8: uint8
  activations with zero points, int8 per-channel symmetric weights, Q/DQ on the inputs and
  outputs of the weighted layers and of the ops in CPU_INT8_OPS, so that the provider fuses them
  into integer kernels; the TensorRT form runs no faster than FP32 there). Built from the same
  ranges file, with the same weighted layers unquantised and the same FP32 index arithmetic.
  Not a TensorRT graph: TensorRT's explicit quantization needs zero point 0.
- `<stage>.int8.ranges.json`: the calibrated ranges (onnxruntime's calibration cache format) of
  every tensor either INT8 graph quantises (min/max per tensor, clipped by the calibration
  method); `rebuild_int8` / `rebuild_cpu_int8` turn the FP32 graph and this file back into the
  identical INT8 graphs with no calibration data.
- `<stage>.int8.calib.npz`: the calibration inputs (a bounded, evenly spaced subset).
The manifest lists each new graph under its precision in the stage's `files` (what TensorRT and
the lint read), the CPU graph under `backend_files["onnxruntime"]["int8"]` (what the onnxruntime
backend runs for --precision int8 on either device: backend_files is keyed by backend only; on
a GPU the INT8 path is TensorRT with the symmetric graph, and onnxruntime's CUDA provider is
there for checking, where running the same graph as on the CPU keeps one onnxruntime INT8
result per export), and records per
precision (in the stage's `parity` dictionary, the manifest's free-form per-graph record; the CPU
graph under "int8_cpu") the error against FP32 on the calibration inputs, the FP32 nodes of the
FP16 graph and the calibration settings and files. The fusion graph stays FP32.

Exclusions, measured per stage (`plan_fp16`, `plan_int8`): build the variant with nothing
excluded, measure the error of the stage outputs against FP32 on the calibration inputs, then
greedily exclude the candidate group that removes the most error (FP16: kept in FP32; INT8: its
weighted layers left unquantised) until the worst output's relative L2 error is at most the
target (FP16 1e-3, INT8 1e-2) or no group removes at least 20% of what is left.
Candidate groups:
- "pool<k> indices": a max-pool whose indices drive a max-unpool (ScatterElements), with the
  nodes that compute its input since the previous pool and its index arithmetic. FP16 rounding
  creates ties and near-ties in the pooling windows, the first-maximum rule then picks other
  positions and the unpooling puts decoder features on other pixels: full-size errors on a few
  pixels. Only exact FP32 pool inputs avoid this, so the group includes their producers.
- "output <name>": the chain from the last weighted layer to each graph output (head conv,
  sigmoid, normalisation).
- "reductions": Softmax, Sigmoid, Reduce*, Div, Exp, Log, Pow, Sqrt nodes (squeeze-and-
  excitation, spatial attention, probability normalisation).
onnxruntime's converter rounds the output of every blocked node to FP16 and back; mattrt
folds those Cast pairs, so consecutive FP32 nodes exchange exact FP32 values.

Calibration inputs come from `calibration.feeds` (the runtime's letterboxed canvases and
tiles of real images); a stage with fewer samples than the calibration batch calibrates them
as one smaller batch (logged, and recorded in the manifest). Failures (no images, non-finite
activations or ranges, a graph that fails the TensorRT lint) raise before anything is written
to the export directory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

import numpy as np

from mattrt.errors import InputError, MattrtError
from mattrt.lazy import lazy_import
from mattrt.manifest import MANIFEST_FILE, Manifest, check_graph_file, embed_manifest

onnx = lazy_import("onnx", probe="onnxruntime")
ort = lazy_import("onnxruntime", probe="onnxruntime")
float16 = lazy_import("onnxruntime.transformers.float16", probe="onnxruntime")
quantization = lazy_import("onnxruntime.quantization", probe="onnxruntime")
calibrate = lazy_import("onnxruntime.quantization.calibrate", probe="onnxruntime")
# Bound lazily too: `mattrt export --help` reads this module's argument definitions.
calibration_feeds = lazy_import("mattrt.calibration.feeds")
lint = lazy_import("mattrt.runtime.lint")


if TYPE_CHECKING:
    import numpy as np
else:  # loaded on first use: `mattrt --help` imports this module
    np = lazy_import("numpy")
onnx = lazy_import("onnx", probe="onnxruntime")
ort_quantization = lazy_import("onnxruntime.quantization", probe="onnxruntime")

PRECISIONS = ("fp16", "int8")
CALIBRATION_METHODS = ("entropy", "percentile", "max")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
REDUCTION_OPS = ("Softmax", "Sigmoid", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2", "Div", "Exp", "Log",
                 "Pow", "Sqrt")
FP16_TARGET_REL_L2 = 1e-3
FP16_MIN_GAIN = 0.2
INT8_TARGET_REL_L2 = 1e-2
INT8_MIN_GAIN = 0.2
# Samples the greedy selections measure on (each trial runs them all).
MEASURE_SAMPLES = 32
DEFAULT_CALIBRATION_BATCH = 8
DEFAULT_SAVED_SAMPLES = 32
DEFAULT_PERCENTILE = 99.999


class CalibrationError(MattrtError):
    """A precision variant that cannot be produced from the given graph or data."""


def graph_file(stage: str, precision: str) -> str:
    return f"{stage}.onnx" if precision == "fp32" else f"{stage}.{precision}.onnx"


def ranges_file(stage: str) -> str:
    return f"{stage}.int8.ranges.json"


def calib_file(stage: str) -> str:
    return f"{stage}.int8.calib.npz"


# -- graph helpers -----------------------------------------------------------------------------
def _load(model):

    if isinstance(model, (str, Path)):
        return onnx.load(str(model))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _producers(model) -> dict:
    return {out: node for node in model.graph.node for out in node.output if out}


def _constants(model) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    names |= {node.output[0] for node in model.graph.node if node.op_type == "Constant"}
    return names


def _ancestors(model, tensors: Iterable[str], stop: set[str] = frozenset()) -> set[str]:
    """Names of the nodes that compute `tensors`, not looking past the tensors in `stop`."""
    producers = _producers(model)
    constants = _constants(model)
    seen: set[str] = set()
    stack = [t for t in tensors]
    while stack:
        tensor = stack.pop()
        if tensor in stop or tensor in constants:
            continue
        node = producers.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(i for i in node.input if i)
    return seen


def _session(model, threads: int | None = None):

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(session, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of every feed (a list per graph output, concatenated over feeds)."""
    names = [o.name for o in session.get_outputs()]
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for feed in feeds:
        for i, value in enumerate(session.run(names, dict(feed))):
            parts[i].append(np.asarray(value))
    return [np.concatenate(p) for p in parts]


def output_errors(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], names: Sequence[str]) -> dict:
    """Per output: relative L2, max abs and mean abs error of candidate against reference
    (and for an output named "trimap", the fraction of pixels whose argmax class differs)."""
    result = {}
    for name, ref, got in zip(names, reference, candidate):
        ref64 = ref.astype(np.float64)
        got64 = got.astype(np.float64)
        if not np.isfinite(got64).all():
            result[name] = {"rel_l2": float("inf"), "max_abs": float("inf"), "mean_abs": float("inf"), "finite": False}
            continue
        diff = got64 - ref64
        norm = float(np.linalg.norm(ref64))
        entry = {
            "rel_l2": float(np.linalg.norm(diff) / (norm if norm > 0 else 1.0)),
            "max_abs": float(np.abs(diff).max()) if diff.size else 0.0,
            "mean_abs": float(np.abs(diff).mean()) if diff.size else 0.0,
            "finite": True,
        }
        if name == "trimap" and ref.ndim == 4 and ref.shape[1] == 3:
            entry["argmax_changed"] = float((ref.argmax(1) != got.argmax(1)).mean())
        result[name] = entry
    return result


def _describe_error(name: str, error: Mapping[str, float]) -> str:
    text = f"{name} rel L2 {error['rel_l2']:.2e} max abs {error['max_abs']:.2e}"
    if "argmax_changed" in error:
        text += f" argmax changed {error['argmax_changed']:.2%}"
    return text


def worst_rel_l2(errors: Mapping[str, Mapping[str, float]]) -> float:
    return max((e["rel_l2"] for e in errors.values()), default=0.0)


# -- FP16 ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeGroup:
    name: str
    nodes: frozenset[str]
    reason: str


def _dedupe_nodes(model) -> None:
    """Drop repeated identical nodes (the converter emits one Cast per blocked consumer, all with
    the same name and output, when a tensor feeds several blocked nodes)."""
    kept, seen = [], {}
    for node in model.graph.node:
        key = tuple(node.output)
        serialised = node.SerializeToString()
        if key in seen:
            if seen[key] != serialised:
                raise CalibrationError(f"FP16 conversion produced two different nodes writing {key[0]!r}")
            continue
        seen[key] = serialised
        kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _cast_target(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _fold_cast_round_trips(model) -> int:
    """Make consumers of Cast(FP16 -> FP32)(Cast(FP32 -> FP16)(x)) read x itself; returns how many.
    The converter wraps every blocked node in casts, so two adjacent FP32 nodes would otherwise
    exchange values rounded to FP16."""

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    producers = _producers(model)
    replace = {}
    for node in model.graph.node:
        if node.op_type != "Cast" or _cast_target(node) != onnx.TensorProto.FLOAT:
            continue
        source = producers.get(node.input[0])
        if (source is not None and source.op_type == "Cast" and _cast_target(source) == onnx.TensorProto.FLOAT16
                and types.get(source.input[0]) == onnx.TensorProto.FLOAT):
            replace[node.output[0]] = source.input[0]
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.output and node.output[0] in replace and node.output[0] in graph_outputs:
            # a graph output keeps its name: its cast now reads the FP32 tensor (an identity)
            node.input[0] = replace[node.output[0]]
            continue
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]
    _remove_dead_nodes(model, graph_outputs)
    return len(replace)


def _toposort(model) -> None:
    """Order nodes so that each comes after the producers of its inputs (the converter appends
    its input casts at the end), keeping the original order where it already holds."""
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({n for node in rest for n in node.input if n not in available})
            raise CalibrationError(f"graph has a cycle or reads undefined tensors: {', '.join(missing[:5])}")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _remove_dead_nodes(model, keep: set[str]) -> None:
    while True:
        used = {name for node in model.graph.node for name in node.input} | keep
        alive = [node for node in model.graph.node if any(o in used for o in node.output if o)]
        if len(alive) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(alive)


def convert_fp16(model, block_nodes: Iterable[str] = ()):
    """The FP32 model converted to FP16 with FP32 inputs/outputs, keeping `block_nodes` in FP32
    (with exact FP32 values between adjacent blocked nodes)."""

    source = _load(model)
    known = {node.name for node in source.graph.node}
    unknown = sorted(set(block_nodes) - known)
    if unknown:
        raise CalibrationError(f"FP16 block list names nodes the graph does not have: {', '.join(unknown[:5])}")
    metadata = list(source.metadata_props)
    converted = float16.convert_float_to_float16(
        source, keep_io_types=True, op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST), node_block_list=sorted(set(block_nodes))
    )
    _dedupe_nodes(converted)
    _toposort(converted)
    _fold_cast_round_trips(converted)
    del converted.metadata_props[:]
    converted.metadata_props.extend(metadata)
    onnx.checker.check_model(converted)
    return converted


def unpool_index_nodes(model) -> dict[str, set[str]]:
    """Per max-pool input tensor: the nodes of the index arithmetic that unpools it (the pool,
    the comparisons of its windows, the scatter), empty for a pool nobody unpools."""
    nodes = list(model.graph.node)
    pool_inputs = [n.input[0] for n in nodes if n.op_type == "MaxPool"]
    index_nodes_of_pool: dict[str, set[str]] = {name: set() for name in pool_inputs}
    for scatter in (n for n in nodes if n.op_type in ("ScatterElements", "ScatterND")):
        index_nodes = _ancestors(model, [scatter.input[1]], stop=set(pool_inputs))
        read = {t for n in nodes if n.name in index_nodes for t in n.input} & set(pool_inputs)
        for pool_input in read:
            index_nodes_of_pool[pool_input] |= index_nodes | {scatter.name}
    return index_nodes_of_pool


def fp16_candidate_groups(model) -> list[NodeGroup]:
    """The node groups `plan_fp16` may keep in FP32 (see the module docstring)."""
    nodes = list(model.graph.node)
    producers = _producers(model)
    pools = [n for n in nodes if n.op_type == "MaxPool"]
    pool_inputs = [p.input[0] for p in pools]
    groups: list[NodeGroup] = []
    claimed: set[str] = set()
    # Which pool each scatter's indices come from: the pool inputs its index arithmetic reads.
    index_nodes_of_pool = unpool_index_nodes(model)
    for k, pool in enumerate(pools):
        pool_input = pool.input[0]
        index_nodes = index_nodes_of_pool.get(pool_input, set())
        if not index_nodes:
            continue
        earlier = set(pool_inputs[:k])
        segment = _ancestors(model, [pool_input], stop=earlier - {pool_input})
        members = (segment | index_nodes | {pool.name}) - claimed
        if members:
            groups.append(NodeGroup(f"pool{k} indices", frozenset(members),
                                    "max-pool index arithmetic and the nodes computing the pooled tensor"))
            claimed |= members
    for output in model.graph.output:
        chain: set[str] = set()
        stack = [output.name]
        while stack:
            node = producers.get(stack.pop())
            if node is None or node.name in chain:
                continue
            chain.add(node.name)
            if node.op_type in WEIGHTED_OPS:
                continue
            stack.extend(i for i in node.input if i)
        members = chain - claimed
        if members:
            groups.append(NodeGroup(f"output {output.name}", frozenset(members),
                                    "from the last weighted layer to the graph output"))
            claimed |= members
    reductions = {n.name for n in nodes if n.op_type in REDUCTION_OPS} - claimed
    if reductions:
        groups.append(NodeGroup("reductions", frozenset(reductions),
                                "softmax/sigmoid, reductions and divisions (SE, attention, normalisation)"))
    return groups


@dataclass
class PrecisionPlan:
    """Nodes kept out of the reduced precision (FP32 nodes of an FP16 graph, unquantised weighted
    layers of an INT8 graph) and the measurements that chose them."""

    precision: str
    excluded: list[str]
    groups: list[str]
    target: float
    min_gain: float
    steps: list[dict] = field(default_factory=list)
    errors: dict = field(default_factory=dict)  # final per-output errors on the measurement feeds

    def to_dict(self) -> dict:
        what = "kept in FP32" if self.precision == "fp16" else "left unquantised"
        return {"excluded_groups": self.groups, "excluded_nodes": sorted(self.excluded),
                "selection": self.steps, "errors_vs_fp32": self.errors,
                "rule": f"greedy: the candidate group whose exclusion removes the most error is {what}, "
                        f"until the worst output rel L2 <= {self.target:g} or no group removes >= "
                        f"{self.min_gain:.0%} of the remaining error"}


def greedy_exclusion(precision: str, groups: Sequence[NodeGroup], measure: Callable[[set[str]], dict], *,
                     target: float, min_gain: float, log: Callable[[str], None] = lambda m: None) -> PrecisionPlan:
    """Grow the excluded set group by group while it pays (see PrecisionPlan.to_dict's rule)."""
    excluded: set[str] = set()
    chosen: list[str] = []
    errors = measure(excluded)
    steps: list[dict] = [{"excluded": [], "worst_rel_l2": worst_rel_l2(errors)}]
    log(f"    {precision} without exclusions: worst rel L2 {worst_rel_l2(errors):.2e}")
    remaining = [g for g in groups if g.nodes]
    while remaining and worst_rel_l2(errors) > target:
        trials = []
        for group in remaining:
            trial = measure(excluded | group.nodes)
            trials.append((worst_rel_l2(trial), group, trial))
            log(f"      + {group.name} ({len(group.nodes)} nodes): worst rel L2 {worst_rel_l2(trial):.2e}")
        best_error, best_group, best_errors = min(trials, key=lambda t: t[0])
        current = worst_rel_l2(errors)
        gain = (current - best_error) / current if current > 0 else 0.0
        step = {"candidates": {g.name: e for e, g, _ in trials}, "best": best_group.name, "gain": gain}
        steps.append(step)
        if gain < min_gain:
            break
        excluded |= best_group.nodes
        chosen.append(best_group.name)
        remaining = [g for g in remaining if g is not best_group]
        errors = best_errors
        step.update(excluded=best_group.name, worst_rel_l2=best_error)
    return PrecisionPlan(precision, sorted(excluded), chosen, target, min_gain, steps, errors)


def plan_fp16(model, feeds: Sequence[Mapping[str, np.ndarray]], *, target: float = FP16_TARGET_REL_L2,
              min_gain: float = FP16_MIN_GAIN, log: Callable[[str], None] = lambda m: None) -> PrecisionPlan:
    """Choose the FP32 nodes of a stage's FP16 graph by measurement (module docstring)."""
    fp32 = _load(model)
    names = [o.name for o in fp32.graph.output]
    reference = _run(_session(fp32), feeds)

    def measure(blocked: set[str]) -> dict:
        return output_errors(reference, _run(_session(convert_fp16(fp32, blocked)), feeds), names)

    return greedy_exclusion("fp16", fp16_candidate_groups(fp32), measure, target=target, min_gain=min_gain, log=log)


# -- INT8 ----------------------------------------------------------------------------------------
def _calibration_method(method: str):

    table = {"entropy": quantization.CalibrationMethod.Entropy, "percentile": quantization.CalibrationMethod.Percentile,
             "max": quantization.CalibrationMethod.MinMax}
    if method not in table:
        raise InputError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    return table[method]


def _quantize_options(method: str) -> dict:
    options = {
        "ActivationSymmetric": True,  # zero point 0: TensorRT's explicit quantization is symmetric
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT takes float biases; an int32 DequantizeLinear would not parse
        "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS),
    }
    if method == "percentile":
        options["CalibPercentile"] = DEFAULT_PERCENTILE
    return options


class _FeedReader:
    """onnxruntime CalibrationDataReader over single-sample feeds, with the range interface
    quantization.quantize_static's strided collection (CalibStridedMinMax) uses."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        self.feeds = list(feeds)
        self.position, self.end = 0, len(self.feeds)

    def get_next(self):
        if self.position >= self.end:
            return None
        feed = self.feeds[self.position]
        self.position += 1
        return dict(feed)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.end = start_index, end_index

    def rewind(self) -> None:
        self.position, self.end = 0, len(self.feeds)


def _quiet_quantize(**kwargs) -> None:


    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantization.quantize_static warns about pre-processing on every call
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # and prints calibration progress
            quantization.quantize_static(**kwargs)
    finally:
        root.setLevel(level)


def _int8_from_ranges(fp32_path: Path, ranges: Path, method: str, exclude: Sequence[str], out: Path,
                      reader: _FeedReader | None = None, batch: int = DEFAULT_CALIBRATION_BATCH,
                      op_types: Sequence[str] = WEIGHTED_OPS) -> None:
    """The TensorRT-form graph from a ranges file; with a reader, calibrate first and write the
    ranges of every tensor `op_types` read or write (quantization.quantize_static calibrates the op types it
    quantises; the graph written then is scratch)."""

    options = _quantize_options(method)
    if reader is not None:
        options["CalibStridedMinMax"] = batch
    _quiet_quantize(
        model_input=str(fp32_path), model_output=str(out), calibration_data_reader=reader,
        quant_format=quantization.QuantFormat.QDQ, op_types_to_quantize=list(op_types), per_channel=True,
        reduce_range=False, activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
        calibrate_method=_calibration_method(method), nodes_to_exclude=list(exclude),
        calibration_cache_path=str(ranges), extra_options=options,
    )


def restrict_qdq_to_weighted_inputs(model) -> int:
    """Keep Q/DQ only where a weighted layer reads it: other consumers of a dequantised
    activation are switched back to the FP32 tensor, and Q/DQ pairs nobody reads any more are
    removed. Returns the number of rewired inputs."""
    return bypass_activation_qdq(model, lambda node: node.op_type not in WEIGHTED_OPS)


def bypass_activation_qdq(model, reads_fp32: Callable[[object], bool]) -> int:
    """Switch the inputs of every node for which `reads_fp32(node)` holds from a dequantised
    activation (DequantizeLinear(QuantizeLinear(x))) back to x, then remove the Q/DQ pairs and
    initializers nobody reads any more. Returns the number of rewired inputs."""
    producers = _producers(model)
    constants = _constants(model)
    rewired = 0
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not reads_fp32(node):
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in constants:
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            node.input[i] = q.input[0]
            rewired += 1
    _remove_dead_nodes(model, {o.name for o in model.graph.output})
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return rewired


def _output_channel_axis(node, rank: int) -> int:
    """The weight axis that indexes output channels for a weighted layer."""
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    if node.op_type == "MatMul":
        return rank - 1
    return 0


def check_qdq(model) -> dict:
    """Placement facts of an INT8 graph; raises CalibrationError when a rule is broken.

    Rules: every QuantizeLinear output feeds DequantizeLinear only; every activation DQ feeds
    weighted layers only; zero points are int8 zeros; weights with more than one output channel
    have one scale per output channel, on the layer's output-channel axis. Counted: weighted
    layers and those whose two inputs are both dequantised."""

    producers = _producers(model)
    initializers = {init.name: init for init in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
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
                axis = _output_channel_axis(users[0], len(weight.dims)) if users else 0
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


def _check_ranges(path: Path, stage: str) -> int:

    data = calibrate.load_tensors_data(path)
    bad = []
    for name, value in data.items():
        low, high = (float(np.asarray(v).ravel()[0]) if np.asarray(v).size else 0.0 for v in value.range_value)
        if not (np.isfinite(low) and np.isfinite(high)):
            bad.append(f"{name} [{low}, {high}]")
    if bad:
        raise CalibrationError(
            f"stage {stage!r}: calibration found NaN or infinite activations in {len(bad)} tensor(s): "
            + ", ".join(bad[:5]) + "; the FP32 graph overflows on these inputs, nothing was written"
        )
    return len(data.keys())


def calibrate_ranges(fp32_path: str | Path, feeds: Sequence[Mapping[str, np.ndarray]], ranges: str | Path, *,
                     method: str = "entropy", batch: int = DEFAULT_CALIBRATION_BATCH, stage: str = "graph") -> int:
    """Calibrate on `feeds` (single samples, collected `batch` at a time) every tensor that
    CALIBRATED_OPS read or write (both INT8 graphs' tensors: the TensorRT form reads those of the
    weighted layers) and write the ranges file; returns the number of calibrated tensors."""
    feeds = list(feeds)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"the calibration batch must be a positive integer, got {batch!r}")
    if len(feeds) < batch:
        raise InputError(
            f"stage {stage!r}: {len(feeds)} calibration sample(s), fewer than the calibration batch of {batch}; "
            "give more calibration images or a smaller calibration batch"
        )
    usable = len(feeds) // batch * batch  # strided collection needs whole batches
    if usable < len(feeds):
        feeds = [feeds[i] for i in np.linspace(0, len(feeds) - 1, usable).round().astype(int)]
    ranges = Path(ranges)
    if ranges.exists():
        ranges.unlink()
    with tempfile.TemporaryDirectory(prefix="mattrt-calibration-") as scratch:
        try:
            _int8_from_ranges(Path(fp32_path), ranges, method, (), Path(scratch) / "int8.onnx", _FeedReader(feeds), batch,
                              op_types=CALIBRATED_OPS)
        except (ValueError, RuntimeError) as exc:
            ranges.unlink(missing_ok=True)
            raise CalibrationError(f"stage {stage!r}: onnxruntime calibration failed: {exc}") from exc
    try:
        count = _check_ranges(ranges, stage)
    except CalibrationError:
        ranges.unlink(missing_ok=True)
        raise
    os.chmod(ranges, 0o644)
    return count


def build_int8(fp32_path: str | Path, ranges: str | Path, out: str | Path, *, method: str = "entropy",
               exclude: Sequence[str] = ()):
    """The INT8 graph from the FP32 graph and a ranges file (no calibration data needed): the
    same inputs always give the same graph. Returns the ModelProto (also written to `out`)."""
    ranges = Path(ranges)
    if not ranges.is_file():
        raise InputError(f"ranges file {ranges} does not exist")
    _int8_from_ranges(Path(fp32_path), ranges, method, exclude, Path(out))
    return finish_int8(Path(out))


rebuild_int8 = build_int8


def int8_candidate_groups(model) -> list[NodeGroup]:
    """The weighted layers of each FP16 candidate group (those are what INT8 quantises)."""
    weighted = {n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS}
    groups = []
    for group in fp16_candidate_groups(model):
        members = group.nodes & weighted
        if members:
            groups.append(NodeGroup(group.name, frozenset(members), group.reason))
    return groups


def plan_int8(fp32_path: str | Path, ranges: str | Path, feeds: Sequence[Mapping[str, np.ndarray]], *,
              method: str = "entropy", target: float = INT8_TARGET_REL_L2, min_gain: float = INT8_MIN_GAIN,
              log: Callable[[str], None] = lambda m: None) -> PrecisionPlan:
    """Choose the weighted layers an INT8 graph leaves unquantised by measurement: the same
    greedy rule as FP16 over the weighted layers of the candidate groups, rebuilding from the
    ranges file for every trial."""

    fp32 = onnx.load(str(fp32_path))
    names = [o.name for o in fp32.graph.output]
    reference = _run(_session(fp32), feeds)
    with tempfile.TemporaryDirectory(prefix="mattrt-int8-plan-") as scratch:

        def measure(excluded: set[str]) -> dict:
            model = build_int8(fp32_path, ranges, Path(scratch) / "trial.onnx", method=method, exclude=sorted(excluded))
            return output_errors(reference, _run(_session(model), feeds), names)

        return greedy_exclusion("int8", int8_candidate_groups(fp32), measure, target=target, min_gain=min_gain, log=log)


def finish_int8(path: Path):

    model = onnx.load(str(path))
    restrict_qdq_to_weighted_inputs(model)
    check_qdq(model)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return model


# -- INT8 for onnxruntime's CPU provider ---------------------------------------------------------
# The TensorRT-form graph gives onnxruntime's CPU provider nothing to fuse: its integer kernels
# (QLinearConv, QLinearAdd, ...) replace DequantizeLinear -> op -> QuantizeLinear groups, so a
# convolution needs its output quantised too, and they are fastest with uint8 activations and
# int8 weights (U8S8). The CPU graph therefore quantises the outputs of the weighted layers and
# the cheap ops between them, asymmetrically, from the same ranges file.
CPU_INT8_BACKEND = "onnxruntime"
CPU_INT8_RECORD = "int8_cpu"  # key of the CPU graph's record in a stage's `parity`
CPU_INT8_OPS = (*WEIGHTED_OPS, "Relu", "MaxPool", "Resize")
# Operator types whose inputs and outputs calibration records: both INT8 graphs' tensors.
CALIBRATED_OPS = tuple(dict.fromkeys((*WEIGHTED_OPS, *CPU_INT8_OPS)))
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
    producers = _producers(model)
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
    constants = _constants(model)
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
        _quiet_quantize(
            model_input=str(fp32_path), model_output=str(out), calibration_data_reader=None,
            quant_format=ort_quantization.QuantFormat.QDQ, op_types_to_quantize=list(CPU_INT8_OPS),
            per_channel=True, reduce_range=False, activation_type=ort_quantization.QuantType.QUInt8,
            weight_type=ort_quantization.QuantType.QInt8, calibrate_method=_calibration_method(method),
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
    producers = _producers(model)
    initializers = {init.name: init for init in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
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
                axis = _output_channel_axis(users[0], len(data.dims)) if users else 0
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


# -- an export directory -------------------------------------------------------------------------
def _check_precisions(precisions: Sequence[str]) -> tuple[str, ...]:
    chosen = []
    for value in precisions:
        for item in str(value).split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item == "fp32":
                continue  # the export itself
            if item not in PRECISIONS:
                raise InputError(f"unknown precision {item!r}; choose from fp32, {', '.join(PRECISIONS)}")
            if item not in chosen:
                chosen.append(item)
    return tuple(chosen)


def add_precisions(directory: str | Path, precisions: Sequence[str], *, calibration: str | Path = "synthetic",
                   method: str = "entropy", max_samples: int = 128, batch: int = DEFAULT_CALIBRATION_BATCH,
                   saved_samples: int = DEFAULT_SAVED_SAMPLES, force: bool = False,
                   synthetic_size: tuple[int, int] | None = None, log: Callable[[str], None] | None = print):
    """Add FP16 and/or INT8 graphs of every stage to an export directory (module docstring);
    returns the updated manifest. Nothing in the directory changes unless every graph is made."""


    log = log or (lambda message: None)
    directory = Path(directory)
    if directory.is_file():
        raise InputError(f"{directory}: give the export directory, not a file")
    manifest = Manifest.load(directory)
    chosen = _check_precisions(precisions)
    if not chosen:
        return manifest
    if "int8" in chosen:
        _calibration_method(method)
    for entry in manifest.stages:
        for precision in chosen:
            if precision in entry.files and not force:
                raise InputError(
                    f"{directory}: stage {entry.name!r} already has a {precision} graph ({entry.files[precision]}); "
                    "pass --force to replace it"
                )
        if "fp32" not in entry.files:
            raise InputError(f"{directory}: stage {entry.name!r} has no fp32 graph to convert")
    for entry in manifest.graphs():  # every fp32 graph is rewritten at the end: check them before the work
        if "fp32" in entry.files:
            check_graph_file(entry, directory, entry.files["fp32"])

    source = calibration_feeds.parse_data_source(calibration, **({"size": tuple(synthetic_size)} if synthetic_size else {}))
    started = time.perf_counter()
    log(f"calibration data: {source.describe()}")
    feeds = calibration_feeds.collect_stage_feeds(directory, source, max_samples=max_samples)
    log(f"  recorded {', '.join(f'{s}: {f.recorded} samples' for s, f in feeds.items())} "
        f"({time.perf_counter() - started:.1f} s)")

    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.precision-", dir=directory.parent))
    try:
        written: list[tuple[str, str, object]] = []  # (stage, file, proto)
        cpu_written: list[tuple[str, object]] = []  # (file, proto): onnxruntime's CPU graphs, not for TensorRT
        for entry in manifest.stages:
            fp32_path = directory / entry.files["fp32"]
            stage_feeds = feeds[entry.name]
            samples = stage_feeds.samples
            fp32_model = onnx.load(str(fp32_path))
            names = [o.name for o in fp32_model.graph.output]
            reference = _run(_session(fp32_model), samples)
            measured = subsample_feeds(samples, MEASURE_SAMPLES)
            measured_on = f"{len(measured)} calibration samples spread evenly over the recorded ones"
            for precision in chosen:
                stage_started = time.perf_counter()
                record: dict = {"calibration_data": source.describe(), "samples": len(samples),
                                "samples_recorded": stage_feeds.recorded}
                log(f"  {entry.name} -> {precision}")
                if precision == "fp16":
                    plan = plan_fp16(fp32_model, measured, log=log)
                    proto = convert_fp16(fp32_model, plan.excluded)
                    record["fp16"] = plan.to_dict()
                    record["fp16"]["fp32_nodes"] = len(plan.excluded)
                    record["fp16"]["measured_on"] = measured_on
                else:
                    ranges = staging / ranges_file(entry.name)
                    stage_batch = min(batch, len(samples))  # fewer samples than a batch: one smaller batch
                    if stage_batch < batch:
                        log(f"    {len(samples)} calibration sample(s), fewer than the calibration batch of {batch}: "
                            f"calibrating in batches of {stage_batch}")
                    tensors = calibrate_ranges(fp32_path, samples, ranges, method=method, batch=stage_batch,
                                               stage=entry.name)
                    plan = plan_int8(fp32_path, ranges, measured, method=method, log=log)
                    proto = build_int8(fp32_path, ranges, staging / graph_file(entry.name, "int8"), method=method,
                                       exclude=plan.excluded)
                    kept = subsample_feeds(samples, saved_samples)
                    stacked = {n: np.concatenate([s[n] for s in kept]) for n in kept[0]}
                    np.savez_compressed(staging / calib_file(entry.name), **stacked)
                    record["int8"] = {
                        "method": method,
                        "percentile": DEFAULT_PERCENTILE if method == "percentile" else None,
                        "calibration_batch": stage_batch,
                        "calibration_batch_requested": batch,
                        "calibrated_tensors": tensors,
                        "calibrated_ops": list(CALIBRATED_OPS),
                        "activations": "int8 symmetric per tensor (zero point 0)",
                        "weights": "int8 symmetric per output channel",
                        "placement": f"inputs of {', '.join(WEIGHTED_OPS)} only",
                        "ranges": ranges_file(entry.name),
                        "tensors": calib_file(entry.name),
                        "tensors_saved": len(kept),
                        "unquantised": plan.to_dict(),
                        "rebuild": "calibration.precision.build_int8(fp32 graph, ranges, out, method=method, "
                                   "exclude=unquantised.excluded_nodes)",
                        "qdq": check_qdq(proto),
                    }
                    record["int8"]["unquantised"]["measured_on"] = measured_on
                errors = output_errors(reference, _run(_session(proto), samples), names)
                if not all(e["finite"] for e in errors.values()):
                    raise CalibrationError(f"stage {entry.name!r}: the {precision} graph produces NaN or infinite outputs")
                record["vs_fp32"] = errors
                record["seconds"] = round(time.perf_counter() - stage_started, 1)
                log(f"    {precision} vs fp32: " + ", ".join(_describe_error(k, v) for k, v in errors.items()))
                entry.parity[precision] = record
                entry.files[precision] = graph_file(entry.name, precision)
                if precision == "int8":
                    entry.side_files["int8"] = [ranges_file(entry.name), calib_file(entry.name)]
                    cpu_written.append(_add_cpu_int8(entry, fp32_path, ranges, staging, method, plan.excluded,
                                                     reference, samples, record, log))
                written.append((entry.name, entry.files[precision], proto))

        report = lint.lint_models((name, proto) for _, name, proto in written)
        if not report.passed:
            raise CalibrationError(report.summary() + "\nnothing was written to " + str(directory))
        log(report.summary())
        for name, proto in [(name, proto) for _, name, proto in written] + cpu_written:
            embed_manifest(proto, manifest)
            onnx.save_model(proto, str(staging / name))
        # Publish: graphs and side files first, the manifest (which names them) last.
        for path in sorted(staging.iterdir()):
            os.replace(path, directory / path.name)
        for entry in manifest.graphs():
            fp32_file = directory / entry.files["fp32"]
            model = onnx.load(str(fp32_file))
            embed_manifest(model, manifest)
            _save_atomic(model, fp32_file)
        _write_manifest_atomic(manifest, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"added {', '.join(chosen)} to {directory} ({time.perf_counter() - started:.1f} s)")
    return manifest


def _add_cpu_int8(entry, fp32_path: Path, ranges: Path, staging: Path, method: str, excluded: Sequence[str],
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
    errors = output_errors(reference, _run(_session(proto), samples), outputs)
    if not all(e["finite"] for e in errors.values()):
        raise CalibrationError(f"stage {entry.name!r}: the CPU INT8 graph produces NaN or infinite outputs")
    log("    int8 (cpu) vs fp32: " + ", ".join(_describe_error(k, v) for k, v in errors.items()))
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
            "rebuild": "calibration.precision.build_cpu_int8(fp32 graph, ranges, out, method=method, "
                       "exclude=unquantised)",
            "qdq": check_cpu_qdq(proto, fp32_nodes),
            "tensorrt": "not a TensorRT graph (uint8 activations with zero points); TensorRT and `mattrt lint` use "
                        "files['int8']",
        },
        "vs_fp32": errors,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return name, proto


def subsample_feeds(samples: Sequence, limit: int) -> list:
    return calibration_feeds.subsample(list(samples), max(1, limit))


def _save_atomic(model, path: Path) -> None:

    partial = path.with_name(f".{path.name}.partial")
    onnx.save_model(model, str(partial))
    os.replace(partial, path)


def _write_manifest_atomic(manifest, directory: Path) -> None:

    partial = directory / f".{MANIFEST_FILE}.partial"
    partial.write_text(manifest.to_json() + "\n")
    os.replace(partial, directory / MANIFEST_FILE)


# -- command line (called by `mattrt export` and `mattrt precision`) ------------------------------
def add_precision_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """--precision, --calibration, --calibration-method and friends."""
    group = parser.add_argument_group("precision variants (FP16 / INT8 Q/DQ graphs)")
    group.add_argument("--precision", action="append", default=None, required=required, metavar="fp16|int8",
                       help="also write this precision's graphs (repeat or comma-separate: --precision fp16,int8)")
    group.add_argument("--calibration", default="synthetic", metavar="DIR|synthetic[:N]",
                       help="INT8 calibration / FP16 measurement images: a folder, or N generated samples "
                            "(default: synthetic = 16 samples of calibration.synthetic seed 1)")
    group.add_argument("--calibration-method", default="entropy", choices=CALIBRATION_METHODS,
                       help="INT8 activation ranges: entropy (KL divergence), percentile (99.999) or max")
    group.add_argument("--calibration-samples", type=int, default=128,
                       help="most samples (tiles / canvases) per stage used for calibration (default 128)")
    group.add_argument("--calibration-batch", type=int, default=DEFAULT_CALIBRATION_BATCH,
                       help="samples per calibration step; a stage with fewer samples calibrates them as one "
                            "smaller batch, noted in the log and the manifest (default 8)")


def apply_precision_arguments(args: argparse.Namespace, directory: str | Path | None = None) -> None:
    """Run `add_precisions` for parsed `add_precision_arguments` options (no-op without --precision)."""
    if not getattr(args, "precision", None):
        return
    add_precisions(directory if directory is not None else args.out, args.precision, calibration=args.calibration,
                   method=args.calibration_method, max_samples=args.calibration_samples,
                   batch=args.calibration_batch, force=getattr(args, "force", False))


__all__ = [
    "CALIBRATION_METHODS",
    "CalibrationError",
    "PrecisionPlan",
    "build_int8",
    "calibrate_ranges",
    "plan_int8",
    "PRECISIONS",
    "WEIGHTED_OPS",
    "add_precision_arguments",
    "add_precisions",
    "apply_precision_arguments",
    "check_qdq",
    "convert_fp16",
    "fp16_candidate_groups",
    "graph_file",
    "output_errors",
    "plan_fp16",
    "rebuild_int8",
    "restrict_qdq_to_weighted_inputs",
]
