"""`mattrt export`: a registered model's stages and fusion to ONNX graphs and a manifest (the
deployment chain's graphs step, into a folder of the user's), optionally with precision variants;
an imported model's normalised graph and manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

from mattrt.commands.arguments import add_precision_arguments, apply_precision_arguments
from mattrt.commands.command import Command
from mattrt.deploy.sources import CardSource, model_source
from mattrt.deploy.steps import GraphsFromSource
from mattrt.errors import InputError
from mattrt.export.exporter import DEFAULT_MAX_BATCH, DEFAULT_OPSET
from mattrt.models.checkpoints import parse_checkpoint

DESCRIPTION = (
    "Export one ONNX graph per network stage (fixed spatial size, dynamic batch 1..N) plus the "
    "fusion graph, check each against PyTorch with onnxruntime, simplify with onnxslim where parity "
    "holds, lint for TensorRT and write DIR/manifest.json. Nothing is written when a check fails. An imported "
    "model (`mattrt import`, `mattrt fetch`) is written as its normalised graph and manifest (then `mattrt lint DIR`, "
    "`mattrt build DIR`)."
)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered or imported model name (see `mattrt models --all`)")
    p.add_argument("--out", required=True, type=Path, help="output directory (must not exist unless --force)")
    p.add_argument(
        "--checkpoint", action="append", metavar="PATH|PART=PATH",
        help="weights: one file, or PART=PATH once per part for models assembled from several networks",
    )
    p.add_argument("--semantic-size", type=int, help="semantic canvas side S (default: the model's setting)")
    p.add_argument("--tile", type=int, help="detail tile side T (default: the model's setting)")
    p.add_argument("--max-batch", type=int, default=None, help=f"largest batch the graphs accept (default: {DEFAULT_MAX_BATCH})")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    p.add_argument("--force", action="store_true", help="replace DIR if it holds an earlier export")
    p.add_argument("--no-simplify", action="store_true", help="keep the exporter's graphs (skip onnxslim)")
    p.add_argument(
        "--allow-lint-errors", action="store_true",
        help="write the graphs even if the TensorRT lint fails (e.g. for onnxruntime-only deployments)",
    )
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where imported models live (default: $MATTRT_CACHE, else ~/.cache/mattrt)")
    add_precision_arguments(p)


def run_export(args: argparse.Namespace) -> int:
    source = model_source(args.model, checkpoint=parse_checkpoint(args.checkpoint), semantic_size=args.semantic_size,
                          tile_size=args.tile, cache_dir=args.cache_dir)
    if isinstance(source, CardSource) and (args.opset is not None or args.no_simplify or args.allow_lint_errors):
        raise InputError("--opset, --no-simplify and --allow-lint-errors apply to registered models; an imported "
                         "graph keeps its opset, is always normalised with onnxslim, and is written even when "
                         "TensorRT's parser cannot take it (`mattrt lint` and `mattrt build` name what it cannot)")
    GraphsFromSource(
        source,
        out=args.out,
        max_batch=DEFAULT_MAX_BATCH if args.max_batch is None else args.max_batch,
        opset=DEFAULT_OPSET if args.opset is None else args.opset,
        force=args.force,
        simplify=not args.no_simplify,
        allow_lint_errors=args.allow_lint_errors,
    )()
    apply_precision_arguments(args, args.out)
    return 0


COMMANDS = {"export": Command(add_export_arguments, run_export, DESCRIPTION)}
