"""`mattrt models` (what models are registered) and `mattrt doctor` (what this machine can run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mattrt import availability
from mattrt.commands.command import Command
from mattrt.deploy.choice import choose_auto
from mattrt.engines.backends import describe_backends
from mattrt.errors import MattrtError
from mattrt.models import create_model, get_settings, list_models
from mattrt.models.imported import imported_root, list_imported


def add_models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", action="store_true", help="build each model and count its parameters per stage")
    p.add_argument("--all", action="store_true", help="include reduced test/synthetic variants")
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="where imported models live (default: $MATTRT_CACHE, else ~/.cache/mattrt)")


def run_models(args: argparse.Namespace) -> int:
    rows = []
    for name in list_models(include_variants=args.all):
        settings = get_settings(name)
        row = [name, " -> ".join(settings.stages), settings.fusion]
        if args.params:
            model = create_model(name)
            per_stage = model.stage_parameters()
            row.append(f"{model.num_parameters() / 1e6:.2f}M")
            row.append(", ".join(f"{k} {v / 1e6:.2f}M" for k, v in per_stage.items()))
        rows.append(row)
    header = ["model", "stages", "fusion"] + (["params", "per stage"] if args.params else [])
    print_table(header, rows)
    print_imported(args.cache_dir)
    return 0


def print_imported(cache_dir: Path | None) -> None:
    """The imported models (`mattrt import`, `mattrt fetch`): name, input, source and licence."""
    models, damaged = list_imported(cache_dir)
    print(f"\nimported models ({imported_root(cache_dir)}): {len(models) or 'none'}"
          + ("" if models or damaged else "; add one with `mattrt import CARD` or `mattrt fetch isnet`"))
    if models:
        rows = []
        for model in models:
            card = model.card
            size = f"{card.input.size[0]}x{card.input.size[1]}" if card.input.size else "dynamic"
            rows.append([model.name, f"{size} {card.input.fit}", f"{model.size / 1e6:.1f} MB",
                         model.sha256[:12], card.source, card.license])
        print_table(["model", "input", "graph", "sha256", "source", "licence"], rows)
    for name, reason in damaged:
        print(f"  {name}: DAMAGED: {reason}")


def run_doctor(args: argparse.Namespace) -> int:
    rows = []
    for name in availability.probe_names():
        result = availability.probe(name)
        rows.append([name, "found" if result.found else "missing", result.version or "-", result.detail])
    print_table(["component", "status", "version", "detail"], rows)
    print()
    rows = [
        [row["backend"], row["device"], "usable" if row["usable"] else "missing", row["precisions"], row["artifacts"],
         row["missing"] or "-"]
        for row in describe_backends()
    ]
    print_table(["backend", "device", "status", "precisions", "runs", "missing"], rows)
    try:
        print(f"\n--backend auto: {choose_auto().reason}")
    except MattrtError as exc:
        print(f"\n--backend auto: {exc}")
    return 0


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


COMMANDS = {
    "models": Command(add_models_arguments, run_models),
    "doctor": Command(lambda p: None, run_doctor),
}
