"""`mattrt synth`: synthetic matting scenes with exact ground truth (data/synthetic.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mattrt.commands.command import Command
from mattrt.data.synthetic import KINDS, parse_size, write_dataset

DESCRIPTION = ("Write COUNT samples cycling through the AIM-500 types (salient opaque, salient "
               "transparent/meticulous, non-salient): images/, alpha/ (16-bit), fg/, bg/, trimaps/ "
               "with one stem per sample, and manifest.json. The same seed gives identical files.")


def add_synth_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--count", type=int, required=True, help="number of samples (>= 1)")
    p.add_argument("--size", default="512x512", help="WIDTHxHEIGHT or one side (default: 512x512)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--kinds", default=None,
                   help="comma-separated subset of salient_opaque,salient_transparent,non_salient (default: all)")
    p.add_argument("--trimap-radius", type=int, default=None,
                   help="unknown-band dilation in pixels for trimaps (default: 1%% of the shorter side)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing set")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run_synth(args: argparse.Namespace) -> int:
    kinds = KINDS if args.kinds is None else [k.strip() for k in args.kinds.split(",") if k.strip()]
    manifest = write_dataset(args.out, args.count, parse_size(args.size), args.seed, kinds=kinds,
                             trimap_radius=args.trimap_radius, overwrite=args.overwrite,
                             progress=not args.no_progress)
    width, height = manifest["size"]
    print(f"wrote {manifest['count']} samples of {width}x{height} to {args.out} (manifest.json lists them)")
    return 0


COMMANDS = {"synth": Command(add_synth_arguments, run_synth, DESCRIPTION)}
