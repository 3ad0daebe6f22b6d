"""The `triton` backend: whole images to a Triton server whose pipeline model runs the matting.

    with TritonMattingClient("127.0.0.1:8000", protocol="http", transfer="encoded") as client:
        mattes = client.matte_many(images, concurrency=4)      # H x W x 1 uint8 each, in order

The server side is a repository from `mattrt triton-repo` (serving/repository.py): its pipeline
model takes one image of any size, raw (UINT8 H x W x 3) or encoded (the bytes of a PNG, JPEG or
WebP file), and returns the matte raw (UINT8 H x W x C, C = 1 alpha or 4 RGBA) or as a PNG.

Transfer: "raw" sends pixels and receives the raw matte; "encoded" sends file bytes (a given
file's bytes as they are; an array as a lossless PNG) and receives a PNG. Shared memory
("system") puts the request's input, and the raw matte, in POSIX shared memory regions
registered with the server (same machine only; the shared-memory API needs the server's key).
16-bit images travel as 16-bit PNGs (the raw input is 8-bit) so nothing is reduced.

Failures: a request the server rejects (bad image, out-of-range parameter) raises InputError
with the server's message at once; a server that cannot be reached, goes away, answers
"server is stopping" (a mattrt server draining after a stop signal), "... has no available
versions" (its models being unloaded) or "Stub process ... is not healthy" (a model instance
died; `mattrt serve` restarts the server) is retried `retries` times
with a growing wait, then ServerUnavailableError names the image. Model discovery and metadata
calls follow the same policy. Nothing is
dropped: `matte_many` returns one matte per image, in order, or raises.

`BACKEND` is the registry entry (engines/backends.py): a server runs the whole pipeline, so its
`pipeline_opener` returns a `RemotePipeline` (run(rgb) -> MattingResult) instead of stage engines.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from mattrt.errors import InputError, MattrtError
from mattrt.imageio import decode_image
from mattrt.imagewrite import PNG_COMPRESS_LEVEL, encode_png16
from mattrt.lazy import lazy_import
from mattrt.manifest import Manifest
from mattrt.runtime.artifacts import MattingResult, ModelSpec
from mattrt.runtime.engine import DEVICES, Backend, check_choice

tritonhttp = lazy_import("tritonclient.http", probe="tritonclient")
tritongrpc = lazy_import("tritonclient.grpc", probe="tritonclient")
tritonutils = lazy_import("tritonclient.utils", probe="tritonclient")
triton_shm = lazy_import("tritonclient.utils.shared_memory", probe="tritonclient")

PROTOCOLS = ("http", "grpc")
TRANSFERS = ("raw", "encoded")
SHM_MODES = ("none", "system")
OUTPUTS = ("alpha", "rgba")
KEY_HEADER = "mattrt-key"  # the header serving/server.py restricts APIs with
GRPC_KEY_PREFIX = "triton-grpc-protocol-"  # Triton expects restricted-protocol gRPC headers with this prefix
# The pipeline model's tensors and role (serving/repository.py writes repositories with these).
IMAGE_INPUT = "IMAGE"
ENCODED_INPUT = "IMAGE_ENCODED"
MATTE_OUTPUT = "MATTE"
PNG_OUTPUT = "MATTE_PNG"
PIPELINE_ROLE = "pipeline"
# What a stopping mattrt server answers requests that had not started (UNAVAILABLE): retried.
SERVER_STOPPING = "server is stopping"
# What Triton answers a request routed to a dead or hung Python stub process ("Stub process '<instance>'
# is not healthy."): retried, as another instance, or the server `mattrt serve` restarts, can serve it.
STUB_UNHEALTHY = "is not healthy"
# What Triton answers while a stopping server unloads its models: retried like an absent server.
MODEL_UNLOADED = "has no available versions"
# Statuses that mean "the server is not there (yet/any more)": worth another attempt.
_RETRYABLE = {"502", "503", "504", "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"}
_RETRYABLE_TEXT = (SERVER_STOPPING, STUB_UNHEALTHY, MODEL_UNLOADED)
_INVALID = {"400", "StatusCode.INVALID_ARGUMENT"}
_REGION_IDS = itertools.count()


class ServerUnavailableError(MattrtError):
    """The Triton server could not be reached (after the retries)."""


class TritonRequestError(MattrtError):
    """The server answered a request with an error that is not the client's input."""


def key_headers(protocol: str, key: str | None) -> dict[str, str]:
    """The request headers that unlock a mattrt server's restricted APIs."""
    if not key:
        return {}
    return {(GRPC_KEY_PREFIX + KEY_HEADER) if protocol == "grpc" else KEY_HEADER: key}


def _image_label(index: int | None, image: Any) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    return "the image" if index is None else f"image #{index}"


class TritonMattingClient:
    """Mattes through a Triton pipeline model (module docstring). Thread-safe: each thread gets
    its own connection and shared-memory regions."""

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        protocol: str = "http",
        transfer: str = "raw",
        shm: str = "none",
        concurrency: int = 1,
        output: str = "alpha",
        overlap: int | None = None,
        batch: int | None = None,
        retries: int = 3,
        retry_wait: float = 0.5,
        timeout: float = 300.0,
        api_key: str | None = None,
    ):
        self.url = url
        self.protocol = check_choice(protocol, PROTOCOLS, "protocol")
        self.transfer = check_choice(transfer, TRANSFERS, "transfer")
        self.shm = check_choice(shm, SHM_MODES, "shared memory mode")
        self.output = check_choice(output, OUTPUTS, "output")
        for name, value, low in (("concurrency", concurrency, 1), ("retries", retries, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InputError(f"{name} must be an integer of at least {low}, got {value!r}")
        if not timeout > 0 or retry_wait < 0:
            raise InputError("timeout must be positive and retry_wait zero or more")
        self.concurrency = concurrency
        self.retries = retries
        self.retry_wait = float(retry_wait)
        self.timeout = float(timeout)
        self.parameters = {k: v for k, v in (("overlap", overlap), ("batch", batch)) if v is not None}
        self.headers = key_headers(self.protocol, api_key)
        if self.shm == "system" and not api_key:
            raise InputError("system shared memory needs the server's API key (the shared-memory API is restricted): "
                             "pass api_key (mattrt serve's key file or $MATTRT_TRITON_KEY)")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._regions: list[tuple[Any, Any, str]] = []  # (client, handle, name) for cleanup
        self._clients: list[Any] = []
        self.model = model or self._discover_model()

    # -- connections ------------------------------------------------------------------------------
    def _module(self):
        return tritonhttp if self.protocol == "http" else tritongrpc

    def _connection(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = tritonhttp.InferenceServerClient(self.url, connection_timeout=min(10.0, self.timeout),
                                                          network_timeout=self.timeout)
            else:
                client = tritongrpc.InferenceServerClient(self.url)
            self._local.client = client
            self._local.regions = {}
            with self._lock:
                self._clients.append(client)
        return client

    def _reset_connection(self) -> None:
        """After a transport failure: a new connection, shared memory registered again."""
        client = getattr(self._local, "client", None)
        if client is not None:
            for handle, name, _size in getattr(self._local, "regions", {}).values():
                self._destroy_region(client, handle, name)
            self._local.regions = {}
            try:
                client.close()
            except Exception:
                pass
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
        self._local.client = None

    def _call(self, what: str, function, *args, **kwargs):
        """function(*args) with the retry policy (module docstring)."""
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_wait * (2 ** (attempt - 1)))
            try:
                return function(*args, **kwargs)
            except Exception as exc:
                if not self._retryable(exc):
                    raise self._final_error(what, exc) from None
                last = exc
                self._reset_connection()
        raise ServerUnavailableError(
            f"Triton at {self.url} ({self.protocol}) did not answer for {what} after {self.retries + 1} attempts "
            f"(last error: {type(last).__name__}: {last}); {what} was not processed"
        )

    @staticmethod
    def _retryable(exc: Exception) -> bool:
        if isinstance(exc, tritonutils.InferenceServerException):
            status = exc.status()
            if "restricted" in str(exc.message()):  # Triton answers a missing key with UNAVAILABLE
                return False
            if status in _RETRYABLE or any(text in str(exc.message()) for text in _RETRYABLE_TEXT):
                return True
            message = str(exc.message()).lower()
            return status is None and any(w in message for w in ("connect", "reset", "broken pipe", "refused"))
        return isinstance(exc, (OSError, TimeoutError, EOFError)) or type(exc).__module__.startswith(("gevent", "geventhttpclient"))

    def _final_error(self, what: str, exc: Exception) -> MattrtError:
        if isinstance(exc, MattrtError):
            return exc
        if isinstance(exc, tritonutils.InferenceServerException):
            message = exc.message()
            if exc.status() in _INVALID:
                return InputError(f"{what}: the server refused the request: {message}")
            if "restricted" in str(message):
                return InputError(f"{what}: {message}: pass the server's API key (api_key)")
            return TritonRequestError(f"{what}: Triton answered {exc.status()}: {message}")
        return TritonRequestError(f"{what}: {type(exc).__name__}: {exc}")

    # -- model metadata ---------------------------------------------------------------------------
    def _call_connection(self, what: str, method: str, *args, **kwargs):
        """`method` of this thread's connection with the retry policy. The connection is looked up
        per attempt: a retry must not call into the one `_reset_connection` has just closed."""
        return self._call(what, lambda: getattr(self._connection(), method)(*args, **kwargs))

    def _config(self, model: str) -> dict:
        if self.protocol == "http":
            return self._call_connection(f"the config of {model}", "get_model_config", model, headers=self.headers)
        answer = self._call_connection(f"the config of {model}", "get_model_config", model, headers=self.headers,
                                       as_json=True)
        return answer["config"]

    @staticmethod
    def _parameter(config: dict, key: str) -> str | None:
        value = config.get("parameters", {}).get(key)
        return None if value is None else value.get("string_value")

    def _discover_model(self) -> str:
        """The one mattrt pipeline model the server serves (from its statistics, unrestricted)."""
        kwargs = {"headers": self.headers} | ({} if self.protocol == "http" else {"as_json": True})
        stats = self._call_connection("the list of models", "get_inference_statistics", **kwargs)
        names = sorted({m["name"] for m in stats.get("model_stats", [])})
        pipelines = [n for n in names if self._parameter(self._config(n), "mattrt_role") == PIPELINE_ROLE]
        if len(pipelines) != 1:
            raise InputError(
                f"Triton at {self.url} serves {len(pipelines)} mattrt pipeline models ({', '.join(pipelines) or 'none'}; "
                f"all models: {', '.join(names) or 'none'}); name one with model=..."
            )
        return pipelines[0]

    def model_spec(self) -> ModelSpec:
        """What the pipeline model runs, from the manifest in its config."""
        config = self._config(self.model)
        if self._parameter(config, "mattrt_role") != PIPELINE_ROLE:
            raise InputError(f"Triton model {self.model!r} at {self.url} is not a mattrt pipeline model "
                             "(a repository from `mattrt triton-repo` has one per exported model)")
        text = self._parameter(config, "manifest")
        if not text:
            raise InputError(f"Triton model {self.model!r} carries no manifest; regenerate it with `mattrt triton-repo`")
        return ModelSpec.from_manifest(Manifest.from_json(text), source=f"triton:{self.url}/{self.model}")

    # -- shared memory ----------------------------------------------------------------------------
    def _region(self, client, role: str, size: int) -> str:
        regions = self._local.regions
        held = regions.get(role)
        if held is not None and held[2] >= size:
            return held[1]
        if held is not None:
            self._destroy_region(client, held[0], held[1])
        name = f"mattrt_{os.getpid()}_{next(_REGION_IDS)}_{role}"
        handle = triton_shm.create_shared_memory_region(name, "/" + name, size)
        try:
            client.register_system_shared_memory(name, "/" + name, size, headers=self.headers)
        except Exception:
            triton_shm.destroy_shared_memory_region(handle)
            raise
        regions[role] = (handle, name, size)
        with self._lock:
            self._regions.append((client, handle, name))
        return name

    def _destroy_region(self, client, handle, name: str) -> None:
        try:
            client.unregister_system_shared_memory(name, headers=self.headers)
        except Exception:
            pass  # the server may be gone; the local region still goes
        try:
            triton_shm.destroy_shared_memory_region(handle)
        except Exception:
            pass
        with self._lock:
            self._regions = [r for r in self._regions if r[2] != name]

    # -- requests ---------------------------------------------------------------------------------
    def _payload(self, image: Any, label: str) -> tuple[str, np.ndarray]:
        """(input name, UINT8 array) for one image under this client's transfer mode."""
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise InputError(f"{path}: no such file")
            data = path.read_bytes()
            if self.transfer == "encoded":
                return ENCODED_INPUT, np.frombuffer(data, dtype=np.uint8)
            image = decode_image(data, name=str(path)).rgb
        if isinstance(image, (bytes, bytearray, memoryview)):
            if self.transfer == "raw":
                raise InputError(f"{label}: encoded bytes need transfer='encoded' (or decode them and send pixels)")
            return ENCODED_INPUT, np.frombuffer(bytes(image), dtype=np.uint8)
        if not isinstance(image, np.ndarray):
            raise InputError(f"{label}: expected an H x W x 3 array, encoded bytes or a path, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.uint16):
            raise InputError(f"{label}: expected H x W x 3 uint8 or uint16 pixels, got {image.dtype} {image.shape}")
        if image.dtype == np.uint16:
            return ENCODED_INPUT, np.frombuffer(encode_png16(image), dtype=np.uint8)
        if self.transfer == "encoded":
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            return ENCODED_INPUT, np.frombuffer(buffer.getvalue(), dtype=np.uint8)
        return IMAGE_INPUT, np.ascontiguousarray(image)

    def _infer_once(self, name: str, payload: np.ndarray, output: str, shape: tuple[int, int] | None) -> np.ndarray:
        client = self._connection()
        module = self._module()
        infer_input = module.InferInput(name, list(payload.shape), "UINT8")
        use_shm = self.shm == "system"
        if use_shm:
            region = self._region(client, "in", payload.nbytes)
            triton_shm.set_shared_memory_region(self._local.regions["in"][0], [payload])
            infer_input.set_shared_memory(region, payload.nbytes)
        elif self.protocol == "http":
            infer_input.set_data_from_numpy(payload, binary_data=True)
        else:
            infer_input.set_data_from_numpy(payload)
        encoded_out = self.transfer == "encoded"
        out_name = PNG_OUTPUT if encoded_out else MATTE_OUTPUT
        requested = module.InferRequestedOutput(out_name, binary_data=True) if self.protocol == "http" \
            else module.InferRequestedOutput(out_name)
        channels = 1 if output == "alpha" else 4
        out_shm = use_shm and not encoded_out and shape is not None
        if out_shm:
            size = shape[0] * shape[1] * channels
            requested.set_shared_memory(self._region(client, "out", size), size)
        parameters = {"output": output, **self.parameters}
        if self.protocol == "http":
            result = client.infer(self.model, [infer_input], outputs=[requested], parameters=parameters,
                                  headers=self.headers, timeout=int(self.timeout * 1e6))
        else:
            result = client.infer(self.model, [infer_input], outputs=[requested], parameters=parameters,
                                  headers=self.headers, client_timeout=self.timeout)
        if out_shm:
            matte = triton_shm.get_contents_as_numpy(self._local.regions["out"][0], np.uint8,
                                                     (shape[0], shape[1], channels))
            return np.array(matte)
        array = result.as_numpy(out_name)
        if array is None:
            raise TritonRequestError(f"the server's response carries no {out_name}")
        if encoded_out:
            with Image.open(io.BytesIO(array.tobytes()), formats=["PNG"]) as decoded:
                matte = np.asarray(decoded)
            return matte[..., None] if matte.ndim == 2 else matte
        return np.array(array)

    def matte(self, image: Any, *, output: str | None = None, index: int | None = None) -> np.ndarray:
        """The matte of one image (array, encoded bytes or a path): H x W x 1 (alpha) or x 4 (RGBA) uint8."""
        label = _image_label(index, image)
        output = check_choice(output or self.output, OUTPUTS, "output")
        name, payload = self._payload(image, label)
        shape = tuple(image.shape[:2]) if isinstance(image, np.ndarray) and name == IMAGE_INPUT else None
        return self._call(label, self._infer_once, name, payload, output, shape)

    def matte_many(self, images: Iterable[Any], *, output: str | None = None, concurrency: int | None = None) -> list[np.ndarray]:
        """One matte per image, in order, with at most `concurrency` requests in flight."""
        items = list(images)
        workers = concurrency or self.concurrency
        if not isinstance(workers, int) or workers < 1:
            raise InputError(f"concurrency must be a positive integer, got {workers!r}")
        if workers == 1 or len(items) <= 1:
            return [self.matte(image, output=output, index=i) for i, image in enumerate(items)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mattrt-triton") as pool:
            futures = [pool.submit(self.matte, image, output=output, index=i) for i, image in enumerate(items)]
            return [future.result() for future in futures]

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            regions, self._regions = list(self._regions), []
            clients, self._clients = list(self._clients), []
        for client, handle, name in regions:
            try:
                client.unregister_system_shared_memory(name, headers=self.headers)
            except Exception:
                pass
            try:
                triton_shm.destroy_shared_memory_region(handle)
            except Exception:
                pass
        for client in clients:
            try:
                client.close()
            except Exception:
                pass
        self._local = threading.local()

    def __enter__(self) -> "TritonMattingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RemotePipeline:
    """`Pipeline`-like front of a Triton pipeline model: run(rgb) -> MattingResult.

    The alpha comes back as 8-bit levels (float32 in [0, 1] here); the trimap stays in the
    server (an empty 3 x 0 x 0 array), and the plan says where the work ran."""

    def __init__(self, client: TritonMattingClient):
        self.client = client
        self.spec = client.model_spec()

    def run(self, image: np.ndarray, *, progress=None, **options) -> MattingResult:
        if options:
            raise InputError(f"the triton backend takes no run option(s) {', '.join(sorted(options))}")
        started = time.perf_counter()
        matte = self.client.matte(image, output="alpha")
        alpha = matte[..., 0].astype(np.float32) / np.float32(255)
        seconds = time.perf_counter() - started
        if progress is not None:
            progress(1, 1)
        return MattingResult(
            alpha=alpha,
            trimap=np.zeros((3, 0, 0), dtype=np.float32),
            timings={"remote": seconds},
            plan={"tiles": None, "remote": f"{self.client.protocol}://{self.client.url}/{self.client.model}"},
        )

    def run_many(self, images: Sequence[np.ndarray]) -> list:
        """MattingResults of many images, `concurrency` requests in flight, in order."""
        started = time.perf_counter()
        mattes = self.client.matte_many(images, output="alpha")
        seconds = (time.perf_counter() - started) / max(1, len(mattes))
        return [
            MattingResult(
                alpha=matte[..., 0].astype(np.float32) / np.float32(255),
                trimap=np.zeros((3, 0, 0), dtype=np.float32),
                timings={"remote_mean": seconds},
                plan={"tiles": None, "remote": f"{self.client.protocol}://{self.client.url}/{self.client.model}"},
            )
            for matte in mattes
        ]

    def describe(self) -> dict:
        return {
            "model": self.spec.name,
            "source": self.spec.source,
            "backend": "triton",
            "url": self.client.url,
            "triton_model": self.client.model,
            "protocol": self.client.protocol,
            "transfer": self.client.transfer,
            "shm": self.client.shm,
            "concurrency": self.client.concurrency,
            "fusion": self.spec.fusion,
            "trained": self.spec.trained,
        }

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "RemotePipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_remote_pipeline(url: str, *, device: str = "cpu", precision: str = "fp32", protocol: str = "http",
                         shm: str = "none", concurrency: int = 1, transfer: str = "raw", model: str | None = None,
                         api_key: str | None = None, retries: int = 3, timeout: float = 300.0,
                         overlap: int | None = None, batch: int | None = None) -> RemotePipeline:
    """The triton backend's pipeline_opener (device and precision are the server's business:
    they were fixed when its repository was generated)."""
    check_choice(device, DEVICES, "device")
    if not isinstance(url, str) or not url or "/" in url or ":" not in url:
        raise InputError(f"--url must be HOST:PORT of a Triton server, got {url!r}")
    client = TritonMattingClient(url, model=model, protocol=protocol, transfer=transfer, shm=shm,
                                 concurrency=concurrency, api_key=api_key, retries=retries, timeout=timeout,
                                 overlap=overlap, batch=batch)
    try:
        return RemotePipeline(client)
    except BaseException:
        client.close()
        raise


def _no_stage_engines(source, **options):
    raise InputError(
        "the triton backend sends whole images to a Triton server that runs the pipeline; it has no stage "
        "engines in this process: use `mattrt infer --backend triton --url HOST:PORT` (Backend.pipeline_opener)"
    )


BACKEND = Backend(
    name="triton",
    summary="a Triton Inference Server running a `mattrt triton-repo` repository (whole images over HTTP or gRPC)",
    probes=("tritonclient",),
    devices=DEVICES,
    precisions=("fp32", "fp16", "int8"),
    artifacts="url",
    opener=_no_stage_engines,
    options=("protocol", "shm", "concurrency", "transfer", "model", "api_key", "retries", "timeout", "overlap", "batch"),
    pipeline_opener=open_remote_pipeline,
)


__all__ = [
    "BACKEND",
    "ENCODED_INPUT",
    "IMAGE_INPUT",
    "GRPC_KEY_PREFIX",
    "KEY_HEADER",
    "MATTE_OUTPUT",
    "PIPELINE_ROLE",
    "PNG_OUTPUT",
    "OUTPUTS",
    "PROTOCOLS",
    "RemotePipeline",
    "SERVER_STOPPING",
    "SHM_MODES",
    "STUB_UNHEALTHY",
    "ServerUnavailableError",
    "TRANSFERS",
    "TritonMattingClient",
    "TritonRequestError",
    "key_headers",
    "open_remote_pipeline",
]
