"""`mattrt serve`'s supervision: a tritonserver that crashed, lost a stub process, stopped
answering or holds too much memory is replaced by a new one on the same ports.

    supervisor = Supervisor("repo", ServerOptions(...), SupervisorOptions(), emit=print_line)
    supervisor.start()     # the first server, ready; the status endpoint (serving/status.py)
    supervisor.run()       # watches and restarts until a stop signal (KeyboardInterrupt) or it gives up

What is watched (every `tick` seconds, in the calling thread; canaries in a worker thread):
  crash    tritonserver exited (a segfault from a request Triton cannot parse, an abort, a kill).
  stub     a Python backend stub process (one per model instance, the expected set read from the
           repository's records) is missing or a zombie: Triton 2.51 never restarts a stub, keeps
           answering "ready", and fails every request routed to it ("Stub process ... is not
           healthy") without logging anything.
  canary   a tiny request per pipeline instance, every `canary_seconds` and at once when Triton's
           metrics count new backend failures: "is not healthy" fails the server at once, any
           other failure twice in a row does; a canary that times out while pipeline instances are
           busy with other requests proves nothing and is not counted.
  memory   the Python backend copies each request's input into the stub's shared-memory region
           before the model can refuse it, and the region never shrinks: once a pipeline instance's
           region holds more than `shm_budget` bytes (default: what the repository's largest
           legitimate image needs), the server is restarted when no request has run and the
           regions have not changed for `memory_settle_seconds` (at most once per
           `memory_restart_interval`; not counted as a failure).

A restart drains the old server as a stop does (new requests are answered "server is stopping",
which clients retry; requests in flight finish within the drain time), kills it right after the
drain (Triton 2.51 cannot unload a model whose stub died, idle client connections would keep it
waiting for its whole exit timeout, and while it unloads it answers "no available versions"),
removes its shared-memory regions, and starts a new one on the same ports with the same key.
Failures back off: `restart_delay`, doubled per failure in the last `restart_window` seconds, at
most `restart_delay_max`; after `max_restarts` failures within the window the supervisor gives up
(state "failed"): ServerError with the last exit and the log tail, `mattrt serve` exits 1 and
lets systemd or Kubernetes decide. Every transition is one JSON line (`emit`); the crashed
server's log is kept in the supervisor's folder.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from mattrt.engines.triton.client import KEY_HEADER, TritonMattingClient
from mattrt.errors import InputError, MattrtError
from mattrt.serving.keys import generate_key_file, key_warnings, read_key
from mattrt.serving.processes import allocated_bytes, prefix_regions, protect_regions, stub_processes
from mattrt.serving.repository import MIN_SIDE, PIPELINE_ROLE, python_instances
from mattrt.serving.server import PYTHON_SHM_DEFAULT, PYTHON_SHM_GROWTH, ServerError, ServerOptions, TritonServer
from mattrt.serving.status import RESTART_REASONS, StatusEndpoint

NOT_HEALTHY = "is not healthy"  # Triton's answer for a request routed to a dead or hung stub
_BACKEND_FAILURES = re.compile(r'^nv_inference_request_failure\{[^}]*reason="BACKEND"[^}]*\}\s+(\S+)', re.MULTILINE)


@dataclass(frozen=True)
class SupervisorOptions:
    tick: float = 0.5
    restart_delay: float = 1.0
    restart_delay_max: float = 30.0
    max_restarts: int = 5  # failures within restart_window that are restarted; one more: give up
    restart_window: float = 600.0
    canary_seconds: float = 15.0  # 0: no canary
    canary_timeout: float = 10.0
    metrics_seconds: float = 5.0  # how often Triton's failure counters are read (0: never)
    shm_budget: int | None = None  # bytes per pipeline instance region; None: shm_budget(max_pixels); 0: no limit
    memory_restart_interval: float = 60.0
    memory_settle_seconds: float = 2.0  # regions over the budget, unchanged and idle this long: restart
    exit_grace: float = 0.0  # after a restart's drain: how long tritonserver may take to exit before SIGKILL
    status_port: int | None = None  # None: a free port
    keep_logs: int = 5


def shm_budget(max_pixels: int) -> int:
    """What a pipeline instance's region may hold after legitimate requests: the largest image's
    input (3 bytes a pixel) with its matte and PNG (up to 4 each), in the backend's growth steps,
    plus one step for fragmentation."""
    steps = math.ceil(12 * max_pixels / PYTHON_SHM_GROWTH) + 1
    return PYTHON_SHM_DEFAULT + steps * PYTHON_SHM_GROWTH


class RestartPolicy:
    """Bounded back-off (module docstring): the delay before the next restart, None to give up."""

    def __init__(self, options: SupervisorOptions, clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.clock = clock
        self.times: list[float] = []

    def next_delay(self) -> float | None:
        now = self.clock()
        self.times = [t for t in self.times if now - t < self.options.restart_window]
        if len(self.times) >= self.options.max_restarts:
            return None
        delay = min(self.options.restart_delay_max, self.options.restart_delay * 2 ** len(self.times))
        self.times.append(now)
        return delay


@dataclass
class Fault:
    kind: str  # one of status.RESTART_REASONS
    reason: str
    planned: bool = False  # a memory restart: graceful, not a failure


@dataclass
class Counters:
    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTART_REASONS, 0))
    crashes_total: int = 0
    stub_deaths_total: int = 0
    canaries_total: int = 0
    canary_failures_total: int = 0


def canary_image(max_pixels: int) -> np.ndarray:
    side = 16 if max_pixels >= 256 else MIN_SIDE
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    return np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)), np.full((side, side), 90.0)],
                    axis=2).astype(np.uint8)


def signal_name(code: int | None) -> str | None:
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class Supervisor:
    """Runs and watches one tritonserver after another (module docstring)."""

    def __init__(self, repository: str | Path, options: ServerOptions,
                 supervise: SupervisorOptions = SupervisorOptions(),
                 emit: Callable[[dict], None] = lambda record: print(json.dumps(record), flush=True)):
        self.repository = Path(repository)
        self.options = options
        self.supervise = supervise
        self.emit = emit
        self.policy = RestartPolicy(supervise)
        self.counters = Counters()
        self.server: TritonServer | None = None
        self.state, self.reason, self.since = "starting", "starting tritonserver", time.time()
        self.last_exit: dict | None = None
        self.warnings: list[str] = []
        self.folder: Path | None = None
        self.status: StatusEndpoint | None = None
        self.watched: dict[str, str] = {}  # stub instance -> role
        self._ready_at = time.monotonic()
        self._starts = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mattrt-canary")
        self._canary: Future | None = None
        self._canary_due = 0.0
        self._canary_failed_once = False
        self._metrics_due = 0.0
        self._backend_failures: float | None = None
        self._last_memory_restart = -math.inf
        self._memory_over: tuple[dict, float] | None = None  # regions over the budget, since when

    # -- what the status endpoint shows ---------------------------------------------------------
    def snapshot(self) -> dict:
        server = self.server
        return {
            "state": self.state, "ready": self.state == "ready", "reason": self.reason, "since": round(self.since, 3),
            "restarts_total": sum(self.counters.restarts.values()), "restarts": dict(self.counters.restarts),
            "crashes_total": self.counters.crashes_total, "stub_deaths_total": self.counters.stub_deaths_total,
            "canaries_total": self.counters.canaries_total,
            "canary_failures_total": self.counters.canary_failures_total,
            "last_exit": self.last_exit, "server_pid": server.process.pid if server and server.process else None,
            "endpoints": dict(server.endpoints) if server else {}, "shm_prefix": server.shm_prefix if server else None,
            "shm_bytes": self._shm_bytes(server), "uptime_seconds": round(time.monotonic() - self._ready_at, 1)
            if self.state == "ready" else 0,
        }

    @staticmethod
    def _shm_bytes(server: TritonServer | None) -> int:
        if server is None or not server.shm_prefix:
            return 0
        return sum(allocated_bytes(region) for region in prefix_regions(server.shm_prefix))

    def _set_state(self, state: str, reason: str) -> None:
        self.state, self.reason, self.since = state, reason, time.time()

    # -- starting -------------------------------------------------------------------------------
    def start(self) -> "Supervisor":
        """The first server, ready (its errors are the caller's: nothing is restarted yet), the
        status endpoint, and the ready line."""
        self.folder = Path(tempfile.mkdtemp(prefix="mattrt-serve-"))
        key, source = read_key(self.options.key, self.options.key_file)
        self.warnings = key_warnings(source, None if self.options.key else self.options.key_file)
        if key is None:  # one key for every restart: clients keep working
            _, path = generate_key_file(self.folder)
            self.options = replace(self.options, key_file=path)
        try:
            self.status = StatusEndpoint(self.options.host, self.supervise.status_port, self.snapshot).start()
        except OSError as exc:
            raise InputError(f"the status port {self.supervise.status_port} on {self.options.host} cannot be "
                             f"used ({exc}); choose another --status-port or omit it to use a free one") from None
        self.server = self._new_server()
        self.options = replace(self.options, http_port=self.server.ports["http"],
                               grpc_port=self.server.ports["grpc"], metrics_port=self.server.ports["metrics"])
        self._became_ready(first=True)
        return self

    def _new_server(self) -> TritonServer:
        server = TritonServer(self.repository, self.options)
        self.server = server
        self._starts += 1
        try:
            server.start()
        except BaseException:
            if self._starts > 1:  # a restart's failure: its log is kept (a first start's tail is in its error)
                self._keep_log(server)
            server.close()
            raise
        return server

    def _became_ready(self, *, first: bool, down_since: float | None = None) -> None:
        """Check the stubs and (if canaries are on) the serving path, then say ready."""
        server = self.server
        expected = python_instances(server.records)
        seen = set(stub_processes(server.process.pid))
        self.watched = expected if set(expected) == seen else dict.fromkeys(seen, "unknown")
        if set(expected) != seen:
            print(f"mattrt serve: the server runs stub processes for {sorted(seen)}, not the {sorted(expected)} its "
                  "repository describes; watching those it runs", file=sys.stderr, flush=True)
        if self.supervise.canary_seconds:
            failure = self._canary_result(self._pool.submit(self._run_canary))
            if failure is not None and first:
                raise ServerError(f"tritonserver is ready but a canary request failed: {failure}; log tail:\n"
                                  f"{server.log_tail()}")
            if failure is not None:
                raise _CanaryFailed(failure)
        self._canary_due = time.monotonic() + self.supervise.canary_seconds
        self._canary_failed_once = False
        self._backend_failures = None
        self._ready_at = time.monotonic()
        self._set_state("ready", "serving")
        record = {"status": "ready", **server.endpoints}
        if self.status is not None:
            record["status_endpoint"] = self.status.endpoint
        record |= {"restricted_apis_key_header": KEY_HEADER, "key_from": server.key_source,
                   "log": str(server.log_path)}
        if not first:
            record |= {"restarts": sum(self.counters.restarts.values()),
                       "down_seconds": round(time.monotonic() - down_since, 2) if down_since else None}
        self.emit(record)
        if first:
            for warning in self.warnings:
                print(f"mattrt serve: warning: {warning}", file=sys.stderr, flush=True)

    # -- canaries -------------------------------------------------------------------------------
    def _run_canary(self) -> str | None:
        """None when every pipeline instance answered a tiny image, else what failed."""
        server = self.server
        for record in {r["name"]: r for r in server.records}.values():  # one record per pipeline model
            count = sum(1 for name, role in self.watched.items()
                        if role == PIPELINE_ROLE and name.startswith(f"{record['name']}_")) or 2
            image = canary_image(record["max_pixels"])
            self.counters.canaries_total += count
            try:
                with TritonMattingClient(server.endpoints["grpc"], model=record["name"], protocol="grpc", retries=0,
                                         timeout=self.supervise.canary_timeout, api_key=server.key,
                                         concurrency=count) as client:
                    mattes = client.matte_many([image] * count)
            except MattrtError as exc:
                return f"model {record['name']}: {exc}"
            if any(m.shape[:2] != image.shape[:2] for m in mattes):
                return f"model {record['name']}: a canary matte has the wrong shape"
        return None

    @staticmethod
    def _canary_result(future: Future) -> str | None:
        while True:  # short waits: a stop signal is handled at once
            try:
                return future.result(timeout=0.1)
            except TimeoutError:
                continue

    def _check_canary(self) -> Fault | None:
        now = time.monotonic()
        if self._canary is not None and self._canary.done():
            failure, self._canary = self._canary.result(), None
            if failure is None:
                self._canary_failed_once = False
            elif "DEADLINE_EXCEEDED" in failure and self.server.busy_instances():
                pass  # busy with other requests: proves nothing
            else:
                self.counters.canary_failures_total += 1
                if NOT_HEALTHY in failure or self._canary_failed_once:
                    return Fault("canary", f"canary request failed: {failure}")
                self._canary_failed_once = True
                self._canary_due = now  # once more at once
        if self._canary is None and self._canary_due <= now:
            self._canary = self._pool.submit(self._run_canary)
            self._canary_due = now + self.supervise.canary_seconds
        return None

    def _check_metrics(self) -> None:
        """New backend failures in Triton's metrics (a dead stub's symptom): a canary now."""
        now = time.monotonic()
        if not self.supervise.metrics_seconds or now < self._metrics_due:
            return
        self._metrics_due = now + self.supervise.metrics_seconds
        try:
            with urllib.request.urlopen(f"http://{self.server.endpoints['metrics']}/metrics", timeout=2) as answer:
                text = answer.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return
        failures = sum(float(value) for value in _BACKEND_FAILURES.findall(text))
        if self._backend_failures is not None and failures > self._backend_failures:
            self._canary_due = 0.0
        self._backend_failures = failures

    # -- watching -------------------------------------------------------------------------------
    def run(self) -> None:
        """Watch and restart until interrupted; ServerError once it gives up."""
        while True:
            fault = None
            while fault is None:
                time.sleep(self.supervise.tick)
                fault = self.check()
            self._recover(fault)

    def check(self) -> Fault | None:
        """One look at the server (module docstring); the fault found, if any."""
        server = self.server
        if not server.running:
            return Fault("crash", "tritonserver exited")
        stubs = stub_processes(server.process.pid)
        gone = sorted(name for name in self.watched if name not in stubs or stubs[name].dead)
        if gone:
            self.counters.stub_deaths_total += len(gone)
            return Fault("stub", f"the stub process of {', '.join(gone)} died (gone or a zombie); Triton 2.51 "
                                 "neither restarts it nor reports it")
        protect_regions(server.shm_prefix)
        if self.supervise.canary_seconds:
            self._check_metrics()
            fault = self._check_canary()
            if fault is not None:
                return fault
        return self._check_memory(stubs)

    def _check_memory(self, stubs: dict) -> Fault | None:
        server = self.server
        budget = self.supervise.shm_budget
        if budget is None:
            budget = shm_budget(max(r["max_pixels"] for r in server.records))
        if not budget or time.monotonic() - self._last_memory_restart < self.supervise.memory_restart_interval:
            return None
        held = {name: allocated_bytes(stubs[name].region) for name, role in self.watched.items()
                if role == PIPELINE_ROLE and stubs[name].region is not None}
        over = {name: size for name, size in held.items() if size > budget}
        now = time.monotonic()
        if not over or server.busy_instances():
            self._memory_over = None
            return None
        # Idle means: no instance runs a request and the regions have not changed for a while (a
        # request being copied in grows them before its model's busy mark appears).
        if self._memory_over is None or self._memory_over[0] != over:
            self._memory_over = (over, now)
            return None
        if now - self._memory_over[1] < self.supervise.memory_settle_seconds:
            return None
        self._memory_over = None
        self._last_memory_restart = now
        sizes = ", ".join(f"{name} {size / 2**20:.0f} MiB" for name, size in sorted(over.items()))
        return Fault("memory", f"shared memory over the budget of {budget / 2**20:.0f} MiB per pipeline instance "
                               f"({sizes}; a region never shrinks after a large request)", planned=True)

    # -- restarting -----------------------------------------------------------------------------
    def _recover(self, fault: Fault) -> None:
        down_since = time.monotonic()
        old = self.server
        self._canary = None  # a canary in flight is about the old server: its answer is dropped
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mattrt-canary")
        if fault.kind == "crash":
            ended = old.stop()
            self.counters.crashes_total += 1
            fault.reason = ended.message
        else:
            self._set_state("degraded", fault.reason)
            self.emit({"status": "degraded", "cause": fault.kind, "reason": fault.reason,
                       "restarts": sum(self.counters.restarts.values()), "shm_bytes": self._shm_bytes(old)})
            print(f"mattrt serve: {fault.reason}: restarting tritonserver", file=sys.stderr, flush=True)
            ended = old.stop(exit_wait=self.supervise.exit_grace)
        log = self._keep_log(old)
        self.last_exit = {**ended.record(), "signal": signal_name(ended.code), "log": str(log) if log else None}
        old.close()
        if fault.kind == "crash":
            self._set_state("degraded", fault.reason)
            self.emit({"status": "crashed", **self.last_exit})
            print(f"mattrt serve: {ended.message}; its log: {log}; log tail:\n{_tail(log)}", file=sys.stderr,
                  flush=True)
        self._restart(fault, down_since)

    def _restart(self, fault: Fault, down_since: float) -> None:
        while True:
            delay = 0.0 if fault.planned else self.policy.next_delay()
            if delay is None:
                self._give_up(fault)
            self.counters.restarts[fault.kind] += 1
            self._set_state("restarting", fault.reason)
            self.emit({"status": "restarting", "cause": fault.kind, "reason": fault.reason, "delay_seconds": delay,
                       "restarts": sum(self.counters.restarts.values()), "max_restarts": self.supervise.max_restarts,
                       "window_seconds": self.supervise.restart_window, "previous_exit": self.last_exit})
            time.sleep(delay)
            try:
                self._new_server()
                self._became_ready(first=False, down_since=down_since)
                return
            except (MattrtError, _CanaryFailed) as exc:
                if self.server is not None and self.server.exit is None:
                    self.server.stop(exit_wait=self.supervise.exit_grace)
                    self._keep_log(self.server)
                    self.server.close()
                fault = Fault(fault.kind, f"the restarted server failed: {exc}")
                self._set_state("degraded", fault.reason)

    def _give_up(self, fault: Fault) -> None:
        window = self.supervise.restart_window
        message = (f"tritonserver failed {len(self.policy.times) + 1} times within {window:g} s (at most "
                   f"{self.supervise.max_restarts} restarts are made in that time), so it is not restarted again; "
                   f"the last failure: {fault.reason}")
        self._set_state("failed", message)
        self.emit({"status": "failed", "reason": message, "last_exit": self.last_exit})
        log = (self.last_exit or {}).get("log")
        raise ServerError(f"{message}; log tail ({log}):\n{_tail(Path(log) if log else None)}")

    def _keep_log(self, server: TritonServer) -> Path | None:
        """Copy an ended server's log into the supervisor's folder (its own folder goes with it)."""
        if self.folder is None or server.log_path is None or not server.log_path.is_file():
            return None
        kept = self.folder / f"tritonserver-{self._starts}.log"
        shutil.copyfile(server.log_path, kept)
        logs = sorted(self.folder.glob("tritonserver-*.log"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
        for old in logs[: -self.supervise.keep_logs]:
            old.unlink(missing_ok=True)
        return kept

    # -- stopping -------------------------------------------------------------------------------
    def stopping(self) -> None:
        self._set_state("stopping", "stop signal received")

    def close(self) -> None:
        """Stop the status endpoint and the canary worker; the server is the caller's to stop.
        The generated key goes; kept logs of ended servers stay (their folder is removed when empty)."""
        if self.status is not None:
            self.status.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.server is not None:
            self.server.close()
        if self.folder is not None:
            (self.folder / "api-key").unlink(missing_ok=True)
            if not any(self.folder.iterdir()):
                self.folder.rmdir()


class _CanaryFailed(Exception):
    """A restarted server whose canary failed (retried like a failed start)."""

    def __str__(self) -> str:
        return f"a canary request failed: {self.args[0]}"


def _tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.is_file():
        return "(no log)"
    kept = [line for line in log.read_text(errors="replace").splitlines() if "NVML" not in line and "DCGM" not in line]
    return "\n".join(kept[-lines:])


__all__ = ["Fault", "RestartPolicy", "Supervisor", "SupervisorOptions", "canary_image", "shm_budget"]
