"""The tensorrt backend: stage engines deserialized from the plans `mattrt build` wrote.

    spec, engines = open_plans("exports/aim/tensorrt", precision="fp16")
    with engines["detail"] as engine:
        outputs = engine.run_device({"image": tiles, "guidance": guidance})   # CuPy in, CuPy out

Why it is written this way:
- Before anything is deserialized, the plans' metadata (tensorrt-<precision>.json) is checked
  against this runtime and GPU by TensorRT's documented rules (`version_refusal`): plans run on
  the TensorRT that built them; version-compatible plans also on later ones of the same major and
  across the two major steps TensorRT supports (10 -> 11, 8 -> 10); the lean runtime runs only
  version-compatible plans of its own version; another compute capability needs hardware-compatible
  plans. A refusal says how to rebuild. TensorRT has no preflight API, so deserialization is still
  checked: a None engine is an error that carries TensorRT's last log line.
- A DLA plan (metadata `dla`) gets its DLA core set on the runtime before it is deserialized (the
  runtime's core defaults to -1), and a device without that core is refused.
- One GPU array library: CuPy holds the inputs and outputs, the stream and the CUDA graphs (no
  pycuda). `execute_async_v3` runs on the engine's own non-blocking stream, ordered after the
  caller's current stream by an event and before it again by another, so the pipeline's CuPy
  pixel ops (runtime/pixel_ops.py) consume the outputs in stream order without a host sync.
- Device path (`run_device`): CuPy feeds are bound by address (no copy) and the outputs are
  returned as views of the engine's output buffers: they stay valid until the engine's next call
  (the pipeline stitches each batch before it sends the next). With CUDA graphs the feeds are
  first copied into the engine's own input buffers (one device copy), so the captured addresses
  stay fixed; one graph is captured per batch size, after one plain run (TensorRT's lazy setup
  must not be captured), and re-captured whenever the bound addresses differ from the captured
  ones. A capture that fails is logged once and its batch size runs without a graph from then on
  (the plain run already gave that call's outputs), as Triton's TensorRT backend does. Feeds are
  also copied when their address is not 256-byte aligned (setTensorAddress needs it) and when a
  fixed-batch plan (DLA) gets a shorter batch: the engine's buffer is zero-padded to the plan's
  batch and the first rows of the outputs returned.
- Host path (`run`): NumPy feeds are uploaded into the input buffers and the outputs copied back.
- `RUNTIME_API` lists every TensorRT name this module uses; tests/test_tensorrt_api.py checks
  them against the TensorRT 11.4 lean runtime's bindings.
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
from packaging.version import Version

from mattrt import availability
from mattrt.engines.tensorrt import build as tensorrt_build
from mattrt.engines.tensorrt.build import GpuIdentity, capturing_logger, gpu_identity, last_errors
from mattrt.engines.tensorrt.plan_files import metadata_path, read_metadata
from mattrt.errors import InputError, MattrtError, MissingDependencyError
from mattrt.lazy import lazy_import
from mattrt.manifest import PRECISIONS, Manifest
from mattrt.runtime.artifacts import ModelSpec
from mattrt.runtime.engine import Backend, Engine, EngineError, TensorMeta, check_choice, require_all

cupy = lazy_import("cupy", probe="cupy_device")
_RUNTIMES = {name: lazy_import(name, probe="tensorrt_runtime") for name in availability.TENSORRT_RUNTIME_MODULES}

RUN_PROBES = ("tensorrt_runtime", "cupy_device")

# Every TensorRT runtime name this module uses (checked against TensorRT 11.4 by
# tests/test_tensorrt_api.py). Dotted: attribute of an attribute of the module.
RUNTIME_API = (
    "Runtime", "Runtime.deserialize_cuda_engine", "Runtime.engine_host_code_allowed", "Runtime.DLA_core",
    "Runtime.num_DLA_cores",
    "ILogger", "Logger.Severity.INTERNAL_ERROR", "Logger.Severity.ERROR", "Logger.Severity.WARNING",
    "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype", "ICudaEngine.get_tensor_shape", "ICudaEngine.get_tensor_profile_shape",
    "ICudaEngine.create_execution_context",
    "IExecutionContext.set_input_shape", "IExecutionContext.set_tensor_address", "IExecutionContext.get_tensor_shape",
    "IExecutionContext.execute_async_v3",
    "TensorIOMode.INPUT", "TensorIOMode.OUTPUT",
    "DataType.FLOAT", "DataType.HALF", "DataType.INT8", "DataType.INT32", "DataType.INT64", "DataType.BOOL",
    "DataType.UINT8",
)
# IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment" (NvInferRuntime.h).
TENSOR_ALIGNMENT = 256
# Version-compatible plans across major versions: only these (built, runtime) majors (TensorRT
# 11.4.1 Support Matrix, "Engine Portability"); within a major, any later version runs them.
CROSS_MAJOR_COMPATIBLE = frozenset({(8, 10), (10, 11)})
_NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                "BOOL": np.bool_, "UINT8": np.uint8}


class PlanError(MattrtError):
    """Plans that cannot run here (other TensorRT version or GPU, missing or changed files)."""


def runtime_module():
    """The TensorRT module that runs plans here (full TensorRT, else the lean runtime)."""
    name = availability.tensorrt_runtime_module()
    if name is None:
        require_all(("tensorrt_runtime",), "running TensorRT plans")
    return _RUNTIMES[name]


def is_lean(module_name: str | None) -> bool:
    return module_name is not None and module_name != "tensorrt"


def resolve(module, dotted: str):
    """module.a.b.c for "a.b.c" (AttributeError naming the first missing part)."""
    value = module
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def create_runtime(module, logger):
    """module.Runtime(logger), refused when TensorRT logged an error while creating it. Without a
    usable CUDA driver TensorRT still returns a Runtime object, and using or even destroying it
    crashes the process (seen with the 11.4 lean runtime): such an object is kept alive for the
    rest of the process (one reference leaked on purpose) and a clear error raised instead."""
    runtime = module.Runtime(logger)
    if runtime is None or any(is_error for is_error, _ in logger.messages):
        if runtime is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(runtime))
        raise MissingDependencyError(
            f"TensorRT could not create a runtime: {last_errors(logger)}. It needs a CUDA device and a driver at "
            "least as new as TensorRT's CUDA version (`nvidia-smi`; probes: `mattrt doctor`)"
        )
    return runtime


# -- can these plans run here? ------------------------------------------------------------------
def version_refusal(built: str, runtime: str, *, version_compatible: bool, lean: bool = False) -> str | None:
    """Why a plan built by TensorRT `built` cannot run on TensorRT `runtime` (None: it can), by the
    rules in the module docstring. Versions compare on the parts both name ("10" vs "10.3.0.26":
    the major only), so a version known only in part is refused only where that part decides."""
    made, used = Version(built).release, Version(runtime).release
    common = min(len(made), len(used))
    same = made[:common] == used[:common]
    if lean:  # IRuntime::loadRuntime (NvInferRuntime.h): version-compatible plans of the lean runtime's own version
        if not version_compatible:
            return f"TensorRT's lean runtime {runtime} runs version-compatible plans only; these were built without it"
        return None if same else (f"TensorRT's lean runtime {runtime} runs version-compatible plans built by its own "
                                  f"version; these were built by TensorRT {built}")
    if not version_compatible:
        return None if same else (f"the plans were built by TensorRT {built} (not version compatible), this is "
                                  f"TensorRT {runtime}")
    if used[:common] < made[:common]:
        return f"version-compatible plans built by TensorRT {built} run on that or later versions, not on {runtime}"
    if made[0] != used[0] and (made[0], used[0]) not in CROSS_MAJOR_COMPATIBLE:
        steps = ", ".join(f"{a} -> {b}" for a, b in sorted(CROSS_MAJOR_COMPATIBLE))
        return (f"version-compatible plans built by TensorRT {built} do not run on TensorRT {runtime}: across major "
                f"versions TensorRT supports only {steps}")
    return None


def check_runnable(metadata: dict[str, Any], runtime_version: str, runtime_name: str, gpu: GpuIdentity,
                   rebuild: str) -> list[str]:
    """PlanError when plans built as `metadata` says cannot run on this runtime and GPU; else
    notes (e.g. another GPU model of the same compute capability). `rebuild` is the command."""
    options = metadata.get("options", {})
    version_compatible = bool(options.get("version_compatible"))
    refusal = version_refusal(str(metadata.get("tensorrt")), runtime_version, version_compatible=version_compatible,
                              lean=is_lean(runtime_name))
    if refusal:
        if is_lean(runtime_name) and not version_compatible:
            advice = (f"rebuild them with TensorRT {runtime_version}: `{rebuild} --version-compatible`, or install "
                      "the full TensorRT")
        else:
            advice = f"rebuild them with TensorRT {runtime_version}: `{rebuild}`" + (
                "" if version_compatible else " (add --version-compatible to run them on later versions too)")
        raise PlanError(f"{refusal}: {advice}")
    recorded = tuple(int(v) for v in str(metadata.get("compute_capability", "0.0")).split("."))
    notes = []
    if options.get("hardware_compatible"):
        if gpu.compute_capability < (8, 0):
            raise PlanError(f"hardware-compatible plans run on Ampere or newer GPUs; this is {gpu.describe()}")
    elif recorded != gpu.compute_capability:
        raise PlanError(
            f"the plans were built for {metadata.get('gpu')} (sm_{recorded[0]}{recorded[1]}); this GPU is "
            f"{gpu.describe()}: rebuild on this GPU with `{rebuild}`"
        )
    elif metadata.get("gpu") != gpu.name:
        notes.append(f"plans built on {metadata.get('gpu')} run on {gpu.name} (same compute capability); "
                     f"rebuild with `{rebuild}` for this GPU's best kernels")
    return notes


def rebuild_command(metadata: dict[str, Any], directory: Path) -> str:
    """The `mattrt build` command that rebuilds these plans with the same choices."""
    options = metadata.get("options", {})
    profile = metadata.get("profile", {}).get("name", "server")
    command = (f"mattrt build {metadata.get('export_dir', 'EXPORT_DIR')} --out {directory} "
               f"--precision {metadata.get('precision', 'fp32')} --profile {profile}")
    if options.get("workspace_mb") and options.get("workspace_mb") != metadata.get("profile", {}).get("workspace_mb"):
        command += f" --workspace {options['workspace_mb']}"
    for flag in ("version_compatible", "hardware_compatible"):
        if options.get(flag):
            command += " --" + flag.replace("_", "-")
    return command


def runtime_identity() -> tuple[str, str]:
    """(module name, version) of the TensorRT runtime used here."""
    name = availability.tensorrt_runtime_module()
    module = runtime_module()
    return name, str(module.__version__)


# -- the engine ---------------------------------------------------------------------------------
class TrtEngine(Engine):
    """Runner for one TensorRT plan (see the module docstring)."""

    backend = "tensorrt"
    device_arrays = True

    def __init__(self, plan: Path, *, name: str, precision: str, inputs: tuple[TensorMeta, ...],
                 outputs: tuple[TensorMeta, ...], max_batch: int, plan_sha256: str | None = None,
                 version_compatible: bool = False, cuda_graphs: bool = False, rebuild: str = "mattrt build",
                 preferred_batch: int | None = None, fixed_batch: bool = False, dla_core: int | None = None):
        super().__init__(name, "cuda", precision)
        self.plan = Path(plan)
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self.max_batch = int(max_batch)
        self.plan_sha256 = plan_sha256
        self.version_compatible = version_compatible
        self.cuda_graphs = bool(cuda_graphs)
        self.rebuild = rebuild
        self.preferred_batch = preferred_batch  # the batch the plan was tuned for (optimization-profile opt)
        self.fixed_batch = bool(fixed_batch)  # the plan runs max_batch only (DLA): shorter batches are padded
        self.dla_core = dla_core  # the DLA core a DLA plan runs on (None: GPU only)
        self._reset()

    def _reset(self) -> None:
        """Release in dependency order: graphs and context before the engine, the engine before
        the runtime."""
        self._graphs: dict[int, tuple[tuple, Any]] = {}  # batch -> (bound addresses, CUDA graph)
        self._graphless: dict[int, str] = {}  # batch -> why its capture failed (plain runs from then on)
        self._bound: dict[str, int] = {}
        self._context = None
        self._engine = None
        self._runtime = None
        self._logger = None
        self._buffers: dict[str, Any] = {}
        self._stream = None

    def describe(self) -> str:
        return f"{super().describe()} [plan {self.plan.name}; CUDA graphs: {'on' if self.cuda_graphs else 'off'}]"

    # -- lifecycle ------------------------------------------------------------------------------
    def _activate(self) -> None:
        require_all(RUN_PROBES, "the tensorrt engine")
        module = runtime_module()
        if not self.plan.is_file():
            raise PlanError(f"plan {self.plan} does not exist: rebuild with `{self.rebuild}`")
        data = self.plan.read_bytes()
        if self.plan_sha256 is not None and hashlib.sha256(data).hexdigest() != self.plan_sha256:
            raise PlanError(
                f"plan {self.plan} differs from the one its metadata records: rebuild with `{self.rebuild}`")
        self._logger = capturing_logger(module)
        self._runtime = create_runtime(module, self._logger)
        try:
            if self.dla_core is not None:
                self._use_dla_core()
            if self.version_compatible:
                # Version-compatible plans carry the lean runtime as host code; these are plans mattrt built.
                self._runtime.engine_host_code_allowed = True
            self._engine = self._runtime.deserialize_cuda_engine(data)
            if self._engine is None:
                raise PlanError(f"TensorRT could not load {self.plan}: {last_errors(self._logger, 1)}. "
                                f"Rebuild it for this GPU and TensorRT version: `{self.rebuild}`")
            self._check_io(module)
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise EngineError(f"TensorRT could not create an execution context for {self.plan.name}: "
                                  f"{last_errors(self._logger)} (not enough device memory?)")
            self._stream = cupy.cuda.Stream(non_blocking=True)
            for meta in (*self.inputs, *self.outputs):
                self._buffers[meta.name] = cupy.empty((self.max_batch, *meta.shape[1:]), dtype=meta.dtype)
            self._check_output_shapes()
        except BaseException:
            self._reset()
            raise

    def _use_dla_core(self) -> None:
        """Set the plan's DLA core on the runtime before deserializing (IRuntime::setDLACore: the
        core defaults to -1; Triton's TensorRT backend sets it the same way, src/loader.cc)."""
        cores = int(self._runtime.num_DLA_cores)
        if not 0 <= self.dla_core < cores:
            for_gpu = self.rebuild.replace("--profile jetson-orin-dla", "--profile jetson-orin")
            raise PlanError(f"plan {self.plan.name} runs layers on DLA core {self.dla_core}; TensorRT reports {cores} "
                            "DLA core(s) here: run it on the Jetson AGX Orin it was built for, or rebuild the plans "
                            f"for the GPU: `{for_gpu}`")
        self._runtime.DLA_core = self.dla_core

    def _deactivate(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._reset()

    def _check_io(self, module) -> None:
        """The plan's inputs and outputs are the manifest's (names, direction, dtype, shape, batch range)."""
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        expected = {m.name: ("INPUT", m) for m in self.inputs} | {m.name: ("OUTPUT", m) for m in self.outputs}
        if sorted(names) != sorted(expected):
            raise PlanError(f"plan {self.plan.name} has tensors {names}; the manifest lists {sorted(expected)}: "
                            f"rebuild with `{self.rebuild}`")
        for name in names:
            mode, meta = expected[name]
            got_mode = engine.get_tensor_mode(name)
            dtype = _NUMPY_TYPES.get(engine.get_tensor_dtype(name).name)
            shape = tuple(engine.get_tensor_shape(name))
            problems = []
            if got_mode != getattr(module.TensorIOMode, mode):
                problems.append(f"is not an {mode.lower()}")
            if dtype is None or np.dtype(dtype) != np.dtype(meta.dtype):
                problems.append(f"has type {engine.get_tensor_dtype(name).name}, not {np.dtype(meta.dtype).name}")
            if shape[1:] != tuple(meta.shape[1:]):
                problems.append(f"has shape {shape}, not {meta.describe()}")
            if mode == "INPUT" and not problems:
                largest = tuple(engine.get_tensor_profile_shape(name, 0)[2])
                if largest[0] < self.max_batch:
                    problems.append(f"takes batches up to {largest[0]}, the metadata says {self.max_batch}")
            if problems:
                raise PlanError(f"plan {self.plan.name}: tensor {name!r} " + "; ".join(problems)
                                + f": rebuild with `{self.rebuild}`")

    def _check_output_shapes(self) -> None:
        for meta in self.inputs:
            if not self._context.set_input_shape(meta.name, (self.max_batch, *meta.shape[1:])):
                raise PlanError(f"plan {self.plan.name} does not take batch {self.max_batch} for {meta.name!r}: "
                                f"{last_errors(self._logger)}; rebuild with `{self.rebuild}`")
        for meta in self.outputs:
            shape = tuple(self._context.get_tensor_shape(meta.name))
            if shape != (self.max_batch, *meta.shape[1:]):
                raise PlanError(f"plan {self.plan.name}: output {meta.name!r} has shape {shape} at batch "
                                f"{self.max_batch}; the manifest says {meta.describe()}: rebuild with `{self.rebuild}`")

    # -- running --------------------------------------------------------------------------------
    def _bind(self, batch: int, inputs: dict[str, Any]) -> tuple:
        context = self._context
        for meta in self.inputs:
            array = inputs[meta.name]
            if not context.set_input_shape(meta.name, tuple(array.shape)):
                raise EngineError(f"TensorRT refused shape {tuple(array.shape)} for {meta.name!r} of {self.plan.name}: "
                                  f"{last_errors(self._logger)}")
            self._set_address(meta.name, array.data.ptr)
        for meta in self.outputs:
            self._set_address(meta.name, self._buffers[meta.name].data.ptr)
        return tuple(self._bound[m.name] for m in (*self.inputs, *self.outputs))

    def _set_address(self, name: str, pointer: int) -> None:
        if self._bound.get(name) != pointer:
            if not self._context.set_tensor_address(name, pointer):
                raise EngineError(f"TensorRT refused the address of {name!r}: {last_errors(self._logger)}")
            self._bound[name] = pointer

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.ptr):
            raise EngineError(f"TensorRT could not run {self.plan.name}: {last_errors(self._logger)}")

    def _execute(self, batch: int, inputs: dict[str, Any]) -> None:
        """Run on the engine's stream (inputs already in device memory, ordered before it)."""
        addresses = self._bind(batch, inputs)
        if not self.cuda_graphs or batch in self._graphless:
            self._enqueue()
            return
        captured = self._graphs.get(batch)
        if captured is not None and captured[0] == addresses:
            captured[1].launch(stream=self._stream)
            return
        self._enqueue()  # the plain run does TensorRT's lazy setup for this shape and gives this call's outputs
        graph = self._capture(batch)
        if graph is not None:
            self._graphs[batch] = (addresses, graph)

    def _capture(self, batch: int):
        """A CUDA graph of one run at `batch`, or None when the capture failed: then the failure is
        logged once and `batch` runs without a graph from now on (Triton's TensorRT backend does
        the same, src/instance_state.cc). CuPy raises a CUDA error as a RuntimeError subclass and
        clears it (cudaGetLastError) before raising; nothing captured has run."""
        failure = None
        try:
            self._stream.begin_capture()
        except RuntimeError as exc:
            failure = f"the capture did not begin: {exc}"
        else:
            enqueued, graph = False, None
            try:
                enqueued = self._context.execute_async_v3(self._stream.ptr)
            finally:
                try:
                    graph = self._stream.end_capture()
                except RuntimeError as exc:  # e.g. cudaErrorStreamCaptureInvalidated
                    failure = f"the capture was invalidated: {exc}"
            if failure is None and not enqueued:
                failure = f"TensorRT could not enqueue while capturing: {last_errors(self._logger)}"
            if failure is None:
                return graph
        self._graphless[batch] = failure
        print(f"mattrt: warning: {self.plan.name}: no CUDA graph at batch {batch} ({failure}); batch {batch} runs "
              "without a CUDA graph from now on", file=sys.stderr)
        return None

    def _ordered_after_caller(self):
        caller = cupy.cuda.get_current_stream()
        ready = cupy.cuda.Event(disable_timing=True)
        ready.record(caller)
        self._stream.wait_event(ready)
        return caller

    def _run_batch(self, batch: int) -> int:
        """The batch the plan runs for a call of `batch` items (a fixed-batch plan: always its own)."""
        return self.max_batch if self.fixed_batch else batch

    def _own_input(self, name: str, array, batch: int, run_batch: int):
        """The engine's input buffer for `name` holding `array` (CuPy, or NumPy to upload) in its
        first `batch` rows and zeros up to `run_batch`; on the engine's stream."""
        own = self._buffers[name][:run_batch]
        if isinstance(array, np.ndarray):
            own[:batch].set(np.ascontiguousarray(array), stream=self._stream)
        else:
            own[:batch] = array
        if run_batch > batch:
            own[batch:] = 0
        return own

    def _infer_device(self, feeds: dict[str, Any], batch: int) -> dict[str, Any]:
        """CuPy (DLPack) feeds on this device; returns views of the output buffers (valid until
        the next call), ordered before the caller's current stream."""
        caller = self._ordered_after_caller()
        run_batch = self._run_batch(batch)
        inputs = {}
        with self._stream:
            for meta in self.inputs:
                array = feeds[meta.name]
                array = cupy.ascontiguousarray(array if isinstance(array, cupy.ndarray) else cupy.from_dlpack(array))
                # Copied for CUDA graphs (fixed addresses), padding, or an address TensorRT refuses.
                if self.cuda_graphs or run_batch != batch or array.data.ptr % TENSOR_ALIGNMENT:
                    array = self._own_input(meta.name, array, batch, run_batch)
                inputs[meta.name] = array
            self._execute(run_batch, inputs)
        done = cupy.cuda.Event(disable_timing=True)
        done.record(self._stream)
        caller.wait_event(done)
        return {meta.name: self._buffers[meta.name][:batch] for meta in self.outputs}

    def _infer(self, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        self._ordered_after_caller()  # earlier device outputs may still be read on the caller's stream
        run_batch = self._run_batch(batch)
        with self._stream:
            inputs = {meta.name: self._own_input(meta.name, feeds[meta.name], batch, run_batch) for meta in self.inputs}
            self._execute(run_batch, inputs)
        outputs = {meta.name: self._buffers[meta.name][:batch].get(stream=self._stream) for meta in self.outputs}
        self._stream.synchronize()
        return outputs


# -- opening a plans directory ------------------------------------------------------------------
def open_plans(directory: str | Path, device: str = "cuda", precision: str = "fp32",
               cuda_graphs: bool | None = None) -> tuple[ModelSpec, dict[str, Engine]]:
    """TrtEngines for the plans `mattrt build` wrote to `directory` at `precision`.
    cuda_graphs: None takes the build profile's choice."""
    if device != "cuda":
        raise InputError(f"TensorRT plans run on cuda, not {device!r}")
    check_choice(precision, PRECISIONS, "precision")
    directory = Path(directory)
    manifest = Manifest.load(directory)
    metadata = read_metadata(directory, precision)
    if metadata is None:
        missing = metadata_path(directory, precision).name
        raise InputError(f"{directory} holds no {precision} plans ({missing} is missing): build them with "
                         f"`mattrt build EXPORT_DIR --out {directory} --precision {precision}`")
    rebuild = rebuild_command(metadata, directory)
    require_all(RUN_PROBES, "the tensorrt backend")
    name, version = runtime_identity()
    for note in check_runnable(metadata, version, name, gpu_identity(), rebuild):
        print(f"mattrt: note: {note}", file=sys.stderr)
    graphs = metadata["profile"]["cuda_graphs"] if cuda_graphs is None else bool(cuda_graphs)
    engines: dict[str, Engine] = {}
    for entry in manifest.stages:
        record = metadata["stages"].get(entry.name)
        if record is None:
            raise PlanError(f"{directory} has no {precision} plan for stage {entry.name!r}: rebuild with `{rebuild}`")
        dla = record.get("dla")
        engines[entry.name] = TrtEngine(
            directory / record["plan"], name=entry.name, precision=precision,
            inputs=tuple(t.meta() for t in entry.inputs), outputs=tuple(t.meta() for t in entry.outputs),
            max_batch=int(record["max_batch"]), plan_sha256=record.get("plan_sha256"),
            version_compatible=bool(metadata["options"].get("version_compatible")), cuda_graphs=graphs, rebuild=rebuild,
            preferred_batch=record.get("opt_batch"), fixed_batch=record["min_batch"] == record["max_batch"],
            dla_core=dla["core"] if dla else None,
        )
    return ModelSpec.from_manifest(manifest, source=str(directory)), engines


def identity(device: str) -> dict[str, Any]:
    """What makes prepared plans valid only here: TensorRT version, GPU name and compute capability."""
    require_all(RUN_PROBES, "the tensorrt backend")
    name, version = runtime_identity()
    gpu = gpu_identity()
    return {"tensorrt": version, "tensorrt_module": name, "gpu": gpu.name,
            "compute_capability": "%d.%d" % gpu.compute_capability}


BACKEND = Backend(
    name="tensorrt",
    summary="TensorRT plans built from an export's graphs (precision from the graph: FP32, FP16, INT8 Q/DQ)",
    probes=("tensorrt_runtime",),
    devices=("cuda",),
    device_probes={"cuda": ("cupy_device",)},
    precisions=PRECISIONS,
    artifacts="plans",
    opener=lambda directory, **options: open_plans(directory, **options),
    options=("cuda_graphs",),
    device_arrays=True,
    prepare=tensorrt_build.prepare,
    identity=identity,
)


__all__ = ["BACKEND", "PlanError", "RUNTIME_API", "TrtEngine", "check_runnable", "create_runtime", "open_plans",
           "version_refusal"]
