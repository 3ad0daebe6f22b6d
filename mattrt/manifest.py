"""Core metadata shared by export, calibration and runtime: the export manifest and the
tensor metadata of engine inputs and outputs.

The manifest of an export directory is everything downstream needs without the model class.

`DIR/manifest.json` holds it, and every graph of the directory carries the same JSON in its
metadata_props under `MANIFEST_KEY`, so a lone .onnx file still describes itself.

Shapes are lists whose batch dimension is the string "batch" (dynamic, 1..max_batch); every
other dimension is fixed. `files` maps a precision ("fp32"; later "fp16", "int8") to a file
name inside the directory.

A manifest is read only after it validates against `manifest.schema.json` (beside this module):
a damaged or hand-edited manifest is refused with the field and what is wrong, never a
traceback on first use. Every file a manifest names is a plain name inside its directory
(`resolve_file` also refuses a link that leads out), and `check_graph_file` compares a graph's
inputs and outputs, read from the file without its weights, with what the manifest declares.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mattrt.errors import InputError
from mattrt.lazy import lazy_import

jsonschema = lazy_import("jsonschema")
onnx = lazy_import("onnx")
protobuf_message = lazy_import("google.protobuf.message")

MANIFEST_FILE = "manifest.json"
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
MANIFEST_KEY = "mattrt.manifest"
FORMAT_VERSION = 1
BATCH_DIM = "batch"
NETWORK_DEFAULT = {"output": "trimap", "fit": "letterbox"}
# Every precision a graph file can have; fp32 is what `mattrt export` writes, the others are
# added by calibration (FP16 graph, INT8 Q/DQ graph).
PRECISIONS = ("fp32", "fp16", "int8")
# What `--precision` names is how a backend computes, which is not always a graph of its own: the
# graph precisions above, and bf16, which runs the fp32 graphs with bfloat16 arithmetic (OpenVINO
# on CPUs with native bf16). Each backend lists the ones it runs (Backend.precisions).
RUN_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
_GRAPH_OF = {"bf16": "fp32"}


def graph_precision(precision: str) -> str:
    """The graph precision a run precision reads: bf16 runs the fp32 graphs; the others their own."""
    return _GRAPH_OF.get(precision, precision)


@dataclass(frozen=True)
class TensorMeta:
    """Name, shape (None for the dynamic batch) and dtype of one engine input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = " x ".join("batch" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {np.dtype(self.dtype).name}"


@dataclass
class TensorInfo:
    """One graph input or output as the manifest's JSON stores it."""

    name: str
    shape: list[int | str]  # first dimension BATCH_DIM (1 when the export has max_batch 1)
    dtype: str  # numpy name, e.g. "float32"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorInfo":
        return cls(data["name"], list(data["shape"]), data["dtype"])

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH_DIM else int(d) for d in self.shape)

    def meta(self) -> TensorMeta:
        """The engine-side description (dynamic batch as None)."""
        return TensorMeta(self.name, tuple(None if isinstance(d, str) else int(d) for d in self.shape), np.dtype(self.dtype))


@dataclass
class GraphEntry:
    """One ONNX graph: a network stage or the fusion graph."""

    name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    spatial_size: int
    files: dict[str, str]  # precision -> file name in the export directory
    nodes: int = 0  # node count of the fp32 graph
    export_seconds: float = 0.0  # export + parity + simplification + lint
    simplified: bool = False  # onnxslim's graph kept (parity held after simplifying)
    simplify_note: str = ""
    # "random" / "image" -> output name -> {"batch": b, "max_abs": ..., "rel_l2": ...} per batch;
    # per added precision: how it was built and its error against fp32
    parity: dict[str, Any] = field(default_factory=dict)
    # precision -> files that rebuild its graph without the data (int8: ranges, calibration inputs)
    side_files: dict[str, list[str]] = field(default_factory=dict)
    # backend -> precision -> file, where a backend runs another graph than `files` names for that
    # precision (onnxruntime on the CPU: an asymmetric U8S8 INT8 graph instead of TensorRT's
    # symmetric Q/DQ graph). Backends not listed run `files`.
    backend_files: dict[str, dict[str, str]] = field(default_factory=dict)

    def file_for(self, precision: str, backend: str) -> str | None:
        """The graph file `backend` runs at `precision` (None when there is none)."""
        return self.backend_files.get(backend, {}).get(precision) or self.files.get(precision)

    def named_files(self) -> list[str]:
        """Every file this entry names: its graphs, their side files and the backends' graphs."""
        names = [*self.files.values()]
        names += [f for files in self.side_files.values() for f in files]
        names += [f for files in self.backend_files.values() for f in files.values()]
        return list(dict.fromkeys(names))

    def graph_files(self) -> list[str]:
        """The ONNX graph files of this entry (every precision, every backend)."""
        names = [*self.files.values(), *(f for files in self.backend_files.values() for f in files.values())]
        return list(dict.fromkeys(names))

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GraphEntry":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["inputs"] = [TensorInfo.from_dict(t) for t in data["inputs"]]
        values["outputs"] = [TensorInfo.from_dict(t) for t in data["outputs"]]
        values["files"] = dict(data["files"])
        values["side_files"] = {k: list(v) for k, v in data.get("side_files", {}).items()}
        values["backend_files"] = {k: dict(v) for k, v in data.get("backend_files", {}).items()}
        return cls(**values)


@dataclass
class Manifest:
    model: str
    settings: dict[str, Any]  # ModelSettings.to_dict()
    stages: list[GraphEntry]  # network stages in call order
    fusion_graph: GraphEntry | None  # trimap + detail -> alpha, the model's fusion as native ops
    normalization: dict[str, Any]  # channel_order, mean, std, input_range
    fusion: str | None  # None: the network's output is alpha (see `network`)
    guidance: dict[str, Any]  # kind, channels
    stride_multiple: int
    semantic_size: int  # the semantic canvas S (S x S)
    tile_size: int  # T
    tile_overlap: int
    max_batch: int
    opset: int
    checkpoint_sha256: str | dict[str, str]  # "untrained" when the weights came from no file
    versions: dict[str, str]  # mattrt, torch, onnx, onnxruntime, ...
    created: str  # ISO 8601, UTC
    lint: dict[str, Any] = field(default_factory=dict)  # {"passed": bool, "problems": [...]}
    # What the semantic stage is (NETWORK_DEFAULT for the registered models): "output" trimap
    # (probabilities a detail stage and the fusion follow) or alpha (an imported single-stage
    # network); "fit" letterbox (aspect kept on the canvas) or stretch (resized to the square);
    # "refine" the full-resolution refinement of an alpha network; "card" its model card.
    network: dict[str, Any] = field(default_factory=lambda: dict(NETWORK_DEFAULT))
    format_version: int = FORMAT_VERSION

    # -- access -------------------------------------------------------------------------------
    def graphs(self) -> list[GraphEntry]:
        """Every graph: the stages in call order, then the fusion graph."""
        return [*self.stages, *([self.fusion_graph] if self.fusion_graph else [])]

    def stage(self, name: str) -> GraphEntry:
        for entry in self.graphs():
            if entry.name == name:
                return entry
        raise InputError(
            f"manifest of {self.model!r} has no graph {name!r}; it has: {', '.join(g.name for g in self.graphs())}"
        )

    def named_files(self) -> list[str]:
        """Every file of the export directory the manifest names, manifest.json included."""
        names = [MANIFEST_FILE, *(f for g in self.graphs() for f in g.named_files())]
        return list(dict.fromkeys(names))

    def files(self, precision: str = "fp32") -> dict[str, str]:
        """graph name -> file name for one precision (graphs without that precision are left out)."""
        return {g.name: g.files[precision] for g in self.graphs() if precision in g.files}

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise InputError(
                f"manifest format_version {version!r} is not supported (this mattrt reads version {FORMAT_VERSION}); "
                "re-export the model with this mattrt"
            )
        validate_manifest_data(data)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["stages"] = [GraphEntry.from_dict(s) for s in data["stages"]]
        values["fusion_graph"] = GraphEntry.from_dict(data["fusion_graph"]) if data.get("fusion_graph") else None
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError("manifest JSON must be an object")
        return cls.from_dict(data)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, directory_or_file: str | Path) -> "Manifest":
        """Read DIR/manifest.json, a manifest.json path, or the manifest embedded in an .onnx file."""
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / MANIFEST_FILE
        if not path.is_file():
            raise InputError(f"no export manifest at {path}; expected a directory written by `mattrt export`")
        if path.suffix == ".onnx":
            return cls.from_onnx(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise InputError(f"{path} is not UTF-8 text, so not a mattrt export manifest; re-export the model") from None
        try:
            return cls.from_json(text)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None

    @classmethod
    def from_onnx(cls, path: str | Path) -> "Manifest":
        model = load_graph_proto(path)
        for prop in model.metadata_props:
            if prop.key == MANIFEST_KEY:
                try:
                    return cls.from_json(prop.value)
                except InputError as exc:
                    raise InputError(f"{path}: embedded manifest: {exc}") from None
        raise InputError(f"{path} carries no mattrt manifest (metadata key {MANIFEST_KEY!r})")


# -- validation ---------------------------------------------------------------------------------
_MAX_REPORTED = 5


@functools.lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    """The JSON Schema every manifest must satisfy (manifest.schema.json)."""
    return json.loads(SCHEMA_FILE.read_text())


def checked_validator(schema: dict[str, Any]):
    """A jsonschema validator for `schema` (of the draft it declares), the schema itself checked first."""
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


@functools.lru_cache(maxsize=1)
def _validator():
    return checked_validator(manifest_schema())


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_schema_error(error) -> str:
    # anyOf without a description of its own: the alternative of the value's type says most
    while error.context and not error.schema.get("description"):
        matching_type = [e for e in error.context if e.validator != "type" or len(e.absolute_path) > len(error.absolute_path)]
        if not matching_type:
            break
        error = max(matching_type, key=lambda e: len(e.absolute_path))
    where = error.json_path[2:] if error.json_path.startswith("$.") else error.json_path.lstrip("$") or "top level"
    expected = None
    if isinstance(error.schema, dict) and error.schema is not _validator().schema:  # not the root's description
        expected = error.schema.get("description")
    if error.validator in ("pattern", "anyOf") and expected:
        message = f"{_shorten(repr(error.instance))} is not {expected}"
    else:
        message = _shorten(error.message)
        if expected:
            message += f" ({expected})"
    return f"{where}: {message}"


def validate_manifest_data(data: Any) -> None:
    """Raise InputError naming each field (up to five) where `data` breaks the manifest schema."""
    errors = sorted(_validator().iter_errors(data), key=jsonschema.exceptions.relevance)
    if not errors:
        return
    shown = [_describe_schema_error(e) for e in errors[:_MAX_REPORTED]]
    more = f" (and {len(errors) - _MAX_REPORTED} more)" if len(errors) > _MAX_REPORTED else ""
    raise InputError(
        "not a valid mattrt export manifest: " + "; ".join(shown) + more
        + ". Re-export the model with `mattrt export` (hand edits must keep to manifest.schema.json)"
    )


def resolve_file(directory: str | Path, name: str) -> Path:
    """The path of a file the manifest names, refused unless it lies inside `directory` (a plain
    name, and no link that leads out of the directory)."""
    directory = Path(directory)
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise InputError(f"{directory}: manifest names {name!r}, which is not a plain file name inside the export directory")
    path = directory / name
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        raise InputError(
            f"{path} leads outside the export directory {root} (to {path.resolve()}); "
            "mattrt opens only files inside the export: re-export the model"
        )
    return path


def load_graph_proto(path: str | Path, load_external_data: bool = False):
    """An ONNX ModelProto read from `path`, or InputError naming a file that is not one."""
    path = Path(path)
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except (protobuf_message.Error, OSError, ValueError) as exc:
        text = str(exc).strip()
        reason = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
        raise InputError(
            f"{path} is not a readable ONNX graph ({reason}): the file is damaged or was replaced; "
            "re-export the model with `mattrt export`"
        ) from None


def _tensor_metas(values) -> tuple[TensorMeta, ...]:
    metas = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except (KeyError, TypeError, ValueError):
            dtype = np.dtype("V")  # an ONNX type numpy has no name for: never equal to a manifest dtype
        metas.append(TensorMeta(value.name, shape, dtype))
    return tuple(metas)


def graph_interface(path: str | Path) -> tuple[tuple[TensorMeta, ...], tuple[TensorMeta, ...]]:
    """Input and output metadata read from a graph file (weights are not loaded)."""
    proto = load_graph_proto(path)
    initializers = {t.name for t in proto.graph.initializer}
    return _tensor_metas([v for v in proto.graph.input if v.name not in initializers]), _tensor_metas(proto.graph.output)


def interface_differences(entry: GraphEntry, path: str | Path) -> list[str]:
    """How the graph file's inputs and outputs differ from what `entry` declares (empty: none)."""
    inputs, outputs = graph_interface(path)
    differences = []
    for kind, declared, found in (("inputs", entry.inputs, inputs), ("outputs", entry.outputs, outputs)):
        want = [t.meta() for t in declared]
        if list(found) != want:
            differences.append(
                f"{kind}: the graph has {', '.join(m.describe() for m in found) or 'none'}; "
                f"the manifest declares {', '.join(m.describe() for m in want)}"
            )
    return differences


def check_graph_file(entry: GraphEntry, directory: str | Path, name: str) -> Path:
    """The path of graph file `name` of `entry`, after checking that it lies inside the export
    directory, exists, is an ONNX graph and has the inputs and outputs the manifest declares."""
    path = resolve_file(directory, name)
    if not path.is_file():
        raise InputError(f"{path} is missing: the manifest names it for graph {entry.name!r}; re-export the model")
    differences = interface_differences(entry, path)
    if differences:
        raise InputError(
            f"{path} does not match the manifest's graph {entry.name!r}: " + "; ".join(differences)
            + ". The file was replaced or the manifest edited: re-export the model"
        )
    return path


def embed_manifest(model_proto, manifest: Manifest) -> None:
    """Store the manifest JSON in an ONNX model's metadata_props (replacing an older one)."""
    kept = [p for p in model_proto.metadata_props if p.key != MANIFEST_KEY]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    entry = model_proto.metadata_props.add()
    entry.key = MANIFEST_KEY
    entry.value = manifest.to_json()


__all__ = [
    "BATCH_DIM",
    "checked_validator",
    "check_graph_file",
    "graph_interface",
    "interface_differences",
    "load_graph_proto",
    "manifest_schema",
    "resolve_file",
    "validate_manifest_data",
    "GraphEntry",
    "MANIFEST_FILE",
    "MANIFEST_KEY",
    "Manifest",
    "PRECISIONS",
    "RUN_PRECISIONS",
    "TensorInfo",
    "TensorMeta",
    "embed_manifest",
    "graph_precision",
]
