"""`mattrt cache list|clear`: the artifact cache (deploy/cache.py) that --model runs fill."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mattrt.commands.command import Command
from mattrt.deploy.cache import ArtifactCache

DESCRIPTION = ("The artifact cache holds what `--model NAME` runs on backends that need exported graphs, "
               "precision variants or built engines: each made once, reused while model, weights, sizes, precision, "
               "mattrt version and the backend's identity stay the same. Default: $MATTRT_CACHE, else ~/.cache/mattrt.")


def add_cache_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="cache_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="entries with model, step (graphs, a precision, a backend's build), "
                                              "size and integrity")
    listing.add_argument("--cache-dir", type=Path, metavar="DIR", help="cache directory")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(action_run=run_cache_list)
    clearing = actions.add_parser("clear", help="delete entries (all, or one model's)")
    clearing.add_argument("--cache-dir", type=Path, metavar="DIR", help="cache directory")
    clearing.add_argument("--model", metavar="NAME", help="only this model's entries")
    clearing.set_defaults(action_run=run_cache_clear)


def run_cache_list(args: argparse.Namespace) -> int:
    store = ArtifactCache(args.cache_dir, log=None)
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
    store = ArtifactCache(args.cache_dir, log=None)
    removed = store.clear(model=args.model)
    print(f"cache: removed {len(removed)} entries from {store.root}")
    return 0


def run_cache(args: argparse.Namespace) -> int:
    return args.action_run(args)


COMMANDS = {"cache": Command(add_cache_arguments, run_cache, DESCRIPTION)}
