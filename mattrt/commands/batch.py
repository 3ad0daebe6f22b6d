"""`mattrt batch`: `mattrt infer` as one job on Ray Data (jobs/batch/), on this machine's cores or
a Ray cluster; each worker opens the deployment chain (deploy/) once."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mattrt.commands.arguments import add_deployment_arguments, add_server_arguments, positive_float, positive_int
from mattrt.commands.command import Command
from mattrt.commands.infer import add_image_arguments, add_pipeline_arguments, pipeline_request
from mattrt.jobs.batch import BatchOptions, run_batch
from mattrt.jobs.infer import InferOptions
from mattrt.models.checkpoints import parse_checkpoint

DESCRIPTION = (
    "Matte many images as one job on Ray Data: on this machine's cores (default) or a Ray cluster (--address). "
    "Each worker holds one pipeline, reads its images itself and writes OUT/<stem>_<output>.png once; "
    "OUT/manifest.parquet records every image (status, timings, output, settings, error), and a rerun skips what "
    "it records as done with the same settings."
)


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders, glob patterns, list files (.txt: one path or URI per line; .csv or "
                        ".parquet: a 'path' column) or URIs that pyarrow opens (s3://, gs://, file://, hdfs://)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output folder (created if missing); on a cluster a folder every node shares")
    ray = p.add_argument_group("Ray")
    ray.add_argument("--address", metavar="HOST:PORT",
                     help="a running Ray cluster (its head node's address, `auto`, or ray://HOST:PORT); default: "
                          "start Ray on this machine's cores for the job")
    ray.add_argument("--workers", type=positive_int, metavar="N",
                     help="actors, one pipeline each (default: as many as the nodes' CPUs (and GPUs) hold)")
    ray.add_argument("--cpus-per-worker", type=positive_float, default=1.0, metavar="C",
                     help="CPUs Ray reserves per actor; also its threads unless --threads is given (default 1)")
    ray.add_argument("--gpus-per-worker", type=positive_float, metavar="G",
                     help="GPUs per actor (default: 1 with --device cuda, else 0; Ray hides GPUs from actors "
                          "that reserve none)")
    ray.add_argument("--images-per-task", type=positive_int, default=1, metavar="K",
                     help="images per Ray task, the unit Ray runs again after a lost worker (default 1)")
    add_deployment_arguments(p, source_required=False,
                             help_overrides={"threads": "intra-op threads per actor (default: --cpus-per-worker)"})
    add_server_arguments(p)
    add_pipeline_arguments(p)
    add_image_arguments(p)
    p.add_argument("--overwrite", action="store_true",
                   help="redo every image and replace existing outputs (default: keep what the manifest records "
                        "as done with the same settings; never replace other files)")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_const", const=True,
                          help="always show Ray Data's progress (default: when stderr is a terminal; where stdout "
                               "is not one, Ray Data logs it every 10 s)")
    progress.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                          help="never show Ray Data's progress")
    p.set_defaults(progress=None)


def _absolute(path):
    return None if path is None else Path(path).absolute()


def run_batch_command(args: argparse.Namespace) -> int:
    # Workers run in other folders (and on other machines): every path they open is made absolute.
    checkpoint = parse_checkpoint(args.checkpoint)
    if isinstance(checkpoint, dict):
        checkpoint = {part: str(_absolute(path)) for part, path in checkpoint.items()}
    elif checkpoint is not None:
        checkpoint = str(_absolute(checkpoint))
    args.artifacts, args.cache_dir = _absolute(args.artifacts), _absolute(args.cache_dir)
    background = args.background
    if background is not None and Path(background).is_file():
        background = str(_absolute(background))
    cpus = args.cpus_per_worker
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if args.device == "cuda" else 0.0)
    # An actor runs as many threads as it reserves CPUs; with a server (--url) the server does the work.
    threads = args.threads if args.url is not None else args.threads or max(1, int(cpus))
    request = pipeline_request(args, threads=threads, checkpoint=checkpoint)
    options = InferOptions(output=args.output, background=background, overwrite=args.overwrite,
                           bit_depth=args.bit_depth, input_alpha=args.input_alpha, max_pixels=args.max_pixels)
    batch = BatchOptions(address=args.address, workers=args.workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                         images_per_task=args.images_per_task, progress=args.progress)
    summary = run_batch(request, args.inputs, args.out, options, batch,
                        log=lambda message: print(f"mattrt batch: {message}", file=sys.stderr))
    for failure in summary["failures"]:
        error = failure["error"]
        where = "" if error.startswith(failure["input"]) else f"{failure['input']}: "
        print(f"mattrt batch: failed: {where}{error}", file=sys.stderr)
    print(json.dumps({k: summary[k] for k in ("images", "processed", "skipped", "failed", "identical", "seconds",
                                              "job_seconds", "images_per_second", "workers", "nodes", "by_host",
                                              "seconds_by_step", "manifest")}))
    return 1 if summary["failed"] or not (summary["processed"] or summary["skipped"]) else 0


COMMANDS = {"batch": Command(add_batch_arguments, run_batch_command, DESCRIPTION)}
