"""The classes behind the generated model.py shims: they run inside Triton's Python backend stub.

StageModel     one stage graph on the CPU, on onnxruntime or openvino (`mattrt triton-repo
               --backend`, in the model's config parameters). Triton's dynamic batcher hands it
               several requests at once: their tiles are concatenated into one engine call
               (chunked at the max batch) and split back per request.
PipelineModel  the BLS model: one image per request (raw UINT8 H x W x 3 or encoded bytes), the
               same runtime `Pipeline` as in-process inference, its engines `BlsEngine`s that
               call the stage models through BLS. Errors are per request (INVALID_ARG for what
               the client can fix): the next request is served as usual.

From the moment `mattrt serve` is told to stop, the pipeline model answers requests that have not
started with UNAVAILABLE "server is stopping" (serving/server.py); the stage models keep serving
the requests in flight.

Request parameters of the pipeline model (all optional):
  output     "alpha" (H x W x 1, default) or "rgba" (H x W x 4: blur-fusion foreground + alpha)
  overlap    tile overlap in pixels, 0 .. tile_size - stride multiple
  tile_size  must equal the exported tile size (the stage graphs have fixed shapes)
  refine     an alpha network only (an imported model such as ISNet, which runs no tiles and takes
             no overlap, tile_size or batch): "none" or a refinement method (runtime/refine.py);
             default: the model card's
  batch      tiles per detail call, 1 .. the repository's max batch
The MATTE output is the raw UINT8 matte; requesting MATTE_PNG returns the same matte as a PNG.

Numpy 2 inside the stub (the 2.51 stub's pybind11 predates numpy 2): `pb_utils.Tensor(name,
array)` yields empty tensors and `Tensor.as_numpy()` returns arrays with the right shape but the
wrong contents (checked against a 2.51 server with numpy 2.4). DLPack works both ways, so every
tensor goes out through `pb_utils.Tensor.from_dlpack` and comes in through `np.from_dlpack`. Each
`Tensor.from_dlpack` then reports "PyCapsule_GetPointer called with incorrect name" from a
capsule destructor (the stub renames the capsule it consumed); the data is right, so that one
message is dropped from the unraisable-exception hook (anything else still reaches the log).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from mattrt.engines.onnxruntime.engine import OnnxRuntimeEngine, SessionLoader
from mattrt.engines.openvino.engine import CompiledModelLoader, OpenVinoEngine
from mattrt.engines.triton.client import SERVER_STOPPING, STUB_UNHEALTHY
from mattrt.errors import InputError, MattrtError
from mattrt.imageio import decode_image, quantise
from mattrt.imagewrite import PNG_COMPRESS_LEVEL
from mattrt.lazy import lazy_import
from mattrt.manifest import MANIFEST_FILE, GraphEntry, Manifest
from mattrt.runtime.artifacts import ModelSpec, check_engines
from mattrt.runtime.engine import Engine, EngineError, run_in_chunks
from mattrt.runtime.foreground import estimate_foreground
from mattrt.runtime.pipeline import Pipeline
from mattrt.runtime.refine import REFINE_METHODS
from mattrt.serving.repository import (
    BUSY_PREFIX,
    ENCODED_INPUT,
    IMAGE_INPUT,
    MATTE_OUTPUT,
    PNG_OUTPUT,
    STATE_ENV,
    STOPPING_FILE,
    check_record,
    load_record,
)

# Only importable inside Triton's Python backend stub.
pb_utils = lazy_import("triton_python_backend_utils")

OUTPUT_KINDS = ("alpha", "rgba")
PARAMETERS = ("output", "overlap", "tile_size", "batch", "refine")
TILING_PARAMETERS = ("overlap", "tile_size", "batch")


CONSUMED_CAPSULE_MESSAGE = "PyCapsule_GetPointer called with incorrect name"


def _drop_consumed_capsule_reports() -> None:
    """Drop the one unraisable ValueError every from_dlpack causes in the stub (module docstring)."""
    previous = sys.unraisablehook
    if getattr(previous, "mattrt_filter", False):
        return

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, ValueError) and CONSUMED_CAPSULE_MESSAGE in str(unraisable.exc_value):
            return
        previous(unraisable)

    hook.mattrt_filter = True
    sys.unraisablehook = hook


def _config_parameters(config: dict) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _model_dir(args: dict) -> tuple[Path, Path]:
    """(model directory, version directory) from the arguments Triton passes to initialize."""
    model_dir = Path(args["model_repository"])
    return model_dir, model_dir / str(args["model_version"])


def _error(message: str, code: str = "INTERNAL") -> Any:
    """An error response; code names a TritonError code (INVALID_ARG: the client can fix the request;
    UNAVAILABLE: try again elsewhere or later)."""
    value = getattr(pb_utils.TritonError, code, None)
    error = pb_utils.TritonError(message) if value is None else pb_utils.TritonError(message, value)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class StopWatch:
    """This instance's side of `mattrt serve`'s stopping (serving/server.py): a busy file while
    requests run, and whether the stop marker is there. Outside `mattrt serve`: never stopping."""

    def __init__(self):
        folder = os.environ.get(STATE_ENV)
        self.marker = Path(folder) / STOPPING_FILE if folder else None
        self.busy = Path(folder) / f"{BUSY_PREFIX}{os.getpid()}" if folder else None

    @contextlib.contextmanager
    def running(self) -> Iterator[bool]:
        """Marks this instance busy, then yields whether requests may start (False: stopping).
        Busy first, marker second: the server sets the marker first and waits for busy files second,
        so a request either sees the marker or is waited for."""
        if self.busy is None:
            yield True
            return
        self.busy.touch()
        try:
            yield not self.marker.exists()
        finally:
            self.busy.unlink(missing_ok=True)


def _tensor(name: str, array: np.ndarray) -> Any:
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # DLPack 0.x (the stub's) cannot mark a tensor read-only
        array = array.copy()
    return pb_utils.Tensor.from_dlpack(name, array)


def _array(tensor: Any) -> np.ndarray:
    """A read-only NumPy view of a Triton tensor (module docstring: not as_numpy)."""
    return np.from_dlpack(tensor)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class StageModel:
    """Triton Python model: one stage graph on onnxruntime or openvino (module docstring)."""

    def initialize(self, args: dict) -> None:
        _drop_consumed_capsule_reports()
        config = json.loads(args["model_config"])
        params = _config_parameters(config)
        model_dir, version_dir = _model_dir(args)
        record = load_record(model_dir)
        check_record(record, f"Triton model {config['name']}")
        info = record["models"][config["name"]]
        instances = max(1, int(params.get("instances", "1")))
        # K instances of each stage share the cores: no oversubscription inside one stage.
        self.threads = max(1, available_cores() // instances)
        name, max_batch, path = params.get("stage", config["name"]), int(config["max_batch_size"]), version_dir / info["file"]
        if params.get("backend", "onnxruntime") == "openvino":
            loader = CompiledModelLoader(path, precision=params.get("precision", "fp32"), threads=self.threads)
            self.engine = OpenVinoEngine(loader, name=name, max_batch=max_batch, max_compiled=max_batch)
        else:
            self.engine = OnnxRuntimeEngine(SessionLoader(path, device="cpu", threads=self.threads), name=name,
                                            max_batch=max_batch)
        self.engine.activate()

    def execute(self, requests: list) -> list:
        names = self.engine.input_names
        try:
            per_request = [{n: _array(pb_utils.get_input_tensor_by_name(r, n)) for n in names} for r in requests]
            counts = [feeds[names[0]].shape[0] for feeds in per_request]
            feeds = {n: per_request[0][n] if len(requests) == 1 else np.concatenate([f[n] for f in per_request])
                     for n in names}
            outputs = run_in_chunks(self.engine, feeds)
        except MattrtError as exc:
            return [_error(str(exc), "INVALID_ARG" if isinstance(exc, InputError) else "INTERNAL") for _ in requests]
        responses = []
        start = 0
        for count in counts:
            tensors = [_tensor(n, outputs[n][start : start + count]) for n in self.engine.output_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses

    def finalize(self) -> None:
        self.engine.deactivate()


class BlsEngine(Engine):
    """An Engine whose run() is a BLS call to a stage model of the same Triton server."""

    backend = "triton-bls"

    def __init__(self, model_name: str, entry: GraphEntry, max_batch: int):
        super().__init__(entry.name, "cpu", "fp32")
        self.model_name = model_name
        self.inputs = tuple(t.meta() for t in entry.inputs)
        self.outputs = tuple(t.meta() for t in entry.outputs)
        self.max_batch = max_batch

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def _infer(self, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=self.model_name,
            requested_output_names=self.output_names,
            inputs=[_tensor(n, feeds[n]) for n in self.input_names],
        )
        response = request.exec()
        if response.has_error():
            raise EngineError(f"stage model {self.model_name}: {response.error().message()}")
        # Copies: the response's shared memory is released with the response.
        return {n: np.array(_array(pb_utils.get_output_tensor_by_name(response, n))) for n in self.output_names}


_ASCII_INTEGER = re.compile(r"\s*([+-]?)0*([0-9]{1,18})\s*", re.ASCII)


def _int_parameter(params: dict, key: str, low: int, high: int) -> int | None:
    """An integer request parameter: a JSON/gRPC integer, or a string of ASCII digits with an
    optional sign (gRPC clients often send strings). Anything else (superscripts, other scripts'
    digits, "--5", floats, booleans) is the client's error, never a silent conversion."""
    if key not in params:
        return None
    value = params[key]
    if isinstance(value, str):
        digits = _ASCII_INTEGER.fullmatch(value)
        if digits is None and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value, re.ASCII):
            raise InputError(f"parameter {key} must lie in [{low}, {high}], got {value.strip()[:24]}...")
        value = int(digits.group(1) + digits.group(2)) if digits else value
    if not isinstance(value, int) or isinstance(value, bool):
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "..."
        raise InputError(f"parameter {key} must be an integer in [{low}, {high}] (ASCII digits), got {shown!r}")
    if not low <= value <= high:
        raise InputError(f"parameter {key} must lie in [{low}, {high}], got {value}")
    return value


class PipelineModel:
    """Triton Python model: the mattrt pipeline over BLS stage calls (module docstring)."""

    def initialize(self, args: dict) -> None:
        _drop_consumed_capsule_reports()
        config = json.loads(args["model_config"])
        params = _config_parameters(config)
        model_dir, version_dir = _model_dir(args)
        record = load_record(model_dir)
        check_record(record, f"Triton model {config['name']}")
        manifest = Manifest.load(version_dir / MANIFEST_FILE)
        self.spec = ModelSpec.from_manifest(manifest, source=f"triton:{config['name']}")
        stage_models = json.loads(params["stage_models"])
        self.max_batch = int(record["max_batch"])
        self.engines = {e.name: BlsEngine(stage_models[e.name], e, self.max_batch) for e in manifest.stages}
        check_engines(self.spec, self.engines)
        for engine in self.engines.values():
            engine.activate()
        self.max_pixels = int(params["max_pixels"])
        self.min_side = int(params["min_side"])
        self.alpha_network = self.spec.semantic_output == "alpha"
        if not self.alpha_network:
            self.tile_size = self.engines["detail"].spatial_size
            self.max_overlap = self.tile_size - self.spec.stride_multiple
            self.default_batch = min(4, self.max_batch)
        self.stop_watch = StopWatch()

    def execute(self, requests: list) -> list:
        with self.stop_watch.running() as may_start:
            if not may_start:  # requests that had not started when the stop signal came
                message = (f"{SERVER_STOPPING}: mattrt serve received a stop signal and starts no new requests; "
                           "send the image again later or to another server")
                return [_error(message, "UNAVAILABLE") for _ in requests]
            responses = []
            for request in requests:
                try:
                    responses.append(self._respond(request))
                except InputError as exc:
                    responses.append(_error(str(exc), "INVALID_ARG"))
                except Exception as exc:  # one failed image never takes the model down
                    # a stage's dead stub: not this request's fault, worth another try (mattrt serve restarts it)
                    code = "UNAVAILABLE" if STUB_UNHEALTHY in str(exc) else "INTERNAL"
                    responses.append(_error(f"{type(exc).__name__}: {exc}", code))
            return responses

    def _parameters(self, request) -> dict:
        text = request.parameters()
        params = json.loads(text) if text else {}
        unknown = sorted(k for k in params if k not in PARAMETERS and not k.startswith(("triton_", "binary_data")))
        if unknown:
            raise InputError(f"unknown parameter(s) {', '.join(unknown)}; this model takes {', '.join(PARAMETERS)}")
        output = params.get("output", "alpha")
        if output not in OUTPUT_KINDS:
            raise InputError(f"parameter output must be one of {', '.join(OUTPUT_KINDS)}, got {output!r}")
        if self.alpha_network:
            tiling = sorted(k for k in params if k in TILING_PARAMETERS)
            if tiling:
                raise InputError(f"model {self.spec.name} runs no tiles (one network whose output is alpha): drop "
                                 f"{', '.join(tiling)}")
            refine = params.get("refine")
            if refine is not None and refine not in REFINE_METHODS:
                raise InputError(f"parameter refine must be one of {', '.join(REFINE_METHODS)}, got {refine!r}")
            return {"output": output, "refine": refine}
        if "refine" in params:
            raise InputError(f"model {self.spec.name} refines with its detail network: drop refine")
        # Validated only: the stage graphs have fixed shapes, so the exported size is the one valid value.
        _int_parameter(params, "tile_size", self.tile_size, self.tile_size)
        return {
            "output": output,
            "overlap": _int_parameter(params, "overlap", 0, self.max_overlap),
            "batch": _int_parameter(params, "batch", 1, self.max_batch) or self.default_batch,
        }

    def _image(self, request) -> np.ndarray:
        raw = pb_utils.get_input_tensor_by_name(request, IMAGE_INPUT)
        encoded = pb_utils.get_input_tensor_by_name(request, ENCODED_INPUT)
        if (raw is None) == (encoded is None):
            raise InputError(f"send exactly one of {IMAGE_INPUT} (UINT8 H x W x 3) or {ENCODED_INPUT} "
                             "(the bytes of a PNG, JPEG or WebP file)")
        if raw is not None:
            rgb = _array(raw)
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise InputError(f"{IMAGE_INPUT} must be UINT8 H x W x 3, got {rgb.dtype} {rgb.shape}")
            height, width = rgb.shape[:2]
            if height * width > self.max_pixels:
                raise InputError(f"image {width}x{height} = {height * width / 1e6:.1f} megapixels exceeds this "
                                 f"model's limit of {self.max_pixels / 1e6:.1f} megapixels (mattrt triton-repo --max-pixels)")
        else:
            data = _array(encoded)
            if data.size == 0:
                raise InputError(f"{ENCODED_INPUT} is empty")
            rgb = decode_image(data.tobytes(), name=ENCODED_INPUT, max_pixels=self.max_pixels).rgb
        height, width = rgb.shape[:2]
        if min(height, width) < self.min_side:
            raise InputError(f"image {width}x{height} is too small: each side needs at least {self.min_side} pixels")
        return rgb

    def _respond(self, request):
        params = self._parameters(request)
        rgb = self._image(request)
        options = {k: v for k, v in params.items() if k != "output"}
        pipeline = Pipeline(self.spec, self.engines, max_pixels=self.max_pixels, pixel_ops="host", **options)
        alpha = pipeline.run(rgb).alpha
        matte = quantise(alpha, 8, "alpha")[..., None]
        if params["output"] == "rgba":
            foreground = estimate_foreground(rgb, alpha, out_dtype=np.uint8)
            matte = np.concatenate([foreground, matte], axis=2)
        requested = set(request.requested_output_names())
        tensors = []
        if PNG_OUTPUT in requested:
            buffer = io.BytesIO()
            pixels = matte[..., 0] if matte.shape[2] == 1 else matte  # Pillow: L or RGBA
            Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            tensors.append(_tensor(PNG_OUTPUT, np.frombuffer(buffer.getvalue(), dtype=np.uint8)))
        if MATTE_OUTPUT in requested or not requested:
            tensors.append(_tensor(MATTE_OUTPUT, matte))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        for engine in self.engines.values():
            engine.deactivate()


__all__ = ["BlsEngine", "OUTPUT_KINDS", "PARAMETERS", "PipelineModel", "StageModel", "StopWatch", "available_cores"]
