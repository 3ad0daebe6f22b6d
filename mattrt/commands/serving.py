"""`mattrt triton-repo` (write a Triton model repository) and `mattrt serve` (run Triton over it)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from mattrt.commands.arguments import command_log, positive_int
from mattrt.commands.command import Command
from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.sources import ModelSource
from mattrt.deploy.steps import GraphsFromSource, PrecisionFromGraphs
from mattrt.engines.backends import run_precisions
from mattrt.errors import InputError
from mattrt.models.checkpoints import parse_checkpoint
from mattrt.serving.repository import CPU_STAGE_BACKENDS, DEFAULT_MAX_PIXELS, TARGETS, RepositoryOptions, build_repository
from mattrt.serving.server import KEY_ENV, KEY_HEADER, LOOPBACK, ServerError, ServerOptions, TritonServer


def add_triton_repo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export", type=Path, nargs="?", metavar="DIR", help="export directory written by `mattrt export`")
    p.add_argument("--model", metavar="NAME", help="a registered model instead of DIR: exported (and made --precision) "
                                                   "once through the artifact cache")
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
        graphs = GraphsFromSource(ModelSource(args.model, checkpoint=parse_checkpoint(args.checkpoint)), cache=cache,
                                  log=log)
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
    "ready, prints the endpoints, and stops on Ctrl-C or SIGTERM: from the signal on new requests are refused "
    "(\"server is stopping\"), requests in flight finish within --drain-seconds, and the exit is reported as it "
    "was (a crash while stopping exits 1; a second signal stops at once). Binds to 127.0.0.1 unless --host; model "
    f"control is off; the repository, shared-memory, trace and logging APIs need the header '{KEY_HEADER}' "
    f"(gRPC: 'triton-grpc-protocol-{KEY_HEADER}') with the key from --key-file, ${KEY_ENV}, or a generated key "
    "file (its path is printed, never the key)."
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


def run_serve(args: argparse.Namespace) -> int:
    """Serve until a stop signal; then drain and report how the server ended (serving/server.py)."""
    if args.ready_timeout <= 0:
        raise InputError(f"--ready-timeout must be positive, got {args.ready_timeout}")
    options = ServerOptions(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        binary=args.tritonserver, key_file=args.key_file, ready_timeout=args.ready_timeout,
        drain_seconds=args.drain_seconds,
    )
    server = TritonServer(args.repository, options)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        try:
            server.start()
            print(json.dumps({
                "status": "ready",
                **server.endpoints,
                "restricted_apis_key_header": KEY_HEADER,
                "key_from": server.key_source,
                "log": str(server.log_path),
            }), flush=True)
            while server.running:
                time.sleep(0.5)
            ended = server.stop()
            raise ServerError(f"{ended.message}; log tail:\n{server.log_tail()}")
        except KeyboardInterrupt:
            pass
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
        server.close()


COMMANDS = {
    "triton-repo": Command(add_triton_repo_arguments, run_triton_repo, TRITON_REPO_DESCRIPTION),
    "serve": Command(add_serve_arguments, run_serve, SERVE_DESCRIPTION),
}
