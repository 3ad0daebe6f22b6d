"""TensorRT compatibility lint for ONNX graphs (no TensorRT needed): what the TensorRT backend's
ONNX parser accepts. `mattrt export`, `mattrt precision` and `mattrt lint` run it on every graph
they publish.

Checks every node (subgraphs and model-local functions included) against the operator table
of TensorRT's ONNX parser kept in `onnx_ops.json` (onnx-tensorrt docs/operators.md;
the file records the commit) and against the rules mattrt's engines rely on:

- operators the parser does not implement (MaxUnpool, sequence ops, ...) and the data type of
  each node's first input where shape inference knows it;
- MaxPool with its Indices output; pooling with dilations;
- ScatterND / ScatterElements / Scatter with a reduction;
- Resize modes the parser does not implement (cubic, antialiasing);
- `axes` inputs that are not constants (Slice, Squeeze, Unsqueeze, Pad, Reduce*);
- QuantizeLinear / DequantizeLinear: int8 only, zero points present and all 0, per-channel
  scales only on weights (constants);
- the default-domain opset inside the range every TensorRT 10.x and 11.x parser accepts, and
  no operator from a custom domain (it would need a plugin).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from mattrt.errors import InputError
from mattrt.manifest import MANIFEST_FILE, Manifest, interface_differences, load_graph_proto, resolve_file

TABLE_FILE = Path(__file__).with_name("onnx_ops.json")

_ONNX_TO_TABLE_TYPE = {
    "FLOAT": "FP32",
    "FLOAT16": "FP16",
    "BFLOAT16": "BF16",
    "INT32": "INT32",
    "INT64": "INT64",
    "INT8": "INT8",
    "UINT8": "UINT8",
    "BOOL": "BOOL",
    "DOUBLE": "DOUBLE",
    "INT4": "INT4",
    "FLOAT8E4M3FN": "FP8",
}
_AXES_INPUT = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3}
_SCATTER_OPS = ("ScatterND", "ScatterElements", "Scatter")
_POOL_OPS = ("MaxPool", "AveragePool", "LpPool")
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


@dataclass(frozen=True)
class LintProblem:
    graph: str  # graph (file or stage) name
    node: str  # node name, or "" for model-level problems
    op_type: str
    reason: str

    def __str__(self) -> str:
        where = f"node {self.node!r} ({self.op_type})" if self.node or self.op_type else "model"
        return f"{self.graph}: {where}: {self.reason}"


@dataclass(frozen=True)
class LintReport:
    graphs: tuple[str, ...]
    problems: tuple[LintProblem, ...]

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"passed": self.passed, "graphs": list(self.graphs), "problems": [asdict(p) for p in self.problems]}

    def summary(self) -> str:
        if self.passed:
            return f"TensorRT lint passed: {len(self.graphs)} graph(s) ({', '.join(self.graphs)})"
        lines = [f"TensorRT lint found {len(self.problems)} problem(s) in {len(self.graphs)} graph(s):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def operator_table() -> dict:
    """The parsed table: {"source": ..., "opset": {"min", "max"}, "operators": {op: {...}}}."""
    return json.loads(TABLE_FILE.read_text())


class _Context:
    """Constants and value types of one graph scope (outer scopes visible to subgraphs)."""

    def __init__(self, graph, parent: "_Context | None" = None, types: dict[str, int] | None = None):
        self.parent = parent
        self.constants: dict[str, np.ndarray | None] = {}
        for init in graph.initializer:
            self.constants[init.name] = numpy_helper.to_array(init) if init.data_location != onnx.TensorProto.EXTERNAL else None
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = None
                for attr in node.attribute:
                    if attr.name == "value":
                        value = numpy_helper.to_array(attr.t)
                    elif attr.name in ("value_float", "value_int"):
                        value = np.array(onnx.helper.get_attribute_value(attr))
                    elif attr.name in ("value_floats", "value_ints"):
                        value = np.array(onnx.helper.get_attribute_value(attr))
                self.constants[node.output[0]] = value
        self.types: dict[str, int] = dict(types or {})
        for info in [*graph.input, *graph.output, *graph.value_info]:
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                self.types[info.name] = info.type.tensor_type.elem_type
        for init in graph.initializer:
            self.types[init.name] = init.data_type

    def is_constant(self, name: str) -> bool:
        return name in self.constants or (self.parent is not None and self.parent.is_constant(name))

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.constants:
            return self.constants[name]
        return self.parent.constant(name) if self.parent else None

    def type_name(self, name: str) -> str | None:
        elem = self.types.get(name)
        if elem is None and self.parent is not None:
            return self.parent.type_name(name)
        return onnx.TensorProto.DataType.Name(elem) if elem else None


def _attributes(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_node(node, ctx: _Context, table: dict, local_functions: set[tuple[str, str]]) -> Iterator[str]:
    op = node.op_type
    attrs = _attributes(node)
    if node.domain not in ("", "ai.onnx"):
        if (node.domain, op) not in local_functions:
            yield f"operator from custom domain {node.domain!r} has no TensorRT parser (it would need a plugin)"
        return
    entry = table["operators"].get(op)
    if entry is None:
        yield "operator is not in TensorRT's ONNX operator table"
        return
    if not entry["supported"]:
        yield "TensorRT's ONNX parser does not implement this operator"
        return
    types = entry.get("types")
    if types and node.input and node.input[0]:
        onnx_type = ctx.type_name(node.input[0])
        table_type = _ONNX_TO_TABLE_TYPE.get(onnx_type, onnx_type) if onnx_type else None
        if table_type and table_type not in types and table_type != "DOUBLE":
            yield f"input type {onnx_type} is not among the types TensorRT supports here ({', '.join(types)})"

    outputs = [o for o in node.output if o]
    if op == "MaxPool" and len(outputs) > 1:
        yield "MaxPool with an Indices output: TensorRT parses MaxPool without Indices only"
    if op in _POOL_OPS and any(d != 1 for d in attrs.get("dilations", [])):
        yield f"{op} with dilations {list(attrs['dilations'])}: TensorRT requires dilations of 1"
    if op in _SCATTER_OPS:
        reduction = _text(attrs.get("reduction", "none"))
        if reduction != "none":
            yield f"{op} with reduction {reduction!r}: TensorRT scatters without reduction only"
    if op == "Resize":
        mode = _text(attrs.get("mode", "nearest"))
        coordinates = _text(attrs.get("coordinate_transformation_mode", "half_pixel"))
        nearest = _text(attrs.get("nearest_mode", "round_prefer_floor"))
        if mode not in _RESIZE_MODES:
            yield f"Resize mode {mode!r}: TensorRT implements {', '.join(sorted(_RESIZE_MODES))}"
        if coordinates not in _RESIZE_COORDINATES:
            yield f"Resize coordinate_transformation_mode {coordinates!r} is not implemented by TensorRT"
        if mode == "nearest" and nearest not in _RESIZE_NEAREST:
            yield f"Resize nearest_mode {nearest!r} is not implemented by TensorRT"
        if attrs.get("antialias", 0):
            yield "Resize with antialiasing is not implemented by TensorRT"
    axes_index = _AXES_INPUT.get(op, 1 if op.startswith("Reduce") else None)
    if axes_index is not None and len(node.input) > axes_index and node.input[axes_index]:
        if not ctx.is_constant(node.input[axes_index]):
            yield f"{op} axes input {node.input[axes_index]!r} must be a constant (initializer) for TensorRT"
    if op in ("QuantizeLinear", "DequantizeLinear"):
        yield from _check_qdq(node, ctx, attrs)


def _check_qdq(node, ctx: _Context, attrs: dict) -> Iterator[str]:
    op = node.op_type
    zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if zero_point is None:
        if op == "QuantizeLinear" and "output_dtype" not in attrs:
            yield "QuantizeLinear without a zero point quantizes to uint8; TensorRT needs an int8 zero point of 0"
    else:
        zp_type = ctx.type_name(zero_point)
        if zp_type is not None and zp_type != "INT8":
            yield f"{op} zero point {zero_point!r} is {zp_type}; TensorRT's explicit quantization is int8 here"
        if not ctx.is_constant(zero_point):
            yield f"{op} zero point {zero_point!r} must be a constant"
        else:
            value = ctx.constant(zero_point)
            if value is not None and np.any(value != 0):
                yield f"{op} zero point {zero_point!r} is not all 0 (found {np.unique(value)[:4].tolist()}); TensorRT needs symmetric quantization"
    if op == "QuantizeLinear" and attrs.get("output_dtype") not in (None, 3):  # 3 = INT8
        yield f"QuantizeLinear output_dtype {attrs['output_dtype']} is not int8"
    if op == "DequantizeLinear":
        x_type = ctx.type_name(node.input[0])
        if x_type is not None and x_type != "INT8":
            yield f"DequantizeLinear input {node.input[0]!r} is {x_type}; only int8 Q/DQ is allowed"
    scale = node.input[1] if len(node.input) > 1 else ""
    scale_value = ctx.constant(scale) if scale else None
    per_channel = scale_value is not None and scale_value.size > 1
    if per_channel and not ctx.is_constant(node.input[0]):
        yield (
            f"{op} with per-channel scales (axis {attrs.get('axis', 1)}) on {node.input[0]!r}, which is not a weight: "
            "activations must be quantized per tensor"
        )
    if scale and not ctx.is_constant(scale):
        yield f"{op} scale {scale!r} must be a constant"


def _walk(graph, ctx: _Context, graph_name: str, table: dict, local_functions) -> Iterator[LintProblem]:
    for index, node in enumerate(graph.node):
        name = node.name or f"#{index}"
        for reason in _check_node(node, ctx, table, local_functions):
            yield LintProblem(graph_name, name, node.op_type, reason)
        for attr in node.attribute:
            subgraphs = []
            if attr.type == onnx.AttributeProto.GRAPH:
                subgraphs = [attr.g]
            elif attr.type == onnx.AttributeProto.GRAPHS:
                subgraphs = list(attr.graphs)
            for sub in subgraphs:
                yield from _walk(sub, _Context(sub, ctx), f"{graph_name}/{name}.{attr.name}", table, local_functions)


def lint_model(model, name: str = "model") -> list[LintProblem]:
    """Problems of one ONNX model (a ModelProto or a path)."""

    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise InputError(f"{path} is not an ONNX file")
        model = load_graph_proto(path, load_external_data=True)
    table = operator_table()
    problems: list[LintProblem] = []
    lowest, highest = table["opset"]["min"], table["opset"]["max"]
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not default:
        problems.append(LintProblem(name, "", "", "model imports no default-domain opset"))
    elif not lowest <= default[0] <= highest:
        problems.append(
            LintProblem(name, "", "", f"opset {default[0]} is outside {lowest}..{highest}, the range TensorRT 10.x and 11.x parse")
        )
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=False)
    except Exception:  # types stay unknown; every other check still runs
        inferred = model
    types = {}
    for info in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    local_functions = {(f.domain, f.name) for f in model.functions}
    problems.extend(_walk(model.graph, _Context(model.graph, types=types), name, table, local_functions))
    for function in model.functions:
        fake_graph = onnx.helper.make_graph(list(function.node), function.name, [], [])
        problems.extend(_walk(fake_graph, _Context(fake_graph), f"{name}/function {function.name}", table, local_functions))
    return problems


def lint_models(models: Iterable[tuple[str, object]]) -> LintReport:
    names, problems = [], []
    for name, model in models:
        names.append(name)
        problems.extend(lint_model(model, name))
    return LintReport(tuple(names), tuple(problems))


def lint_directory(directory: str | Path) -> LintReport:
    """Lint the graphs of an export directory (every file its manifest names, else every .onnx).
    With a manifest, a graph whose inputs or outputs differ from the manifest's is a problem too."""
    root = Path(directory)
    if root.is_file() and root.suffix == ".onnx":
        return lint_models([(root.name, root)])
    if not root.is_dir():
        raise InputError(f"{root} is neither an export directory nor an .onnx file")
    interface_problems: list[LintProblem] = []
    if (root / MANIFEST_FILE).is_file():
        manifest = Manifest.load(root)  # validated against the manifest schema
        named = [n for n in manifest.named_files() if n != MANIFEST_FILE]
        missing = [n for n in named if not resolve_file(root, n).is_file()]
        if missing:
            raise InputError(f"{root}: files named by the manifest are missing: {', '.join(missing)}; re-export the model")
        # The graphs TensorRT builds; a graph made for another backend (onnxruntime's U8S8 CPU INT8
        # graph, manifest backend_files) is checked against the manifest below, not linted for TensorRT.
        files = list(dict.fromkeys(g.file_for(p, "tensorrt") for g in manifest.graphs() for p in g.files))
        for entry in manifest.graphs():
            for name in entry.graph_files():
                for difference in interface_differences(entry, root / name):
                    reason = f"does not match the manifest's graph {entry.name!r}: {difference}; re-export the model"
                    interface_problems.append(LintProblem(name, "", "", reason))
    else:
        files = sorted(p.name for p in root.glob("*.onnx"))
    if not files:
        raise InputError(f"{root} holds no .onnx files")
    report = lint_models((f, root / f) for f in files)
    return LintReport(report.graphs, (*interface_problems, *report.problems))


__all__ = ["LintProblem", "LintReport", "lint_directory", "lint_model", "lint_models", "operator_table"]
