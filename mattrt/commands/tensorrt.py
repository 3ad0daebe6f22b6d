"""`mattrt lint` (can TensorRT's ONNX parser take these graphs?) and `mattrt build` (TensorRT
plans from an export directory): the commands of the TensorRT engine family (engines/tensorrt/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mattrt.commands.arguments import whole_number
from mattrt.commands.command import Command
from mattrt.engines.tensorrt.build import PROFILES, build_plans, describe_profiles
from mattrt.engines.tensorrt.lint import lint_directory
from mattrt.manifest import PRECISIONS

LINT_DESCRIPTION = "Lint an export directory (the graphs its manifest names) or .onnx files; exit code 1 on any problem."


def add_lint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=Path, metavar="DIR|FILE", help="export directories or .onnx files")


def run_lint(args: argparse.Namespace) -> int:
    failed = False
    for path in args.paths:
        report = lint_directory(path)
        print(f"{path}: {report.summary()}")
        failed |= not report.passed
    return 1 if failed else 0


def build_description() -> str:
    return (
            "Build one TensorRT plan per stage from the export's graph at the chosen precision (the graph sets "
            "the precision: FP32, FP16 graph, INT8 Q/DQ graph), with one optimization profile over batch "
            "1..max_batch at the stage's fixed size (DLA profiles: one fixed batch, shorter batches padded). Plans whose graph, TensorRT version, GPU, profile and "
            "options are unchanged are reused; others are rebuilt with a message. Writes OUT/<stage>-<precision>.plan, "
            "OUT/tensorrt-<precision>.json and a copy of the manifest. Profiles: "
            + "; ".join(describe_profiles())
    )


def add_build_arguments(p: argparse.ArgumentParser) -> None:
    p.description = build_description()
    p.add_argument("export_dir", type=Path, metavar="DIR", help="export directory written by `mattrt export`")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="which graph to build (default: fp32)")
    p.add_argument("--profile", choices=tuple(PROFILES), default="server",
                   help="deployment target (default: server)")
    p.add_argument("--workspace", type=whole_number(1, "--workspace", unit="MiB"), metavar="MB",
                   help="builder workspace limit in MiB (default: the profile's; server: the whole device memory)")
    p.add_argument("--timing-cache", type=Path, metavar="PATH",
                   help="timing cache to load and save (default: OUT/timing.cache)")
    p.add_argument("--version-compatible", action="store_true",
                   help="plans later TensorRT versions of the same major (and the lean runtime) can run; may be slower")
    p.add_argument("--hardware-compatible", action="store_true",
                   help="plans any Ampere-or-newer GPU can run (not on Jetson); may be slower")
    p.add_argument("--out", type=Path, metavar="DIR", help="plans directory (default: DIR/tensorrt)")


def run_build(args: argparse.Namespace) -> int:
    metadata = build_plans(
        args.export_dir,
        args.out,
        precision=args.precision,
        profile=args.profile,
        workspace_mb=args.workspace,
        timing_cache=args.timing_cache,
        version_compatible=args.version_compatible,
        hardware_compatible=args.hardware_compatible,
    )
    for note in metadata["notes"]:
        print(f"mattrt build: note: {note}")
    print(json.dumps({
        "plans": {name: stage["plan"] for name, stage in metadata["stages"].items()},
        "tensorrt": metadata["tensorrt"],
        "gpu": metadata["gpu"],
        "precision": metadata["precision"],
        "profile": metadata["profile"]["name"],
    }))
    return 0


COMMANDS = {
    "lint": Command(add_lint_arguments, run_lint, LINT_DESCRIPTION),
    "build": Command(add_build_arguments, run_build),
}
