"""`mattrt export` and `mattrt lint`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mattrt.lazy import lazy_import

# Bound lazily: registering the commands must stay cheap (`mattrt --help` imports no torch).
cache = lazy_import("mattrt.export.cache")
checkpoints = lazy_import("mattrt.models.checkpoints")
exporter = lazy_import("mattrt.export.exporter")
lint = lazy_import("mattrt.runtime.lint")
precision = lazy_import("mattrt.calibration.precision")



def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model's stages and fusion to ONNX with a manifest, parity checks and a TensorRT lint",
        description=(
            "Export one ONNX graph per network stage (fixed spatial size, dynamic batch 1..N) plus the "
            "fusion graph, check each against PyTorch with onnxruntime, simplify with onnxslim where parity "
            "holds, lint for TensorRT and write DIR/manifest.json. Nothing is written when a check fails."
        ),
    )
    p.add_argument("model", help="registered model name (see `mattrt models --all`)")
    p.add_argument("--out", required=True, type=Path, help="output directory (must not exist unless --force)")
    p.add_argument(
        "--checkpoint", action="append", metavar="PATH|PART=PATH",
        help="weights: one file, or PART=PATH once per part for models assembled from several networks",
    )
    p.add_argument("--semantic-size", type=int, help="semantic canvas side S (default: the model's setting)")
    p.add_argument("--tile", type=int, help="detail tile side T (default: the model's setting)")
    p.add_argument("--max-batch", type=int, default=None, help="largest batch the graphs accept (default: 8)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    p.add_argument("--force", action="store_true", help="replace DIR if it holds an earlier export")
    p.add_argument("--no-simplify", action="store_true", help="keep the exporter's graphs (skip onnxslim)")
    p.add_argument(
        "--allow-lint-errors", action="store_true",
        help="write the graphs even if the TensorRT lint fails (e.g. for onnxruntime-only deployments)",
    )
    precision.add_precision_arguments(p)
    p.set_defaults(run=run_export)

    p = subparsers.add_parser(
        "lint",
        help="check exported ONNX graphs against what TensorRT 10.x/11.x's ONNX parser accepts",
        description="Lint an export directory (the graphs its manifest names) or .onnx files; exit code 1 on any problem.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="DIR|FILE", help="export directories or .onnx files")
    p.set_defaults(run=run_lint)

    p = subparsers.add_parser(
        "cache",
        help="list or clear the artifact cache (exports and engines made for --model runs)",
        description="The artifact cache holds what `--model NAME` runs on backends that need exported graphs or "
                    "built engines: made once, reused while model, weights, sizes, precision, mattrt version and "
                    "the backend's identity stay the same. Default: $MATTRT_CACHE, else ~/.cache/mattrt.",
    )
    actions = p.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="entries with model, precision, backend, size and integrity")
    listing.add_argument("--cache-dir", type=Path, metavar="DIR", help="cache directory")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=run_cache_list)
    clearing = actions.add_parser("clear", help="delete entries (all, or one model's)")
    clearing.add_argument("--cache-dir", type=Path, metavar="DIR", help="cache directory")
    clearing.add_argument("--model", metavar="NAME", help="only this model's entries")
    clearing.set_defaults(run=run_cache_clear)


def run_export(args: argparse.Namespace) -> int:

    exporter.export_model(
        args.model,
        args.out,
        checkpoint=checkpoints.parse_checkpoint(args.checkpoint),
        semantic_size=args.semantic_size,
        tile_size=args.tile,
        max_batch=exporter.DEFAULT_MAX_BATCH if args.max_batch is None else args.max_batch,
        opset=exporter.DEFAULT_OPSET if args.opset is None else args.opset,
        force=args.force,
        simplify=not args.no_simplify,
        allow_lint_errors=args.allow_lint_errors,
    )
    precision.apply_precision_arguments(args, args.out)
    return 0


def run_lint(args: argparse.Namespace) -> int:
    failed = False
    for path in args.paths:
        report = lint.lint_directory(path)
        print(f"{path}: {report.summary()}")
        failed |= not report.passed
    return 1 if failed else 0


def run_cache_list(args: argparse.Namespace) -> int:
    store = cache.ArtifactCache(args.cache_dir, log=None)
    rows = store.entries()
    if args.json:
        print(json.dumps({"cache_dir": str(store.root), "entries": rows}, indent=2))
        return 0
    print(f"cache: {store.root} ({len(rows)} entries)")
    for row in rows:
        state = "ok" if row["intact"] else "DAMAGED (rebuilt on next use)"
        print(f"  {row['name']}  {row['bytes'] / 2**20:.1f} MiB  {row['created']}  {state}")
    return 0


def run_cache_clear(args: argparse.Namespace) -> int:
    store = cache.ArtifactCache(args.cache_dir, log=None)
    removed = store.clear(model=args.model)
    print(f"cache: removed {len(removed)} entries from {store.root}")
    return 0
