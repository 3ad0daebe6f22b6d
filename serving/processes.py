"""The processes behind a Triton server, as the operating system sees them: free ports, the
server's process tree, its memory, the Python backend's shared-memory regions, and how an exit
status (with the server's log) says the server ended."""

from __future__ import annotations

import re
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"

SHM_DIR = "/dev/shm"


PYTHON_SHM_PREFIX = "triton_python_backend_shm_region_"


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As servers bind: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


@dataclass(frozen=True)
class ServerExit:
    """How a tritonserver process ended (the module docstring's stopping promise)."""

    code: int | None  # exit status; negative: the signal that ended it
    outcome: str  # "stopped", "drain-expired", "crashed" or "killed"
    message: str
    still_running: int = 0  # pipeline instances still running requests when the drain time ran out

    @property
    def clean(self) -> bool:
        return self.outcome == "stopped"

    def record(self) -> dict:
        return {"status": self.outcome, "exit_code": self.code, "message": self.message,
                "still_running": self.still_running}


_IN_FLIGHT = re.compile(r"Found (\d+) model versions that have in-flight inferences")


_EXIT_TIMEOUT = "Exit timeout expired"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def classify_exit(code: int | None, log: str, drain_seconds: int, *, stopping: bool, killed: bool = False) -> ServerExit:
    """What an exit status and the server's log say about how it ended. Triton 2.51 exits with
    status 1 and "Exit timeout expired" when its exit timeout ran out: a clean stop when it then
    found no request in flight (idle client connections hold its HTTP side until the timeout)."""
    when = "while stopping" if stopping else "while serving"
    if killed:
        return ServerExit(code, "killed", f"tritonserver did not exit within {drain_seconds} s of draining plus its "
                                          f"exit timeout and was killed with its stub processes")
    if code == 0:
        return ServerExit(code, "stopped" if stopping else "crashed",
                          "tritonserver stopped: every request in flight was answered" if stopping
                          else "tritonserver exited with status 0 on its own")
    if code is not None and code < 0:
        return ServerExit(code, "crashed", f"tritonserver crashed {when}: ended by {_signal_name(code)} "
                                           f"(exit status {code})")
    if code == 1 and stopping and _EXIT_TIMEOUT in log:
        counts = _IN_FLIGHT.findall(log)
        in_flight = int(counts[-1]) if counts else None
        if in_flight == 0:
            return ServerExit(code, "stopped", "tritonserver stopped when its exit timeout ran out: no request was in "
                                               "flight (idle client connections kept it waiting)")
        what = f"{in_flight} model version(s)" if in_flight is not None else "some models"
        return ServerExit(code, "drain-expired", f"tritonserver's exit timeout ran out while {what} still had "
                                                 "requests in flight; those requests failed")
    return ServerExit(code, "crashed", f"tritonserver exited {when} with status {code}")


def python_backend_regions(pid: int) -> set[Path]:
    """The Python backend's /dev/shm regions mapped by process `pid` and its descendants."""
    found: set[Path] = set()
    for member in process_tree(pid):
        try:
            maps = Path(f"/proc/{member}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
            if path.startswith(f"{SHM_DIR}/{PYTHON_SHM_PREFIX}"):
                found.add(Path(path.removesuffix(" (deleted)")))
    return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


__all__ = ["LOOPBACK", "PYTHON_SHM_PREFIX", "SHM_DIR", "ServerExit", "classify_exit", "free_port", "port_free",
           "process_tree", "python_backend_regions", "rss_bytes"]
