"""Core metadata shared by export, calibration and runtime: the export manifest and the
tensor metadata of engine inputs and outputs.

The manifest of an export directory is everything downstream needs without the model class.

`DIR/manifest.json` holds it, and every graph of the directory carries the same JSON in its
metadata_props under `MANIFEST_KEY`, so a lone .onnx file still describes itself.

Shapes are lists whose batch dimension is the string "batch" (dynamic, 1..max_batch); every
other dimension is fixed. `files` maps a precision ("fp32"; later "fp16", "int8") to a file
name inside the directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mattrt.errors import InputError

MANIFEST_FILE = "manifest.json"
MANIFEST_KEY = "mattrt.manifest"
FORMAT_VERSION = 1
BATCH_DIM = "batch"
# Every precision a graph file can have; fp32 is what `mattrt export` writes, the others are
# added by calibration (FP16 graph, INT8 Q/DQ graph).
PRECISIONS = ("fp32", "fp16", "int8")


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
        return cls(**values)


@dataclass
class Manifest:
    model: str
    settings: dict[str, Any]  # ModelSettings.to_dict()
    stages: list[GraphEntry]  # network stages in call order
    fusion_graph: GraphEntry | None  # trimap + detail -> alpha, the model's fusion as native ops
    normalization: dict[str, Any]  # channel_order, mean, std, input_range
    fusion: str
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
        known = {f.name for f in fields(cls)}
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.name not in ("lint", "format_version"))
        if missing:
            raise InputError(f"manifest lacks {', '.join(missing)}; is it a mattrt export manifest?")
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
        return cls.from_json(path.read_text())

    @classmethod
    def from_onnx(cls, path: str | Path) -> "Manifest":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        for prop in model.metadata_props:
            if prop.key == MANIFEST_KEY:
                return cls.from_json(prop.value)
        raise InputError(f"{path} carries no mattrt manifest (metadata key {MANIFEST_KEY!r})")


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
    "GraphEntry",
    "MANIFEST_FILE",
    "MANIFEST_KEY",
    "Manifest",
    "PRECISIONS",
    "TensorInfo",
    "TensorMeta",
    "embed_manifest",
]
