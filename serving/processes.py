"""The processes behind a Triton server, as the operating system sees them: free ports, the
server's process tree, its memory, its Python backend stub processes, the Python backend's
shared-memory regions, and how an exit status (with the server's log) says the server ended.

Shared memory: every server start gets its own region prefix (`new_shm_prefix`:
mattrt_serve_<pid of the process that started it>_<random>_, passed to the Python backend as
shm-region-prefix-name), so a glob on it finds exactly that server's regions, and regions that a
killed server left (a SIGKILL of its process group kills the stubs, which otherwise remove them)
can be removed without touching other servers' (the backend's default prefix is shared by every
Triton on the machine). The backend creates regions world-readable (Boost forces 0644 whatever
the umask): `protect_regions` makes them 0600.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"

SHM_DIR = "/dev/shm"


PYTHON_SHM_PREFIX = "triton_python_backend_shm_region_"  # the Python backend's default
SHM_PREFIX_BASE = "mattrt_serve_"  # + <pid of the process that started the server>_<random>_
STUB_EXECUTABLE = "triton_python_backend_stub"
# The stub's command line (python_backend stub_launcher.cc, r24.10): argv[2] the region's name,
# argv[8] the model instance it runs (<model>_<group>_<k>).
STUB_REGION_ARG, STUB_INSTANCE_ARG = 2, 8


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


def _mapped_regions(pid: int, prefixes: tuple[str, ...]) -> set[Path]:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return set()
    found = set()
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if path.startswith(tuple(f"{SHM_DIR}/{prefix}" for prefix in prefixes)):
            found.add(Path(path.removesuffix(" (deleted)")))
    return found


def python_backend_regions(pid: int) -> set[Path]:
    """The Python backend's /dev/shm regions (mattrt's prefixes or the default) mapped by process
    `pid` and its descendants."""
    found: set[Path] = set()
    for member in process_tree(pid):
        found |= _mapped_regions(member, (SHM_PREFIX_BASE, PYTHON_SHM_PREFIX))
    return found


def new_shm_prefix() -> str:
    """A region prefix for one server start (module docstring)."""
    return f"{SHM_PREFIX_BASE}{os.getpid()}_{secrets.token_hex(4)}_"


def prefix_regions(prefix: str) -> list[Path]:
    """The /dev/shm regions whose names start with `prefix` (one server start's)."""
    if not prefix.startswith(SHM_PREFIX_BASE) or "/" in prefix:
        raise ValueError(f"not a server's region prefix: {prefix!r}")  # never glob other servers' regions
    return sorted(Path(SHM_DIR).glob(f"{prefix}*"))


def remove_regions(prefix: str) -> list[Path]:
    """Unlink one server start's regions; the ones removed."""
    removed = []
    for region in prefix_regions(prefix):
        try:
            region.unlink()
        except OSError:
            continue
        removed.append(region)
    return removed


def protect_regions(prefix: str) -> int:
    """chmod 0600 the prefix's regions that other users could read; how many were changed."""
    changed = 0
    for region in prefix_regions(prefix):
        try:
            if stat.S_IMODE(region.stat().st_mode) & 0o077:
                region.chmod(0o600)
                changed += 1
        except OSError:
            continue  # removed meanwhile
    return changed


def allocated_bytes(path: Path) -> int:
    """Memory a /dev/shm file holds (its allocated blocks; 0 once it is gone)."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def sweep_dead_starters() -> list[Path]:
    """Remove regions under SHM_PREFIX_BASE whose starting process (the pid in the name) is gone
    and that no process of this user still maps: the leftovers of a server killed together with
    the `mattrt serve` that started it. Regions of live starters, of other users and of other
    prefixes are never touched."""
    uid = os.getuid()
    candidates = []
    for region in Path(SHM_DIR).glob(f"{SHM_PREFIX_BASE}*"):
        pid = region.name.removeprefix(SHM_PREFIX_BASE).split("_", 1)[0]
        try:
            owner = region.stat().st_uid
        except OSError:
            continue
        if pid.isdigit() and owner == uid and not pid_alive(int(pid)):
            candidates.append(region)
    if not candidates:
        return []
    mapped: set[Path] = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            mapped |= _mapped_regions(int(entry.name), (SHM_PREFIX_BASE,))
    removed = []
    for region in candidates:
        if region not in mapped:
            try:
                region.unlink()
                removed.append(region)
            except OSError:
                pass
    return removed


@dataclass(frozen=True)
class StubProcess:
    """One Python backend stub process: the model instance it runs, as /proc shows it."""

    pid: int
    instance: str
    state: str  # /proc/<pid>/stat's state letter: "Z" a dead stub nobody reaped
    region: Path | None

    @property
    def dead(self) -> bool:
        return self.state in ("Z", "X")


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, D, T, Z, ...); None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def stub_processes(server_pid: int) -> dict[str, StubProcess]:
    """Instance name -> the stub process running it, among the server's descendants."""
    found = {}
    for pid in process_tree(server_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) <= STUB_INSTANCE_ARG or not argv[0].endswith(STUB_EXECUTABLE.encode()):
            continue
        instance = argv[STUB_INSTANCE_ARG].decode(errors="replace")
        region = argv[STUB_REGION_ARG].decode(errors="replace").lstrip("/")
        found[instance] = StubProcess(pid, instance, process_state(pid) or "X",
                                      Path(SHM_DIR) / region if region else None)
    return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


__all__ = ["LOOPBACK", "PYTHON_SHM_PREFIX", "SHM_DIR", "SHM_PREFIX_BASE", "STUB_EXECUTABLE", "ServerExit",
           "StubProcess", "allocated_bytes", "classify_exit", "free_port", "new_shm_prefix", "pid_alive", "port_free",
           "prefix_regions", "process_state", "process_tree", "protect_regions", "python_backend_regions",
           "remove_regions", "rss_bytes", "stub_processes", "sweep_dead_starters"]
