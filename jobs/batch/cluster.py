"""Ray for a batch job: the embedded instance or a cluster by address, reached or refused
quickly; the nodes that can hold an actor; the per-node probe; Ray Data's settings.

Without an address, `ray.init(address="local")` starts a private Ray instance on this machine's
cores (plain `ray.init()` would join whatever cluster `RAY_ADDRESS` or the last `ray start` on
this machine names). It gets token authentication with a fresh token unless RAY_AUTH_MODE is
set (Ray's ports listen on every interface, and Ray 2.60 would otherwise write
~/.ray/auth_token), no dashboard, no usage statistics unless RAY_USAGE_STATS_ENABLED is set,
and a small object store (only paths and records travel through it). It stops with the job.
Ray's own lines on stderr stay: "(raylet) A worker died ..." when a worker is lost, and one
`core_worker.cc` warning per job about actor constructor arguments in the object store, which
does not apply here (the driver holds them for the whole job; ray-project/ray#53727).

With an address, the TCP port is tried first (a closed port or an unknown host is refused at
once; Ray itself would retry for about 14 minutes), then `ray.init(address=...)` with its
start-up wait shortened (RAY_gcs_server_port_wait_time_s, unless set). Disconnecting at the end
leaves the cluster running; the job's actors end with the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from mattrt.errors import InputError, MattrtError
from mattrt.jobs.batch.worker import probe_node
from mattrt.lazy import lazy_import

ray = lazy_import("ray", probe="ray")
ray_data = lazy_import("ray.data", probe="ray")
ray_exceptions = lazy_import("ray.exceptions", probe="ray")
scheduling = lazy_import("ray.util.scheduling_strategies", probe="ray")

LOCAL_OBJECT_STORE_BYTES = 512 * 2**20
CONNECT_TIMEOUT_S = 5.0
GCS_WAIT_S = "10"
WORKER_EXIT_S = 15.0
DEFAULT_GCS_PORT = 6379
ADDRESS_HELP = "HOST:PORT (the head node's port, 6379 unless `ray start --head --port` chose another), auto, or ray://HOST:PORT"


def split_address(address: str) -> tuple[str, int] | None:
    """(host, port) to try for an address, None for "auto" (Ray's own discovery)."""
    if address == "auto":
        return None
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in text:
        raise InputError(f"--address {address!r} is not an address: give {ADDRESS_HELP}")
    return host, int(port)


def check_reachable(address: str) -> None:
    """Refuse at once an address where nothing listens (module docstring)."""
    target = split_address(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=CONNECT_TIMEOUT_S):
            pass
    except socket.gaierror as exc:
        reason = f"unknown host: {exc.strerror or exc}"
    except socket.timeout:
        reason = f"no answer within {CONNECT_TIMEOUT_S:g} s"
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
    else:
        return
    raise InputError(f"--address {address}: no Ray cluster answers there ({reason}); start one (`ray start --head`) "
                     "or check the address (`ray status` on the head node prints it); nothing was processed")


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block (those the user set are kept), then restore."""
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        os.environ.setdefault(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def connected(address: str | None, *, num_cpus: int, log) -> Iterator[set[int]]:
    """Ray started (no address) or reached (module docstring) for the block. The block adds the
    worker processes it learns of to the set it gets: an embedded Ray's are waited for at the end
    (they end on their own a few seconds after Ray stops), so the job leaves no process behind."""
    workers: set[int] = set()
    if address is None:
        settings = {"RAY_USAGE_STATS_ENABLED": "0"}
        if "RAY_AUTH_MODE" not in os.environ and "ray._raylet" not in sys.modules:
            # Ray reads its authentication mode when it loads: once loaded, its own default stays.
            settings.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        with _environment(settings):
            try:
                with _python_sigterm():
                    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                             logging_level=logging.WARNING, object_store_memory=LOCAL_OBJECT_STORE_BYTES)
            except Exception as exc:  # Ray's start-up failures are of many kinds: name the first line
                raise MattrtError(f"Ray could not start on this machine: {_first_line(exc)}; nothing was "
                                  "processed") from None
            try:
                yield workers
            finally:
                ray.shutdown()
                _wait_until_gone(workers, WORKER_EXIT_S)
        return
    with _environment({"RAY_gcs_server_port_wait_time_s": GCS_WAIT_S}):
        try:
            with _python_sigterm():
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except Exception as exc:  # ConnectionError mostly; Ray raises others for a wrong token or client
            raise InputError(f"--address {address}: could not connect to a Ray cluster there ({_first_line(exc)}); "
                             "check the address, and for a cluster with token authentication set RAY_AUTH_TOKEN; "
                             "nothing was processed") from None
    log(f"connected to the Ray cluster at {address}")
    try:
        yield workers
    finally:
        ray.shutdown()


def _wait_until_gone(pids: set[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while pids and time.monotonic() < deadline:
        for pid in list(pids):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                state = "gone"  # no /proc (not Linux) ends the wait too
            if state in ("gone", "Z"):
                pids.discard(pid)
        time.sleep(0.1)


@contextlib.contextmanager
def _python_sigterm() -> Iterator[None]:
    """Keep Python's SIGTERM handler (the CLI's: SIGTERM takes the Ctrl-C path, so the manifest is
    written) over the one Ray's core worker installs in `ray.init`, which ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def actor_nodes(cpus: float, gpus: float) -> list[dict]:
    """Alive nodes with room for one actor of `cpus` CPUs and `gpus` GPUs, with how many fit."""
    found = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        if not node.get("Alive") or resources.get("CPU", 0) < cpus or resources.get("GPU", 0) < gpus:
            continue
        fits = int(resources.get("CPU", 0) // cpus) if cpus else 1 << 30
        if gpus:
            fits = min(fits, int(resources.get("GPU", 0) // gpus))
        found.append({"node": node["NodeID"], "host": node.get("NodeManagerAddress", "?"), "fits": fits})
    return found


def runtime_env() -> dict:
    """Workers' environment: OpenMP threads that wait sleep (read when torch loads, which is when
    the worker module is imported), as the CLI arranges for `mattrt infer`."""
    return {"env_vars": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}}


def probe_nodes(nodes: list[dict], request, options, marker: str, *, cpus: float, gpus: float) -> list[dict]:
    """Run worker.probe_node once on each node, all at once (the first run on a node fills its
    artifact cache); errors name the node."""
    remote = ray.remote(probe_node)
    calls = []
    for node in nodes:
        strategy = scheduling.NodeAffinitySchedulingStrategy(node_id=node["node"], soft=False)
        calls.append(remote.options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=strategy, max_retries=1,
                                    runtime_env=runtime_env()).remote(request, options, marker))
    replies = []
    for node, call in zip(nodes, calls):
        try:
            replies.append(ray.get(call))
        except ray_exceptions.RayError as exc:
            where = f" on {node['host']}" if len(nodes) > 1 else ""
            raise task_error(exc, f"opening the pipeline{where} failed") from None
    return replies


def task_error(exc: BaseException, what: str) -> MattrtError:
    """A Ray failure as a one-line MattrtError: mattrt's own message where one caused it."""
    cause = exc
    for _ in range(8):
        inner = getattr(cause, "cause", None)
        if inner is None or inner is cause:
            break
        cause = inner
    if isinstance(cause, MattrtError):
        return type(cause)(str(cause)) if type(cause).__init__ is Exception.__init__ else MattrtError(str(cause))
    text = str(cause).strip().splitlines()
    last = next((line for line in reversed(text) if line.strip() and not line.startswith(" ")), type(cause).__name__)
    hint = ("; every node needs mattrt (the same version) and its batch extra installed: pip install 'mattrt[batch]'"
            if "No module named 'mattrt" in str(cause) else "")
    return MattrtError(f"{what}: {last}{hint}")


def configure_data(progress: bool) -> Any:
    """Ray Data's settings for a batch job: a failing task fails the job (per-image failures are
    records, so a raising task is a bug), an actor that dies while opening its pipeline is replaced
    up to three times, order is not kept, and the progress display is on or off."""
    context = ray_data.DataContext.get_current()
    context.max_errored_blocks = 0
    context.max_consecutive_actor_init_deaths = 3
    context.execution_options.preserve_order = False
    context.print_on_execution_start = False
    context.enable_progress_bars = progress
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled"
    return context


__all__ = ["actor_nodes", "check_reachable", "configure_data", "connected", "probe_nodes", "runtime_env",
           "split_address", "task_error"]
