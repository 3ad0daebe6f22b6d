"""Start, watch and stop a Triton Inference Server over a mattrt model repository.

    with TritonServer("repo", ServerOptions(http_port=8000)) as server:
        print(server.endpoints)           # {"http": "127.0.0.1:8000", "grpc": ..., "metrics": ...}

The binary comes from `mattrt.availability.tritonserver_binary()` (the `nvidia-pytriton` wheel's
tritonserver 2.51 here) or a given path. The wheel ships the Python backend without its stub
process: the stub for this interpreter's Python version is linked into a private backend
directory, as pytriton itself does. The stub embeds the Python that `python3` on PATH belongs
to, so the server's PATH starts with this interpreter's bin directory (mattrt's virtual
environment); the embedded interpreter ignores PYTHONPATH, so the generated model.py shims
apply the PYTHONPATH passed here (the tree this mattrt was imported from).

Security: the server binds to 127.0.0.1 unless told otherwise (`http_host` puts Triton's HTTP
side on another address than gRPC and metrics, e.g. loopback only), runs with model control off
(`--model-control-mode=none`: nothing is loaded or unloaded through the API), and the
model-repository, shared-memory, trace and logging APIs of HTTP and gRPC answer only requests
carrying the header `mattrt-key: <key>` (gRPC: `triton-grpc-protocol-mattrt-key`; Triton's
`--http-restricted-api` and `--grpc-restricted-protocol`); `restrict_inference` adds inference
to them (an unauthenticated request is then refused before Triton parses its body). The key
comes from a key file, $MATTRT_TRITON_KEY, or is generated into a private file (mode 0600) whose
path is reported; mattrt never prints the key itself. (Triton 2.51 takes the key only as a
command-line flag, so local users who can read the server's /proc/<pid>/cmdline can see it:
serving/keys.py.) The Python backend's shared-memory regions carry every request's pixels: each
start gets its own region prefix (serving/processes.py), the regions are made 0600 as soon as
they appear (the backend creates them 0644 whatever the umask), and they are removed after every
exit, a SIGKILL of the whole process group included; leftovers of servers whose starting
process died are swept at the next start.

Request memory: Triton 2.51 has no HTTP body limit (a newer binary's `--http-max-input-size` is
set from the repository's pixel limit where it exists) and reads every body in full before any
check; gRPC request buffers are not kept for reuse (`--grpc-infer-allocation-pool-size=0`, where
the binary has it). What a refused oversized request leaves in the Python backend's regions is
handled by the supervisor (serving/supervisor.py).

GPU repositories (TensorRT plans; "what a repository needs" below): before the server starts, its
install must have every backend the repository's models need (the nvidia-pytriton wheel's server
has only the Python backend: TensorRT models need NVIDIA's Triton container or another Triton with
backends/tensorrt), and the plans' TensorRT version must be one the server's TensorRT runs (read
from the libnvinfer its TensorRT backend loads; where that cannot be read, a plan the server
refuses while loading gets the same advice from the log). Version-compatible plans get
`--backend-config=tensorrt,version-compatible=true`, and GPU repositories a pinned host memory
pool for their host<->GPU copies (CPU repositories keep none).

Nothing hangs: readiness is polled with a deadline (a server that never becomes ready is
stopped and its log tail shown), and stopping escalates from SIGTERM to SIGKILL of the whole
process group (the server and its stub processes).

Stopping (what `mattrt serve` promises on SIGTERM or Ctrl-C; `stop()`):
1. From the signal on, no new request starts: the pipeline model answers every request that has
   not started with UNAVAILABLE "server is stopping" (it checks a marker file in the server's
   state folder, $MATTRT_SERVE_STATE, per execute), which the mattrt client retries like an
   absent server; and tritonserver, signalled at once, closes its HTTP listener (new HTTP
   connections are refused, /v2/health/ready stops answering). Triton 2.51 answers gRPC's
   ServerReady with true until the drain ends (measured); gRPC requests reach the pipeline model
   and are refused there.
2. Requests in flight finish within `drain_seconds`: each pipeline instance keeps a busy file in
   the state folder while it runs, and the server waits for those to go. Triton's own drain
   cannot carry them: once it stops its models, the BLS calls of a running pipeline request
   fail ("has no available versions"). Triton stops its models only after its HTTP side has no
   connections left (or its exit timeout ran out), so `mattrt serve` holds one HTTP connection
   open from the signal until its own drain is over, and Triton's exit timeout is longer than
   the drain. Idle client connections can keep Triton waiting until that timeout.
3. The exit is reported as it was (`ServerExit`): a clean stop; the drain time running out with
   requests still running (they failed); a crash while stopping (exit status and signal, with
   the log tail); or a server that did not exit and was killed.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mattrt
from mattrt.availability import probe, tritonserver_binary
from mattrt.engines.triton.client import KEY_HEADER, key_headers
from mattrt.errors import InputError, MattrtError, MissingDependencyError
from mattrt.serving.gpu_repository import (
    check_backends,
    check_tensorrt_version,
    tensorrt_flags,
    tensorrt_load_advice,
    tensorrt_of_server,
)
from mattrt.serving.keys import KEY_ENV, check_key, generate_key_file, read_key
from mattrt.serving.processes import (
    LOOPBACK,
    ServerExit,
    classify_exit,
    free_port,
    new_shm_prefix,
    port_free,
    process_state,
    process_tree,
    protect_regions,
    remove_regions,
    rss_bytes,
    sweep_dead_starters,
)
from mattrt.serving.repository import (
    BUSY_PREFIX,
    STATE_ENV,
    STOPPING_FILE,
    check_repository,
    needed_backends,
    tensorrt_models,
)

RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
# The Python backend's per-stub shared memory: start big enough for a tile batch and grow in
# large steps (a raw 4K image is 25 MB; the default 1 MB steps cost many remaps).
PYTHON_SHM_DEFAULT = 16 * 1024 * 1024
PYTHON_SHM_GROWTH = 64 * 1024 * 1024


# Triton's exit timeout is the drain time plus this: mattrt serve's own drain ends first.
EXIT_MARGIN_SECONDS = 10


class ServerError(MattrtError):
    """The server failed to start, never became ready, or died."""


@dataclass(frozen=True)
class ServerOptions:
    host: str = LOOPBACK
    http_port: int | None = None  # None: a free port
    grpc_port: int | None = None
    metrics_port: int | None = None
    binary: Path | None = None  # None: availability.tritonserver_binary()
    key: str | None = None  # None: $MATTRT_TRITON_KEY, key_file, or a generated key
    key_file: Path | None = None
    ready_timeout: float = 180.0
    drain_seconds: int = 30  # how long requests in flight at a stop may take to finish (module docstring)
    max_input_bytes: int | None = None  # --http-max-input-size where the binary has it; None: max_input_bytes()
    http_host: str | None = None  # None: host (e.g. loopback, with gRPC exposed on host)
    restrict_inference: bool = False  # inference needs the key too


def max_input_bytes(max_pixels: int) -> int:
    """The largest request body a repository's pixel limit allows: raw pixels (3 bytes each) or an
    encoded file of them (a stored PNG/TIFF adds a little per row), with room for the JSON header.
    JSON-encoded (non-binary) tensors of large images do not fit: send binary data or a file."""
    return 3 * max_pixels + max_pixels // 8 + (1 << 20)


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.rsplit(":", 1)
    return host.strip("[]"), int(port)


def _connect_host(host: str) -> str:
    """Where a local client reaches a server bound to `host`."""
    return {"0.0.0.0": LOOPBACK, "::": "::1", "": LOOPBACK}.get(host, host)


@functools.cache
def binary_flags(binary: str, env_items: tuple) -> str:
    """The binary's --help text (flags differ between Triton releases)."""
    try:
        done = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60, env=dict(env_items))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerError(f"{binary} --help failed: {exc}") from None
    return done.stdout + done.stderr


class TritonServer:
    """A tritonserver process over one repository (module docstring)."""

    def __init__(self, repository: str | Path, options: ServerOptions = ServerOptions()):
        self.repository = Path(repository).resolve()
        self.options = options
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self.key: str | None = None
        self.key_source = ""
        self.key_file: Path | None = None
        self.ports: dict[str, int] = {}
        self.stopping = False
        self.exit: ServerExit | None = None
        self._held_connection: socket.socket | None = None
        self.plans: dict[str, dict] = {}  # TensorRT model -> the record of its plans (GPU repositories)
        self.records: list[dict] = []  # the repository's records (serving/repository.py)
        self.shm_prefix: str | None = None  # this start's Python backend region prefix (module docstring)

    # -- set-up ---------------------------------------------------------------------------------
    def _binary(self) -> Path:
        binary = Path(self.options.binary) if self.options.binary else tritonserver_binary()
        if binary is None:
            raise MissingDependencyError(f"no tritonserver found: {probe('tritonserver').detail}; "
                                         "`pip install --no-deps nvidia-pytriton==0.7.0` or pass --tritonserver PATH")
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise InputError(f"{binary} is not an executable tritonserver")
        return binary

    def _backend_directory(self, binary: Path) -> Path:
        """A backend directory whose python backend has the stub for this Python version."""
        shipped = binary.parent.parent / "backends"
        if (shipped / "python" / "triton_python_backend_stub").is_file():
            return shipped  # a regular Triton install
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = binary.parent.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
        library = shipped / "python" / "libtriton_python.so"
        if not stub.is_file() or not library.is_file():
            raise MissingDependencyError(
                f"{binary} has no Python backend stub for Python {version} (looked for {stub}); "
                "use a Python version the nvidia-pytriton wheel ships stubs for (3.8-3.13)"
            )
        python = self.workdir / "backends" / "python"
        python.mkdir(parents=True)
        for item in (shipped / "python").iterdir():
            if item.is_file():
                (python / item.name).symlink_to(item)
        (python / "triton_python_backend_stub").symlink_to(stub)
        return self.workdir / "backends"

    def _environment(self, binary: Path) -> dict[str, str]:
        env = dict(os.environ)
        # The stub embeds the Python of `python3` on PATH: this interpreter's environment.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        source_root = str(Path(mattrt.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [source_root, env.get("PYTHONPATH", "")] if p)
        libraries = binary.resolve().parents[3] / "nvidia_pytriton.libs" if len(binary.resolve().parents) > 3 else None
        if libraries is not None and libraries.is_dir():
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [str(libraries), env.get("LD_LIBRARY_PATH", "")] if p)
        # Threads are set per stage instance (serving/triton_models.py); keep libraries from
        # starting one OpenMP thread per core in every stub process.
        env.setdefault("OMP_NUM_THREADS", "1")
        env[STATE_ENV] = str(self.state_dir)  # where the models learn that the server is stopping
        return env

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def _host(self, kind: str) -> str:
        return (self.options.http_host or self.options.host) if kind == "http" else self.options.host

    def _pick_ports(self) -> None:
        chosen: dict[str, int] = {}
        for kind in ("http", "grpc", "metrics"):
            host = self._host(kind)
            port = getattr(self.options, f"{kind}_port")
            if port is None:
                port = free_port(host)
                while port in chosen.values():
                    port = free_port(host)
            elif not (0 < port < 65536):
                raise InputError(f"--{kind}-port must lie in 1..65535, got {port}")
            elif not port_free(host, port):
                raise InputError(f"{kind} port {port} on {host} is in use; choose another or omit --{kind}-port "
                                 "to use a free one")
            chosen[kind] = port
        if len(set(chosen.values())) != 3:
            raise InputError(f"the http, grpc and metrics ports must differ, got {chosen}")
        self.ports = chosen

    def command(self, binary: Path, backends: Path, flags: str) -> list[str]:
        host, ports = self.options.host, self.ports
        apis = RESTRICTED_APIS + (("inference",) if self.options.restrict_inference else ())
        restricted = f"{','.join(apis)}:{KEY_HEADER}={self.key}"
        command = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={self.options.drain_seconds + EXIT_MARGIN_SECONDS}",
            f"--http-address={self._host('http')}", f"--http-port={ports['http']}",
            f"--grpc-address={host}", f"--grpc-port={ports['grpc']}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            f"--metrics-address={host}", f"--metrics-port={ports['metrics']}",
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
            *tensorrt_flags(self.plans),
            f"--backend-config=python,shm-default-byte-size={PYTHON_SHM_DEFAULT}",
            f"--backend-config=python,shm-growth-byte-size={PYTHON_SHM_GROWTH}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        # Request buffers are not kept for reuse (2.51 keeps up to 8 of any size by default).
        if "--grpc-infer-allocation-pool-size" in flags:
            command.append("--grpc-infer-allocation-pool-size=0")
        # Newer releases only: 2.51 has no input-size limit flag and no client-shm switch.
        if "--http-max-input-size" in flags:
            limit = self.options.max_input_bytes or max_input_bytes(max(r["max_pixels"] for r in self.records))
            command.append(f"--http-max-input-size={limit}")
        if "--allow-client-shm" in flags:
            command.append("--allow-client-shm=true")
        return command

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "TritonServer":
        if self.process is not None:
            raise ServerError("this server is already started")
        self.records = records = check_repository(self.repository)
        binary = self._binary()
        check_backends(needed_backends(records), binary)
        self.plans = tensorrt_models(records)
        self.key, self.key_source = read_key(self.options.key, self.options.key_file)
        self.workdir = Path(tempfile.mkdtemp(prefix="mattrt-triton-"))
        if self.key is None:
            self.key, self.key_file = generate_key_file(self.workdir)
            self.key_source = str(self.key_file)
        check_key(self.key)
        self.state_dir.mkdir()
        backends = self._backend_directory(binary)
        env = self._environment(binary)
        check_tensorrt_version(self.plans, tensorrt_of_server(binary, env) if self.plans else None)
        flags = binary_flags(str(binary), tuple(sorted(env.items())))
        self._pick_ports()
        sweep_dead_starters()
        self.shm_prefix = new_shm_prefix()
        self.log_path = self.workdir / "tritonserver.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(binary, backends, flags), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        try:
            self.wait_ready(self.options.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Poll readiness; meanwhile the regions the models' stubs create are made private at once."""
        deadline = time.monotonic() + timeout
        while True:
            protect_regions(self.shm_prefix)
            code = self.process.poll()
            if code is not None:
                raise ServerError(f"tritonserver exited with code {code} before it was ready; log tail:\n"
                                  f"{self.log_tail()}{self._load_advice()}")
            if self.http_ready():
                protect_regions(self.shm_prefix)
                return
            if time.monotonic() > deadline:
                raise ServerError(f"tritonserver was not ready after {timeout:.0f} s; log tail:\n"
                                  f"{self.log_tail()}{self._load_advice()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def endpoints(self) -> dict[str, str]:
        shown = {kind: _connect_host(self._host(kind)) for kind in self.ports}
        return {kind: f"[{shown[kind]}]:{port}" if ":" in shown[kind] else f"{shown[kind]}:{port}"
                for kind, port in self.ports.items()}

    def headers(self, protocol: str = "http") -> dict[str, str]:
        """The header that unlocks the restricted APIs (shared memory included); gRPC prefixes it."""
        return key_headers(protocol, self.key)

    def _load_advice(self) -> str:
        log = self.log_path.read_text(errors="replace") if self.log_path and self.log_path.is_file() else ""
        return tensorrt_load_advice(log, self.plans)

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        # NVML/DCGM complain on machines without a GPU driver: not the story.
        kept = [line for line in text if "NVML" not in line and "DCGM" not in line and "dcgm" not in line]
        return "\n".join(kept[-lines:])

    def memory(self) -> dict[int, int]:
        """RSS in bytes of the server and each of its stub processes."""
        if not self.running:
            return {}
        return {pid: rss_bytes(pid) for pid in process_tree(self.process.pid)}

    def _group_alive(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def http_ready(self) -> bool:
        """Whether /v2/health/ready answers 200 now."""
        try:
            with urllib.request.urlopen(f"http://{self.endpoints['http']}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def begin_stop(self, settle: float = 5.0) -> bool:
        """Start no new request from now on (module docstring, stopping 1): the stop marker, one
        held HTTP connection, then SIGTERM to tritonserver. Returns once HTTP readiness is off (at
        most `settle` seconds later); False if it still answered ready then."""
        if self.process is None:
            return True
        if not self.stopping:
            self.stopping = True
            if self.workdir is not None and self.state_dir.is_dir():
                (self.state_dir / STOPPING_FILE).touch()
            if self.process.poll() is None:
                self._hold_http_connection()
                self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settle
        while self.process.poll() is None and self.http_ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _hold_http_connection(self) -> None:
        """An open HTTP connection keeps a signalled Triton from stopping its models (stopping 2)."""
        try:
            connection = socket.create_connection(_split_endpoint(self.endpoints["http"]), timeout=5)
            connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: mattrt\r\n\r\n")
            connection.recv(4096)  # the answer: the server has taken the connection
        except OSError:
            return  # no HTTP side to hold: Triton stops its models at once
        self._held_connection = connection

    def _release_http_connection(self) -> None:
        if self._held_connection is not None:
            self._held_connection.close()
            self._held_connection = None

    def busy_instances(self) -> list[int]:
        """PIDs of pipeline model instances running requests now (their busy files; a file whose
        process is gone does not count)."""
        if self.workdir is None or not self.state_dir.is_dir():
            return []
        pids = []
        for path in self.state_dir.glob(f"{BUSY_PREFIX}*"):
            pid = path.name.removeprefix(BUSY_PREFIX)
            if pid.isdigit() and process_state(int(pid)) not in (None, "Z", "X"):  # a killed stub is no request
                pids.append(int(pid))
        return pids

    def drain(self, seconds: float) -> int:
        """Wait up to `seconds` for the requests in flight; the number of pipeline instances still
        running requests then (0: drained; also 0 once the server has died)."""
        deadline = time.monotonic() + seconds
        while self.running:
            busy = self.busy_instances()
            if not busy or time.monotonic() > deadline:
                return len(busy)
            time.sleep(0.05)
        return 0

    def stop(self, exit_wait: float | None = None) -> ServerExit | None:
        """begin_stop(), drain(), let tritonserver exit (SIGKILL of what is left of its process
        group if it has not after its exit timeout plus 15 s, or after `exit_wait` seconds); how it
        ended, also kept in `self.exit`. Shared-memory regions a killed stub could not remove are
        removed here."""
        if self.process is None:
            return None
        if self.exit is not None:
            return self.exit
        process = self.process
        stopping = self.stopping or process.poll() is None
        try:
            self.begin_stop(settle=0)
            still_running = self.drain(self.options.drain_seconds)
        finally:
            self._release_http_connection()
        wait = self.options.drain_seconds + EXIT_MARGIN_SECONDS + 15 if exit_wait is None else exit_wait
        deadline = time.monotonic() + wait
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = process.poll() is None
        self._kill_group(process, grace=5.0 if exit_wait is None else 0)
        if self.shm_prefix:
            remove_regions(self.shm_prefix)
        log = self.log_path.read_text(errors="replace") if self.log_path and self.log_path.is_file() else ""
        ended = classify_exit(process.returncode, log, self.options.drain_seconds, stopping=stopping, killed=killed)
        if still_running and ended.outcome == "stopped":
            ended = ServerExit(ended.code, "drain-expired",
                               f"the {self.options.drain_seconds} s drain time ran out while {still_running} pipeline "
                               "instance(s) still ran requests; those requests failed", still_running)
        self.exit = ended
        return ended

    def kill(self) -> ServerExit | None:
        """Stop at once (a second Ctrl-C or SIGTERM): SIGKILL of the server and its stubs."""
        if self.process is None or self.exit is not None:
            return self.exit
        self._release_http_connection()
        self._kill_group(self.process, grace=0)
        if self.shm_prefix:
            remove_regions(self.shm_prefix)
        self.exit = ServerExit(self.process.returncode, "killed", "tritonserver was killed at once by a second stop "
                                                                  "signal; requests in flight failed")
        return self.exit

    def _kill_group(self, process: subprocess.Popen, grace: float = 5.0) -> None:
        deadline = time.monotonic() + grace  # stubs finish their own clean-up first
        while self._group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # leftovers: the server or its stubs
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Stop and remove the private directory (log, backend links, generated key)."""
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["KEY_ENV", "KEY_HEADER", "LOOPBACK", "RESTRICTED_APIS", "ServerError", "ServerOptions", "TritonServer",
           "max_input_bytes", "read_key"]
