"""The graph surgery and measurements every precision algorithm shares: stage file names, node
groups, sessions over a ModelProto, errors against FP32, the greedy exclusion rule, Q/DQ
bypassing, and atomic writes into an export directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from mattrt.errors import MattrtError
from mattrt.lazy import lazy_import
from mattrt.manifest import MANIFEST_FILE

onnx = lazy_import("onnx", probe="onnxruntime")
ort = lazy_import("onnxruntime", probe="onnxruntime")


PRECISIONS = ("fp16", "int8")


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


REDUCTION_OPS = ("Softmax", "Sigmoid", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2", "Div", "Exp", "Log",
                 "Pow", "Sqrt")


CPU_INT8_OPS = (*WEIGHTED_OPS, "Relu", "MaxPool", "Resize")


class CalibrationError(MattrtError):
    """A precision variant that cannot be produced from the given graph or data."""


def graph_file(stage: str, precision: str) -> str:
    return f"{stage}.onnx" if precision == "fp32" else f"{stage}.{precision}.onnx"


def ranges_file(stage: str) -> str:
    return f"{stage}.int8.ranges.json"


def calib_file(stage: str) -> str:
    return f"{stage}.int8.calib.npz"


def copy_model(model):

    if isinstance(model, (str, Path)):
        return onnx.load(str(model))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def tensor_producers(model) -> dict:
    return {out: node for node in model.graph.node for out in node.output if out}


def tensor_consumers(model) -> dict[str, list]:
    """Tensor name -> the nodes reading it, in graph order."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def constant_names(model) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    names |= {node.output[0] for node in model.graph.node if node.op_type == "Constant"}
    return names


def ancestors(model, tensors: Iterable[str], stop: set[str] = frozenset()) -> set[str]:
    """Names of the nodes that compute `tensors`, not looking past the tensors in `stop`."""
    producers = tensor_producers(model)
    constants = constant_names(model)
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


def cpu_session(model, threads: int | None = None):

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_feeds(session, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
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


def describe_error(name: str, error: Mapping[str, float]) -> str:
    text = f"{name} rel L2 {error['rel_l2']:.2e} max abs {error['max_abs']:.2e}"
    if "argmax_changed" in error:
        text += f" argmax changed {error['argmax_changed']:.2%}"
    return text


def worst_rel_l2(errors: Mapping[str, Mapping[str, float]]) -> float:
    return max((e["rel_l2"] for e in errors.values()), default=0.0)


@dataclass(frozen=True)
class NodeGroup:
    name: str
    nodes: frozenset[str]
    reason: str


def remove_dead_nodes(model, keep: set[str]) -> None:
    while True:
        used = {name for node in model.graph.node for name in node.input} | keep
        alive = [node for node in model.graph.node if any(o in used for o in node.output if o)]
        if len(alive) == len(model.graph.node):
            return
        del model.graph.node[:]
        model.graph.node.extend(alive)


def unpool_index_nodes(model) -> dict[str, set[str]]:
    """Per max-pool input tensor: the nodes of the index arithmetic that unpools it (the pool,
    the comparisons of its windows, the scatter), empty for a pool nobody unpools."""
    nodes = list(model.graph.node)
    pool_inputs = [n.input[0] for n in nodes if n.op_type == "MaxPool"]
    index_nodes_of_pool: dict[str, set[str]] = {name: set() for name in pool_inputs}
    for scatter in (n for n in nodes if n.op_type in ("ScatterElements", "ScatterND")):
        index_nodes = ancestors(model, [scatter.input[1]], stop=set(pool_inputs))
        read = {t for n in nodes if n.name in index_nodes for t in n.input} & set(pool_inputs)
        for pool_input in read:
            index_nodes_of_pool[pool_input] |= index_nodes | {scatter.name}
    return index_nodes_of_pool


def bypass_activation_qdq(model, reads_fp32: Callable[[object], bool]) -> int:
    """Switch the inputs of every node for which `reads_fp32(node)` holds from a dequantised
    activation (DequantizeLinear(QuantizeLinear(x))) back to x, then remove the Q/DQ pairs and
    initializers nobody reads any more. Returns the number of rewired inputs."""
    producers = tensor_producers(model)
    constants = constant_names(model)
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
    remove_dead_nodes(model, {o.name for o in model.graph.output})
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return rewired


def output_channel_axis(node, rank: int) -> int:
    """The weight axis that indexes output channels for a weighted layer."""
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    if node.op_type == "MatMul":
        return rank - 1
    return 0


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
                "rule": f"greedy, from the always-excluded groups of selection[0]: the candidate group whose "
                        f"exclusion removes the most error is {what}, "
                        f"until the worst output rel L2 <= {self.target:g} or no group removes >= "
                        f"{self.min_gain:.0%} of the remaining error"}


def greedy_exclusion(precision: str, groups: Sequence[NodeGroup], measure: Callable[[set[str]], dict], *,
                     target: float, min_gain: float, fixed: Sequence[NodeGroup] = (),
                     log: Callable[[str], None] = lambda m: None) -> PrecisionPlan:
    """Grow the excluded set group by group while it pays (see PrecisionPlan.to_dict's rule),
    starting from the `fixed` groups, which are always excluded."""
    excluded: set[str] = set().union(*(g.nodes for g in fixed))
    chosen: list[str] = [g.name for g in fixed if g.nodes]
    errors = measure(excluded)
    steps: list[dict] = [{"excluded": list(chosen), "worst_rel_l2": worst_rel_l2(errors)}]
    start = f"with {', '.join(chosen)} excluded" if chosen else "without exclusions"
    log(f"    {precision} {start}: worst rel L2 {worst_rel_l2(errors):.2e}")
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


def save_model_atomic(model, path: Path) -> None:

    partial = path.with_name(f".{path.name}.partial")
    onnx.save_model(model, str(partial))
    os.replace(partial, path)


def write_manifest_atomic(manifest, directory: Path) -> None:

    partial = directory / f".{MANIFEST_FILE}.partial"
    partial.write_text(manifest.to_json() + "\n")
    os.replace(partial, directory / MANIFEST_FILE)


__all__ = ["CPU_INT8_OPS", "CalibrationError", "NodeGroup", "PRECISIONS", "PrecisionPlan", "REDUCTION_OPS", "WEIGHTED_OPS",
           "ancestors", "bypass_activation_qdq", "calib_file", "constant_names", "copy_model", "cpu_session",
           "describe_error", "graph_file", "greedy_exclusion", "output_channel_axis", "output_errors",
           "tensor_consumers", "tensor_producers",
           "ranges_file", "remove_dead_nodes", "run_feeds", "save_model_atomic", "unpool_index_nodes",
           "worst_rel_l2", "write_manifest_atomic"]
