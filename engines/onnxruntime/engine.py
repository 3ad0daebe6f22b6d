"""The onnxruntime backend: one InferenceSession per graph of an export directory.

    with OnnxRuntimeEngine(SessionLoader("exports/shm/detail.onnx")) as engine: ...

Device "cpu" uses the CPUExecutionProvider; "cuda" needs the `onnxruntime_cuda` probe (the
onnxruntime-gpu build on a CUDA machine) and fails, rather than quietly running on the CPU,
when the session does not come up on CUDAExecutionProvider. Precision is a property of the
graph file (fp32, an FP16 graph, an INT8 Q/DQ graph); `open_artifacts` picks the file the
manifest names. `BACKEND` is this module's entry in the backend registry (engines/backends.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mattrt.availability import require
from mattrt.errors import InputError
from mattrt.lazy import lazy_import
from mattrt.manifest import PRECISIONS, check_graph_file
from mattrt.runtime.artifacts import ModelSpec, read_export
from mattrt.runtime.engine import DEVICES, Backend, Engine, TensorMeta, check_choice
from mattrt.runtime.threads import configure_onnxruntime

ort = lazy_import("onnxruntime", probe="onnxruntime")

_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class SessionLoader:
    """Loader: an onnxruntime InferenceSession for one .onnx file."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None):
        self.path = Path(path)
        self.device = check_choice(device, DEVICES, "device")
        self.threads = threads
        if not self.path.is_file():
            raise InputError(f"ONNX graph {self.path} does not exist")
        require("onnxruntime", "the onnxruntime engine")
        if device == "cuda":
            require("onnxruntime_cuda", "the onnxruntime engine on device cuda")

    def __call__(self):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        configure_onnxruntime(options, self.threads)
        try:
            session = ort.InferenceSession(str(self.path), options, providers=_PROVIDERS[self.device])
        except _ort_errors() as exc:
            reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise InputError(
                f"onnxruntime cannot load {self.path}: {reason[:300]}; the file is damaged or not an ONNX graph: "
                "re-export the model with `mattrt export`"
            ) from None
        wanted = _PROVIDERS[self.device][0]
        if session.get_providers()[0] != wanted:
            raise InputError(
                f"{self.path.name}: onnxruntime created the session on {session.get_providers()[0]}, not {wanted}"
            )
        return session


def _ort_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's exception classes (they derive from Exception directly)."""
    state = ort.capi.onnxruntime_pybind11_state
    found = tuple(
        value for value in vars(state).values() if isinstance(value, type) and issubclass(value, Exception)
    )
    return found + (RuntimeError,)


class OnnxRuntimeEngine(Engine):
    """Runner for one ONNX graph through onnxruntime."""

    backend = "onnxruntime"

    def __init__(
        self,
        loader: SessionLoader,
        name: str | None = None,
        precision: str = "fp32",
        max_batch: int | None = None,
        inputs: tuple[TensorMeta, ...] | None = None,
        outputs: tuple[TensorMeta, ...] | None = None,
    ):
        super().__init__(name or loader.path.stem, loader.device, precision)
        self.loader = loader
        self._describe_graph(loader.path, inputs, outputs, max_batch)
        self._session = None

    def _activate(self) -> None:
        self._session = self.loader()
        names_in = [i.name for i in self._session.get_inputs()]
        names_out = [o.name for o in self._session.get_outputs()]
        if names_in != self.input_names or names_out != self.output_names:
            self._session = None
            raise InputError(
                f"{self.loader.path.name}: the graph's inputs {names_in} / outputs {names_out} differ from the "
                f"declared {self.input_names} / {self.output_names}; the manifest does not describe this file"
            )

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        values = self._session.run(self.output_names, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return {name: np.asarray(value) for name, value in zip(self.output_names, values)}


def open_artifacts(
    directory: str | Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None
) -> tuple[ModelSpec, dict[str, Engine]]:
    """onnxruntime engines for the stage graphs of an export directory, read through its manifest."""
    check_choice(device, DEVICES, "device")
    check_choice(precision, PRECISIONS, "precision")
    directory, manifest, spec = read_export(directory)
    engines: dict[str, Engine] = {}
    for entry in manifest.stages:
        graph = entry.file_for(precision, "onnxruntime")
        if graph is None:
            raise InputError(
                f"export {directory} has no {precision} graph for stage {entry.name!r} "
                f"(it has: {', '.join(entry.files)}); add it with `mattrt precision {directory} --precision {precision}` "
                "or pick another precision"
            )
        # inside the export, readable, and with the inputs and outputs the manifest declares
        path = check_graph_file(entry, directory, graph)
        loader = SessionLoader(path, device=device, threads=threads)
        engines[entry.name] = OnnxRuntimeEngine(
            loader,
            name=entry.name,
            precision=precision,
            max_batch=int(manifest.max_batch),
            inputs=tuple(t.meta() for t in entry.inputs),
            outputs=tuple(t.meta() for t in entry.outputs),
        )
    return spec, engines


BACKEND = Backend(
    name="onnxruntime",
    summary="onnxruntime sessions over the ONNX graphs of an export (FP32, FP16 graph, INT8 Q/DQ graph)",
    probes=("onnxruntime",),
    devices=DEVICES,
    device_probes={"cuda": ("onnxruntime_cuda",)},
    precisions=PRECISIONS,
    artifacts="onnx",
    opener=lambda directory, **options: open_artifacts(directory, **options),
    options=("threads",),
    identity=lambda device: {"onnxruntime": ort.__version__},
)


__all__ = ["BACKEND", "OnnxRuntimeEngine", "SessionLoader", "open_artifacts"]
