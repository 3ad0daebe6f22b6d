"""FP16 graphs: everything in FP16 except the nodes measurement says need FP32 (`plan_fp16`),
inputs and outputs kept FP32 (onnxruntime's converter with keep_io_types), and exact FP32
values between adjacent FP32 nodes (the converter's Cast round trips folded away). See
calibration/variants.py for how a stage's plan is chosen and recorded."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from mattrt.calibration.graphs import (
    REDUCTION_OPS,
    WEIGHTED_OPS,
    CalibrationError,
    NodeGroup,
    PrecisionPlan,
    ancestors,
    copy_model,
    cpu_session,
    greedy_exclusion,
    output_errors,
    remove_dead_nodes,
    run_feeds,
    tensor_producers,
    unpool_index_nodes,
)
from mattrt.lazy import lazy_import

onnx = lazy_import("onnx", probe="onnxruntime")
float16 = lazy_import("onnxruntime.transformers.float16", probe="onnxruntime")


FP16_TARGET_REL_L2 = 1e-3


FP16_MIN_GAIN = 0.2


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
    producers = tensor_producers(model)
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
    remove_dead_nodes(model, graph_outputs)
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


def convert_fp16(model, block_nodes: Iterable[str] = ()):
    """The FP32 model converted to FP16 with FP32 inputs/outputs, keeping `block_nodes` in FP32
    (with exact FP32 values between adjacent blocked nodes)."""

    source = copy_model(model)
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


def fp16_candidate_groups(model) -> list[NodeGroup]:
    """The node groups `plan_fp16` may keep in FP32 (see the module docstring)."""
    nodes = list(model.graph.node)
    producers = tensor_producers(model)
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
        segment = ancestors(model, [pool_input], stop=earlier - {pool_input})
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


def plan_fp16(model, feeds: Sequence[Mapping[str, np.ndarray]], *, target: float = FP16_TARGET_REL_L2,
              min_gain: float = FP16_MIN_GAIN, log: Callable[[str], None] = lambda m: None) -> PrecisionPlan:
    """Choose the FP32 nodes of a stage's FP16 graph by measurement (module docstring)."""
    fp32 = copy_model(model)
    names = [o.name for o in fp32.graph.output]
    reference = run_feeds(cpu_session(fp32), feeds)

    def measure(blocked: set[str]) -> dict:
        return output_errors(reference, run_feeds(cpu_session(convert_fp16(fp32, blocked)), feeds), names)

    return greedy_exclusion("fp16", fp16_candidate_groups(fp32), measure, target=target, min_gain=min_gain, log=log)


__all__ = ["FP16_MIN_GAIN", "FP16_TARGET_REL_L2", "convert_fp16", "fp16_candidate_groups", "plan_fp16"]
