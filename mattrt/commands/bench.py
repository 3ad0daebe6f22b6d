"""`mattrt bench`: the benchmark job (jobs/bench/) from the command line."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mattrt.commands.arguments import add_deployment_arguments, whole_number
from mattrt.commands.command import Command
from mattrt.jobs.bench.plan import QUICK_MODEL, QUICK_REPEATS, QUICK_RESOLUTIONS, RESULTS_DIR, BenchOptions
from mattrt.jobs.bench.report import run_bench
from mattrt.models.checkpoints import parse_checkpoint

DESCRIPTION = (
    "Latency (p50/p90/p99/mean/std, warm-up excluded), throughput and peak memory, per stage and end to end, "
    "of every backend present against the authors' resize-the-whole-image way and a whole-image onnxruntime "
    "session (what rembg does), with SAD against exact synthetic alpha. Variants run interleaved in one "
    "process. Writes JSON, CSV and PNG plots to --out."
)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    add_deployment_arguments(p, several=True, source_required=False, help_overrides={  # bench defaults to aim_synthetic
        "backend": "backends to run (default: every registered backend; absent ones are reported skipped)",
        "precision": "precisions to run (default: each backend's; torch on cpu: fp32; --quick: torch fp32, "
                     "onnxruntime fp32 and int8)",
        "threads": "torch/onnxruntime intra-op thread counts to sweep (default: the cores this process may use)",
        "device": "devices to run (default: every device each backend runs on; absent ones are skipped)",
    })
    p.add_argument("--quick", action="store_true",
                   help=f"small run (under 2 minutes on a 2-core CPU with a warm artifact cache): {QUICK_MODEL}, "
                        f"{' and '.join(QUICK_RESOLUTIONS)}, {QUICK_REPEATS} repeats")
    p.add_argument("--resolutions", nargs="+", metavar="RES",
                   help="image sizes: 1080p, 4K, 8K, 360p, 540p, 720p, 1440p or WxH (default: 1080p 4K 8K)")
    p.add_argument("--tiles", nargs="+", type=whole_number(1, "tile size"), metavar="T",
                   help="detail tile sizes (default: the model's); the first is used across backends and "
                        "resolutions, all of them in the sweep")
    p.add_argument("--batches", nargs="+", type=whole_number(1, "tile batch"), metavar="B",
                   help="tiles per detail call (default: 4, or a TensorRT plan's preferred batch)")
    p.add_argument("--sweep-backends", nargs="+", metavar="NAME",
                   help="backends whose tile/batch/thread sweep runs (fp32, at the largest resolution; "
                        "default: torch with --quick, else every tiled backend)")
    p.add_argument("--repeats", type=whole_number(1, "repeats"), help="measured rounds (default: 5; --quick: 3)")
    p.add_argument("--warmup", type=whole_number(0, "warm-up rounds"),
                   help="unmeasured rounds first (default: 1)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the authors' and the whole-image onnxruntime baselines")
    p.add_argument("--triton-url", metavar="HOST:PORT", help="a running mattrt Triton server to include as a variant")
    p.add_argument("--out", type=Path, metavar="DIR", help=f"results folder (default: {RESULTS_DIR})")
    p.add_argument("--name", metavar="NAME", help="file name stem (default: bench-<quick|full>-<devices>-<date>)")
    p.add_argument("--overwrite", action="store_true", help="replace result files of the same name")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_const", const=True, help="always show progress")
    progress.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                          help="never show progress")
    p.set_defaults(progress=None)


def bench_options(args: argparse.Namespace) -> BenchOptions:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchOptions)}
    return BenchOptions(**{**values, "checkpoint": parse_checkpoint(args.checkpoint)})


def run(args: argparse.Namespace) -> int:
    return run_bench(bench_options(args))


COMMANDS = {"bench": Command(add_bench_arguments, run, DESCRIPTION)}
