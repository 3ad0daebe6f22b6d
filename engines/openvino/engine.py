"""The openvino backend: an export's ONNX graphs compiled by OpenVINO for the CPU.

    spec, engines = get_backend("openvino").open("exports/aim", device="cpu", precision="bf16", threads=2)

Precision is a run setting here, always passed to OpenVINO explicitly (INFERENCE_PRECISION_HINT):
its CPU plugin defaults to bf16 on CPUs with native bf16, so an unset hint would change the
numbers from one machine to the next.
    fp32  the fp32 graphs, hint f32.
    bf16  the fp32 graphs, hint bf16: a precision of its own (asked for, reported, never implied).
          Only where OpenVINO lists BF16 in the CPU's OPTIMIZATION_CAPABILITIES, which its CPU
          plugin does for native bf16 (avx512_bf16, avx2_vnni_2, AMX); elsewhere it is refused,
          naming the flag (OpenVINO would emulate it slowly, or raise).
    int8  the export's CPU INT8 graph, hint f32 for its float layers. One rule: OpenVINO runs the
          U8S8 Q/DQ graph the calibration writes for CPUs (`<stage>.int8_cpu.onnx`, which the
          manifest names in backend_files["onnxruntime"]["int8"]) and never the TensorRT-form
          S8S8 graph (files["int8"]): OpenVINO 2026.4 computes that one wrongly (relative L2 0.63
          against FP32 where onnxruntime on the same file gives 0.085:
          benchmarks/results/openvino-research-2026-12-07.md).
          Both run as u8 convolutions. An export without the CPU graph is refused with the command
          that adds it. OpenVINO's int8 results differ by up to ~0.016 between compiles of the same
          graph (two result variants, same error against FP32), so compare them with a tolerance.
    fp16  not offered: OpenVINO decompresses an FP16 graph's weights and computes in f32 on CPUs.

Compiling: `Core.read_model` reads the ONNX graph (no conversion step) once per engine; each batch
size the engine is called with gets its own static-shape compile (a reshaped clone), made on first
use and kept (up to MAX_COMPILED sizes, least recently used dropped), with its own reused
InferRequest. Static shapes ran up to 2x faster than the dynamic batch (aim detail 512 x 512:
886 vs 1885 ms); a compile costs 0.3-1.8 s per stage and size on a 2-core EPYC, and each compiled
size holds its own memory (full-size aim detail at batch 4: ~0.6 GB), so nothing is compiled before
it is used. Activation reads the graph (OpenVINO's ONNX frontend converts it there), so a graph
with operators OpenVINO cannot convert fails when the engines open.

No compiled-model cache: a cached import saves at most ~1 s per stage there, the static blobs
grow to 2.6-6.8x the graph, and OpenVINO's own cache loads a corrupted blob without an error and
with wrong outputs (benchmarks/results/openvino-research-2026-12-07.md, section 4).

Threads: INFERENCE_NUM_THREADS = `--threads` (runtime/threads.py: the cores this process may use),
one stream, the LATENCY hint, CPU pinning off (a pinned worker cannot leave a core another process
holds). Calls share the caller's input arrays (no copy in) and copy outputs: with shared outputs
the next call would overwrite the arrays the previous one returned.

Errors: a graph OpenVINO cannot read or compile is an InputError naming the file, the operator
types and (found by a partial conversion matched back to the ONNX graph) the node names, and the
way out (`--backend onnxruntime`); it is never replaced by another backend quietly.
`import openvino` is lazy and declines OpenVINO's usage telemetry (mattrt/availability.py).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

from mattrt.availability import import_openvino
from mattrt.errors import InputError
from mattrt.lazy import lazy_import
from mattrt.machine import cpu_model, isa_flags
from mattrt.manifest import GraphEntry, check_graph_file
from mattrt.runtime.artifacts import ModelSpec, read_export
from mattrt.runtime.engine import Backend, Engine, TensorMeta, check_choice
from mattrt.runtime.threads import resolve_threads

ov = lazy_import("openvino", probe="openvino", importer=import_openvino)
onnx = lazy_import("onnx")

NAME = "openvino"
DEVICE = "CPU"
PRECISIONS = ("fp32", "bf16", "int8")
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
# The manifest names the U8S8 CPU INT8 graph under this backend (module docstring: int8).
INT8_GRAPH_BACKEND = "onnxruntime"
MAX_COMPILED = 4
BF16_FLAGS = "avx512_bf16, avx2_vnni_2 or amx_bf16"


@functools.cache
def core():
    """One OpenVINO Core for the process (it holds the CPU plugin)."""
    return ov.Core()


def capabilities() -> list[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES (FP32, BF16, INT8, ...)."""
    return [str(c) for c in core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")]


def refusal(device: str, precision: str) -> str | None:
    """Why this CPU cannot run `precision` under OpenVINO (None: it can)."""
    if precision == "bf16" and "BF16" not in capabilities():
        have = ", ".join(isa_flags()) or "none of the listed ISA flags"
        return (f"--precision bf16 needs a CPU with native bfloat16 ({BF16_FLAGS}); this {cpu_model()} has "
                f"{have} (OpenVINO capabilities: {', '.join(capabilities())}). Use --precision fp32 or int8")
    return None


def identity(device: str = "cpu") -> dict[str, Any]:
    """What OpenVINO's results and speed depend on here: its version, the CPU plugin's device name
    and capabilities, and the CPU's ISA flags (the device name alone is "AMD EPYC" on AVX-512 and
    AVX2 machines alike)."""
    return {"openvino": ov.get_version(), "cpu": str(core().get_property(DEVICE, "FULL_DEVICE_NAME")),
            "capabilities": capabilities(), "isa": isa_flags()}


def graph_file(entry: GraphEntry, precision: str, directory: Path) -> str:
    """The graph file this backend runs for a stage at `precision` (module docstring)."""
    if precision == "int8":
        name = entry.backend_files.get(INT8_GRAPH_BACKEND, {}).get("int8")
        if name is None:
            raise InputError(
                f"export {directory} has no CPU INT8 graph for stage {entry.name!r} (the U8S8 <stage>.int8_cpu.onnx; "
                "OpenVINO does not run the TensorRT-form int8 graph, which it computes wrongly); add it with "
                f"`mattrt precision {directory} --precision int8`"
            )
        return name
    name = entry.files.get("fp32")
    if name is None:
        raise InputError(f"export {directory} has no fp32 graph for stage {entry.name!r}; re-export the model")
    return name


# -- errors -----------------------------------------------------------------------------------------
_UNSUPPORTED = re.compile(r"No conversion rule found for operations:\s*([^\n]+)")
_FAILED = re.compile(r"Conversion is failed for:\s*([^\n]+)")
_UNREADABLE = ("Model can't be parsed", "Unable to read the model", "Could not open the file")
_HEADER = re.compile(r"^(Exception from \S+|Check '.*' failed at \S+|FrontEnd API failed with \w+:?)")
_FRONTEND: list = []  # the ONNX frontend's manager, kept for the process (see unconverted_nodes)


def _reason(text: str) -> str:
    """The first line of an OpenVINO message that is not a source location or a check header."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if not _HEADER.match(line)), lines[0] if lines else "unknown error")[:300]


def unconverted_nodes(path: Path) -> list[tuple[str, str]]:
    """(operator, ONNX node name) of each node OpenVINO's ONNX frontend cannot convert. A partial
    conversion leaves placeholder ops that keep the ONNX node's output names; those are matched
    back to the graph. The frontend manager stays alive for the process (the placeholders' code
    lives in the frontend library, which unloads with it: a segfault otherwise); only output names
    are read from the placeholders (their attributes crash in 2026.4). [] when anything fails."""
    try:
        if not _FRONTEND:
            _FRONTEND.append(ov.frontend.FrontEndManager())
        frontend = _FRONTEND[0].load_by_framework("onnx")
        partial = frontend.convert_partially(frontend.load(str(path)))
        placeholders = [set().union(*(o.get_names() for o in op.outputs())) for op in partial.get_ordered_ops()
                        if op.get_type_name().endswith(("FrameworkNode", "NotSupportedONNXNode"))]
        graph = onnx.load(str(path), load_external_data=False).graph
        found = []
        for names in placeholders:
            node = next((n for n in graph.node if names & set(n.output)), None)
            if node is not None:
                kind = f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
                found.append((kind, node.name or f"(the node producing {', '.join(node.output)})"))
        return found
    except Exception:  # noqa: BLE001 - best effort: the message's operator types are reported anyway
        return []


def load_error(path: Path, exc: BaseException, during: str) -> InputError:
    """The InputError for OpenVINO failing to read or compile `path` (a plain RuntimeError)."""
    text = str(exc)
    ops = [op.strip() for match in (_UNSUPPORTED.search(text), _FAILED.search(text)) if match
           for op in match.group(1).split(",") if op.strip()]
    version = ov.get_version().split("-")[0]
    if ops:
        nodes = unconverted_nodes(path)
        where = ("; node(s): " + ", ".join(f"{name} ({kind})" for kind, name in nodes)) if nodes else ""
        return InputError(
            f"OpenVINO {version} cannot {during} {path}: no conversion for operator(s) "
            f"{', '.join(dict.fromkeys(ops))}{where}. Run this graph with --backend onnxruntime, or export the "
            "model without those operators"
        )
    if any(marker in text for marker in _UNREADABLE):
        return InputError(f"OpenVINO {version} cannot {during} {path}: {_reason(text)}; the file is damaged or not "
                          "an ONNX graph: re-export the model with `mattrt export`")
    return InputError(f"OpenVINO {version} cannot {during} {path}: {_reason(text)}. Run this graph with "
                      "--backend onnxruntime")


# -- loading and running ----------------------------------------------------------------------------
class CompiledModelLoader:
    """Loader: reads one ONNX graph once and compiles it for the CPU at a static batch size."""

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None):
        self.path = Path(path)
        self.precision = check_choice(precision, PRECISIONS, "openvino precision")
        self.threads = resolve_threads(threads)
        if not self.path.is_file():
            raise InputError(f"ONNX graph {self.path} does not exist")
        refused = refusal("cpu", self.precision)  # also where no Backend.check ran first (Triton stage models)
        if refused:
            raise InputError(refused)
        self._model = None

    @property
    def config(self) -> dict[str, Any]:
        return {"INFERENCE_PRECISION_HINT": HINTS[self.precision], "INFERENCE_NUM_THREADS": self.threads,
                "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}

    def model(self):
        """The graph as OpenVINO read it (dynamic batch)."""
        if self._model is None:
            try:
                self._model = core().read_model(str(self.path))
            except RuntimeError as exc:
                raise load_error(self.path, exc, "read") from None
        return self._model

    def release(self) -> None:
        self._model = None

    def __call__(self, batch: int):
        """A CompiledModel at batch size `batch` (a reshaped clone: compiling one model object twice
        after an in-place reshape gave different int8 results)."""
        model = self.model().clone()
        model.reshape({port.get_any_name(): [batch, *port.get_partial_shape()[1:]] for port in model.inputs})
        try:
            return core().compile_model(model, DEVICE, self.config)
        except RuntimeError as exc:
            raise load_error(self.path, exc, "compile") from None


class OpenVinoEngine(Engine):
    """Runner for one ONNX graph through OpenVINO on the CPU (module docstring)."""

    backend = NAME

    def __init__(self, loader: CompiledModelLoader, name: str | None = None, max_batch: int | None = None,
                 inputs: tuple[TensorMeta, ...] | None = None, outputs: tuple[TensorMeta, ...] | None = None,
                 max_compiled: int | None = None):
        super().__init__(name or loader.path.stem, "cpu", loader.precision)
        self.loader = loader
        self._describe_graph(loader.path, inputs, outputs, max_batch)
        # How many batch sizes stay compiled (a server's dynamic batcher sends every size: keep them all)
        self.max_compiled = max_compiled
        self._requests: dict[int, Any] = {}  # batch -> InferRequest, least recently used first

    def _activate(self) -> None:
        model = self.loader.model()
        names_in = [port.get_any_name() for port in model.inputs]
        names_out = [port.get_any_name() for port in model.outputs]
        if names_in != self.input_names or names_out != self.output_names:
            raise InputError(
                f"{self.loader.path.name}: the graph's inputs {names_in} / outputs {names_out} differ from the "
                f"declared {self.input_names} / {self.output_names}; the manifest does not describe this file"
            )

    def _deactivate(self) -> None:
        self._requests.clear()
        self.loader.release()

    def _request(self, batch: int):
        request = self._requests.pop(batch, None)
        if request is None:
            request = self.loader(batch).create_infer_request()
            while len(self._requests) >= (self.max_compiled or MAX_COMPILED):
                self._requests.pop(next(iter(self._requests)))
        self._requests[batch] = request
        return request

    @property
    def compiled_batches(self) -> list[int]:
        return list(self._requests)

    def _infer(self, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        request = self._request(batch)
        results = request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()}, share_inputs=True,
                                share_outputs=False)
        return {name: results[index] for index, name in enumerate(self.output_names)}

    def describe(self) -> str:
        return f"{super().describe()} [OpenVINO, {self.loader.threads} threads, hint {HINTS[self.precision]}]"


def open_artifacts(directory: str | Path, device: str = "cpu", precision: str = "fp32",
                   threads: int | None = None) -> tuple[ModelSpec, dict[str, Engine]]:
    """OpenVINO engines for the stage graphs of an export directory, read through its manifest."""
    if device != "cpu":
        raise InputError(f"the openvino backend runs on cpu, not {device!r}")
    check_choice(precision, PRECISIONS, "precision")
    directory, manifest, spec = read_export(directory)
    engines: dict[str, Engine] = {}
    for entry in manifest.stages:
        path = check_graph_file(entry, directory, graph_file(entry, precision, directory))
        engines[entry.name] = OpenVinoEngine(
            CompiledModelLoader(path, precision=precision, threads=threads), name=entry.name,
            max_batch=int(manifest.max_batch), inputs=tuple(t.meta() for t in entry.inputs),
            outputs=tuple(t.meta() for t in entry.outputs),
        )
    return spec, engines


BACKEND = Backend(
    name=NAME,
    summary="OpenVINO on the CPU over the ONNX graphs of an export (FP32; BF16 where the CPU has it; the CPU INT8 "
            "graph)",
    probes=("openvino",),
    devices=("cpu",),
    precisions=PRECISIONS,
    artifacts="onnx",
    opener=lambda directory, **options: open_artifacts(directory, **options),
    options=("threads",),
    identity=identity,
    refusal=refusal,
)


__all__ = ["BACKEND", "CompiledModelLoader", "OpenVinoEngine", "capabilities", "graph_file", "identity", "load_error",
           "open_artifacts", "refusal", "unconverted_nodes"]
