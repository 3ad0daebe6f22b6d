"""`mattrt serve`'s own status endpoint: what Triton 2.51's health endpoints cannot say.

Triton 2.51 answers /v2/health/ready (and gRPC ServerReady, and every model's ready endpoint)
with "ready" while a model's stub process is dead and every request to it fails, so a load
balancer or Kubernetes probe must ask mattrt instead. A small HTTP server (the standard
library's, one thread per connection, GET only, nothing read from request bodies) answers:

    GET /ready    200 "ready" only while the serving path works (the supervisor's state is
                  "ready": the server runs, every stub is alive, the last canary passed);
                  503 with the reason otherwise (starting, degraded, restarting, stopping, failed)
    GET /live     200 while the supervisor runs (503 once it gave up)
    GET /status   JSON: state, reason, since, counters, the last exit, endpoints, shared memory
    GET /metrics  the counters in Prometheus' text format (mattrt_serve_*)

It says nothing secret (no key, no paths); it binds where the server binds (`--host`).
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from mattrt.serving.processes import free_port

STATES = ("starting", "ready", "degraded", "restarting", "stopping", "failed")
RESTART_REASONS = ("crash", "stub", "canary", "memory")

# (name, type, help, snapshot key)
_COUNTERS = (
    ("mattrt_serve_crashes_total", "counter", "tritonserver exits the supervisor did not ask for", "crashes_total"),
    ("mattrt_serve_stub_deaths_total", "counter", "Python backend stub processes found dead or missing",
     "stub_deaths_total"),
    ("mattrt_serve_canaries_total", "counter", "canary requests sent by the supervisor", "canaries_total"),
    ("mattrt_serve_canary_failures_total", "counter", "canary rounds that failed", "canary_failures_total"),
    ("mattrt_serve_shm_bytes", "gauge", "memory held by the server's Python backend shared-memory regions",
     "shm_bytes"),
    ("mattrt_serve_uptime_seconds", "gauge", "seconds since the current tritonserver became ready", "uptime_seconds"),
)


def prometheus_text(snapshot: dict) -> str:
    """The snapshot's counters in Prometheus' text exposition format."""
    lines = ["# HELP mattrt_serve_ready 1 while the serving path works (the state is ready), else 0",
             "# TYPE mattrt_serve_ready gauge", f"mattrt_serve_ready {int(snapshot['ready'])}",
             "# HELP mattrt_serve_state 1 for the supervisor's current state", "# TYPE mattrt_serve_state gauge"]
    lines += [f'mattrt_serve_state{{state="{state}"}} {int(snapshot["state"] == state)}' for state in STATES]
    lines += ["# HELP mattrt_serve_restarts_total tritonserver restarts by the supervisor, by cause",
              "# TYPE mattrt_serve_restarts_total counter"]
    lines += [f'mattrt_serve_restarts_total{{reason="{reason}"}} {snapshot["restarts"].get(reason, 0)}'
              for reason in RESTART_REASONS]
    for name, kind, text, key in _COUNTERS:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {snapshot[key]}"]
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    server_version = "mattrt-serve-status"
    timeout = 10  # a silent connection is dropped

    def do_GET(self) -> None:
        snapshot = self.server.snapshot()
        path = self.path.split("?", 1)[0]
        if path == "/ready":
            ok = snapshot["ready"]
            self._send(200 if ok else 503, "ready\n" if ok else f"{snapshot['state']}: {snapshot['reason']}\n")
        elif path == "/live":
            ok = snapshot["state"] != "failed"
            self._send(200 if ok else 503, "live\n" if ok else f"failed: {snapshot['reason']}\n")
        elif path == "/status":
            self._send(200, json.dumps(snapshot, indent=1) + "\n", "application/json")
        elif path == "/metrics":
            self._send(200, prometheus_text(snapshot), "text/plain; version=0.0.4")
        else:
            self._send(404, "GET /ready, /live, /status or /metrics\n")

    def do_POST(self) -> None:
        self._send(405, "GET only\n")

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _send(self, code: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def log_message(self, format, *args) -> None:  # probes every few seconds: no log line each
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], snapshot: Callable[[], dict]):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.snapshot = snapshot
        super().__init__(address, _Handler)


class StatusEndpoint:
    """The endpoint on host:port (port None: a free one), serving `snapshot()` in a daemon thread."""

    def __init__(self, host: str, port: int | None, snapshot: Callable[[], dict]):
        self.host = host
        self.port = free_port(host) if port is None else port
        self._server = _Server((host, self.port), snapshot)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mattrt-serve-status", daemon=True)

    def start(self) -> "StatusEndpoint":
        self._thread.start()
        return self

    @property
    def endpoint(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


__all__ = ["RESTART_REASONS", "STATES", "StatusEndpoint", "prometheus_text"]
