"""`mattrt triton-repo` (write a Triton model repository) and `mattrt serve` (run Triton over it)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from mattrt.commands.arguments import command_log, non_negative_int, positive_float, positive_int
from mattrt.commands.command import Command
from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.sources import model_source
from mattrt.deploy.steps import GraphsFromSource, PrecisionFromGraphs
from mattrt.engines.backends import run_precisions
from mattrt.errors import InputError
from mattrt.models.checkpoints import parse_checkpoint
from mattrt.serving.processes import ServerExit
from mattrt.serving.repository import (
    CPU_STAGE_BACKENDS,
    DEFAULT_MAX_PIXELS,
    TARGETS,
    RepositoryOptions,
    build_repository,
)
from mattrt.serving.server import KEY_ENV, KEY_HEADER, LOOPBACK, ServerError, ServerOptions
from mattrt.serving.supervisor import Supervisor, SupervisorOptions


def add_triton_repo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export", type=Path, nargs="?", metavar="DIR", help="export directory written by `mattrt export`")
    p.add_argument("--model", metavar="NAME", help="a registered or imported model instead of DIR: exported or "
                                                   "normalised (and made --precision) once through the artifact cache")
    p.add_argument("--checkpoint", action="append", metavar="PATH|PART=PATH", help="weights for --model")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="artifact cache for --model (default: $MATTRT_CACHE, else ~/.cache/mattrt)")
    p.add_argument("--out", type=Path, required=True, metavar="REPO", help="model repository folder (created if missing)")
    p.add_argument("--target", choices=TARGETS, default="cpu", help="cpu (onnxruntime in Python models, default) or gpu (TensorRT plans)")
    p.add_argument("--name", metavar="N", help="pipeline model name (default: the exported model's name)")
    p.add_argument("--instances", type=positive_int, default=1, metavar="K",
                   help="instances per stage model (CPU: each gets cores // K intra-op threads; default 1)")
    p.add_argument("--max-batch", type=positive_int, metavar="B", help="stage max batch (default: the export's)")
    p.add_argument("--backend", choices=CPU_STAGE_BACKENDS,
                   help="cpu target: what the stage models run on (default onnxruntime; openvino: OpenVINO, with "
                        "bf16 where the serving CPU has it)")
    p.add_argument("--precision", choices=run_precisions(), default="fp32",
                   help="fp32 (default), fp16, int8 (the graphs of that precision), bf16 (--backend openvino: the fp32 "
                        "graphs in bfloat16)")
    p.add_argument("--plans", type=Path, metavar="DIR", help="gpu target: directory with <stage>.plan files from `mattrt build`")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"largest image the pipeline model accepts, in pixels (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--overwrite", action="store_true", help="replace this model's directories if REPO has them")


def run_triton_repo(args: argparse.Namespace) -> int:
    if (args.export is None) == (args.model is None):
        raise InputError("give an export directory (DIR) or a registered model (--model NAME)")
    if args.model is None and (args.checkpoint or args.cache_dir):
        raise InputError("--checkpoint and --cache-dir apply to --model; an export directory carries its weights")
    export = args.export
    if args.model is not None:
        log = command_log(args)
        cache = ArtifactCache(args.cache_dir, log=log)
        source = model_source(args.model, checkpoint=parse_checkpoint(args.checkpoint), cache_dir=args.cache_dir)
        graphs = GraphsFromSource(source, cache=cache, log=log)
        export = PrecisionFromGraphs(graphs, args.precision, cache=cache)().directory
    options = RepositoryOptions(
        target=args.target, name=args.name, instances=args.instances, max_batch=args.max_batch,
        precision=args.precision, backend=args.backend, plans=args.plans, max_pixels=args.max_pixels,
        overwrite=args.overwrite,
    )
    build_repository(export, args.out, options)
    return 0


TRITON_REPO_DESCRIPTION = (
    "From an export directory's manifest (or a registered model, exported through the artifact cache): N_<stage> "
    "models (CPU: Python models on onnxruntime; GPU: tensorrt_plan with dynamic batching, warmup and CUDA graphs) "
    "and N, a Python BLS model that runs the tiled pipeline on one image of any size (raw UINT8 H x W x 3 or "
    "encoded PNG/JPEG/WebP bytes)."
)
SERVE_DESCRIPTION = (
    "Starts tritonserver (from the nvidia-pytriton wheel or --tritonserver), waits until the models are "
    "ready, prints the endpoints as a JSON line, and supervises it: a crashed server, a dead or hung model stub "
    "process (found by process watch and a canary request; Triton 2.51 keeps saying ready then), or shared "
    "memory grown past its budget by an oversized request gets a new server on the same ports, with bounded "
    "back-off; after --max-restarts failures within --restart-window it exits 1 with the log tail. Each "
    "transition is a JSON line; GET /ready on the status endpoint answers 200 only while serving works "
    "(/status: JSON, /metrics: Prometheus counters). On Ctrl-C or SIGTERM: from the signal on new requests are "
    "refused (\"server is stopping\"), requests in flight finish within --drain-seconds, and the exit is reported "
    "as it was (a crash while stopping exits 1; a second signal stops at once). Binds to 127.0.0.1 unless "
    f"--host; model control is off; the repository, shared-memory, trace and logging APIs need the header "
    f"'{KEY_HEADER}' (gRPC: 'triton-grpc-protocol-{KEY_HEADER}') with the key from --key-file, ${KEY_ENV}, or a "
    "key generated per run into a 0600 file (its path is printed, never the key; Triton 2.51 takes the key on "
    "its command line, where local users can read it)."
)


def add_serve_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("repository", type=Path, metavar="REPO")
    s.add_argument("--host", default=LOOPBACK, help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the server)")
    s.add_argument("--http-port", type=int, metavar="P", help="default: a free port")
    s.add_argument("--grpc-port", type=int, metavar="P", help="default: a free port")
    s.add_argument("--metrics-port", type=int, metavar="P", help="default: a free port")
    s.add_argument("--tritonserver", type=Path, metavar="PATH", help="tritonserver binary (default: the nvidia-pytriton wheel's)")
    s.add_argument("--key-file", type=Path, metavar="FILE", help=f"file holding the API key (default: ${KEY_ENV}, else a generated key file)")
    s.add_argument("--ready-timeout", type=float, default=180.0, metavar="S", help="seconds to wait for the models (default 180)")
    s.add_argument("--drain-seconds", type=positive_int, default=ServerOptions.drain_seconds, metavar="S",
                   help=f"on a stop signal, how long requests in flight may take to finish (default {ServerOptions.drain_seconds})")
    s.add_argument("--http-host", metavar="ADDR", help="address of Triton's HTTP endpoint (default: --host); "
                   "--host 0.0.0.0 --http-host 127.0.0.1 exposes gRPC only (Triton 2.51's HTTP JSON parser crashes "
                   "on some bodies; gRPC has no such crash)")
    s.add_argument("--require-key-for-inference", action="store_true",
                   help="inference needs the key too (clients pass it: --backend triton reads $MATTRT_TRITON_KEY); "
                        "requests without it are refused before Triton parses their body")
    s.add_argument("--status-port", type=int, metavar="P",
                   help="port of mattrt's status endpoint on --host: GET /ready, /live, /status, /metrics "
                        "(default: a free port, printed in the ready line)")
    defaults = SupervisorOptions()
    s.add_argument("--canary-seconds", type=float, default=defaults.canary_seconds, metavar="S",
                   help=f"seconds between canary requests (a tiny image per pipeline instance; default "
                        f"{defaults.canary_seconds:g}; 0: none, then only dead stub processes are found)")
    s.add_argument("--max-restarts", type=non_negative_int, default=defaults.max_restarts, metavar="N",
                   help="restarts after failures within --restart-window before giving up (default "
                        f"{defaults.max_restarts})")
    s.add_argument("--restart-window", type=positive_float, default=defaults.restart_window, metavar="S",
                   help=f"seconds over which --max-restarts counts (default {defaults.restart_window:g})")
    s.add_argument("--restart-delay", type=positive_float, default=defaults.restart_delay, metavar="S",
                   help=f"wait before the first restart, doubled per failure in the window up to "
                        f"{defaults.restart_delay_max:g} s (default {defaults.restart_delay:g})")
    s.add_argument("--shm-budget-mib", type=non_negative_int, metavar="N",
                   help="restart the server (gracefully, when no request runs) once a pipeline instance's shared "
                        "memory holds more than N MiB (default: what the repository's --max-pixels needs; 0: never)")


def _supervisor_options(args: argparse.Namespace) -> SupervisorOptions:
    if args.canary_seconds < 0:
        raise InputError(f"--canary-seconds must be 0 (no canary) or more, got {args.canary_seconds}")
    if args.status_port is not None and not 0 < args.status_port < 65536:
        raise InputError(f"--status-port must lie in 1..65535, got {args.status_port}")
    budget = None if args.shm_budget_mib is None else args.shm_budget_mib * 2**20
    return SupervisorOptions(canary_seconds=args.canary_seconds, max_restarts=args.max_restarts,
                             restart_window=args.restart_window, restart_delay=args.restart_delay,
                             shm_budget=budget, status_port=args.status_port)


def run_serve(args: argparse.Namespace) -> int:
    """Serve and supervise until a stop signal; then drain and report how the server ended
    (serving/server.py, serving/supervisor.py)."""
    if args.ready_timeout <= 0:
        raise InputError(f"--ready-timeout must be positive, got {args.ready_timeout}")
    options = ServerOptions(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        binary=args.tritonserver, key_file=args.key_file, ready_timeout=args.ready_timeout,
        drain_seconds=args.drain_seconds, http_host=args.http_host,
        restrict_inference=args.require_key_for_inference,
    )
    supervisor = Supervisor(args.repository, options, _supervisor_options(args))

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        try:
            supervisor.start()
            supervisor.run()  # returns only by a stop signal, or raises ServerError once it gives up
        except KeyboardInterrupt:
            pass
        supervisor.stopping()
        server = supervisor.server
        if server is None or server.process is None or server.exit is not None:  # between two servers
            print(json.dumps({"status": "stopping", "drain_seconds": options.drain_seconds, "http_ready": False}),
                  flush=True)
            ended = ServerExit(None, "stopped", "stopped while no tritonserver ran (it was being restarted)")
        else:
            try:
                ready_off = server.begin_stop()
                print(json.dumps({"status": "stopping", "drain_seconds": options.drain_seconds,
                                  "http_ready": not ready_off}), flush=True)
                ended = server.stop()
            except KeyboardInterrupt:  # a second signal: no more waiting
                ended = server.kill()
        print(json.dumps(ended.record()), file=sys.stderr, flush=True)
        if not ended.clean:
            raise ServerError(f"{ended.message}; log tail:\n{server.log_tail()}")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        supervisor.close()


COMMANDS = {
    "triton-repo": Command(add_triton_repo_arguments, run_triton_repo, TRITON_REPO_DESCRIPTION),
    "serve": Command(add_serve_arguments, run_serve, SERVE_DESCRIPTION),
}
