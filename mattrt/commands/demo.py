"""`mattrt demo`: the main job end to end (jobs/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mattrt.commands.command import Command
from mattrt.data.synthetic import parse_size
from mattrt.jobs.demo import DEMO_MODEL, run_demo


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default: demo-output)")
    p.add_argument("--count", type=int, default=1, help="number of synthetic 4K scenes (default: 1)")
    p.add_argument("--size", default="3840x2160", help="image size WxH (default: 3840x2160, 4K)")
    p.add_argument("--model", default=DEMO_MODEL,
                   help=f"registered model (default: {DEMO_MODEL}, trained on synthetic scenes: not for photographs)")
    p.add_argument("--checkpoint", type=Path, default=None, help="weights for --model (e.g. the authors' checkpoint)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads of the in-process runs (default: backend's)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --out")


def run(args: argparse.Namespace) -> int:
    return run_demo(args.out, count=args.count, size=parse_size(args.size), model=args.model,
                    checkpoint=args.checkpoint, threads=args.threads, overwrite=args.overwrite)


COMMANDS = {"demo": Command(add_demo_arguments, run)}
