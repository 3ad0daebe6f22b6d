"""A Ray cluster on this machine for tests: `ray start --head` plus worker nodes, stopped by
killing only its own processes.

`ray stop` is never used: it signals every Ray process of the machine (it matches process names
such as raylet, gcs_server, ray::), so it would also stop another test's or a user's cluster.
Each `ray start` runs in a session of its own (start_new_session); every daemon and worker
process of that node stays in that session (Ray gives workers process groups of their own, but
not sessions), so the cluster's processes are exactly those of its sessions. Ports are free ones
(the client server's too: two clusters on one machine would otherwise share port 10001), the
temp dir is the cluster's own, and token authentication is pinned with a fresh token (the test
process needs the same RAY_AUTH_MODE / RAY_AUTH_TOKEN to connect: `environment`).

Ray registers nodes under the machine's address, not 127.0.0.1 (ray-project/ray#26293): the
cluster listens on the host's network, which the token guards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (session id, command line) of every live process (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z":  # a zombie is gone already
                continue
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(entry)] = (int(fields[3]), command.strip())
        except (OSError, ValueError, IndexError):
            continue
    return table


class LocalCluster:
    def __init__(self, temp_dir: Path, *, head_cpus: int = 1, worker_cpus: tuple[int, ...] = (1,),
                 object_store_mb: int = 200, env: dict | None = None):
        self.temp_dir = Path(temp_dir)
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.object_store = str(object_store_mb * 2**20)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.environment = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                            "RAY_USAGE_STATS_ENABLED": "0"}
        self.env = {**os.environ, **(env or {}), **self.environment}
        self.sessions: list[int] = []  # one per `ray start`: its id is that CLI's pid
        self.node_sessions: dict[str, int] = {}  # "head", "worker0", ... -> session

    def _ray_start(self, args: list[str], name: str) -> None:
        log = self.temp_dir / f"{name}.log"
        with open(log, "w") as stream:
            process = subprocess.Popen([RAY, "start", *args], stdout=stream, stderr=subprocess.STDOUT, env=self.env,
                                       start_new_session=True)
        self.sessions.append(process.pid)
        self.node_sessions[name] = process.pid
        if process.wait(timeout=180) != 0:
            raise RuntimeError(f"ray start ({name}) failed: {log.read_text()[-3000:]}")

    def start(self) -> "LocalCluster":
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        common = [f"--temp-dir={self.temp_dir}", "--disable-usage-stats", f"--object-store-memory={self.object_store}"]
        try:
            self._ray_start(["--head", f"--port={self.port}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
                             "--include-dashboard=false", f"--ray-client-server-port={free_port()}", *common], "head")
            for index, cpus in enumerate(self.worker_cpus):
                self._ray_start([f"--address={self.address}", f"--num-cpus={cpus}", "--num-gpus=0", *common],
                                f"worker{index}")
        except BaseException:
            self.stop()
            raise
        return self

    def processes(self) -> dict[int, str]:
        """This cluster's live processes: in its sessions, or naming its temp dir."""
        return {pid: command for pid, (session, command) in process_table().items()
                if session in self.sessions or str(self.temp_dir) in command}

    def stop(self, grace: float = 5.0) -> list[int]:
        """SIGTERM the raylets, then everything but the GCS, then the GCS (`ray stop`'s order), each
        followed by SIGKILL after `grace` seconds; returns the processes left (none, normally)."""
        steps = [lambda c: "raylet" in c.split(" ")[0], lambda c: "gcs_server" not in c, lambda c: True]
        for select in steps:
            targets = [pid for pid, command in self.processes().items() if select(command)]
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and set(targets) & set(self.processes()):
                time.sleep(0.1)
            for pid in set(targets) & set(self.processes()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        return sorted(self.processes())
