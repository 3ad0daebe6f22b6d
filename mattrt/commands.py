"""Core subcommands: `mattrt models`, `mattrt doctor`, `mattrt demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from mattrt import availability
from mattrt.errors import MattrtError
from mattrt.lazy import lazy_import
from mattrt.runtime import backends

# Bound lazily: registering the commands must stay cheap (`mattrt --help` imports no torch).
models = lazy_import("mattrt.models")
synthetic = lazy_import("mattrt.calibration.synthetic")
demo = lazy_import("mattrt.demo")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list registered models, their stages and parameter counts")
    p.add_argument("--params", action="store_true", help="build each model and count its parameters per stage")
    p.add_argument("--all", action="store_true", help="include reduced test/synthetic variants")
    p.set_defaults(run=run_models)

    p = subparsers.add_parser("doctor", help="report what this machine has (Python, torch, onnxruntime, CUDA, TensorRT, CuPy, Triton)")
    p.set_defaults(run=run_doctor)

    p = subparsers.add_parser(
        "demo", help="the main job end to end on synthetic 4K scenes: export (FP32, INT8), Triton repository and "
                     "server, matting, metrics and latency in report.html / report.json"
    )
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default: demo-output)")
    p.add_argument("--count", type=int, default=1, help="number of synthetic 4K scenes (default: 1)")
    p.add_argument("--size", default="3840x2160", help="image size WxH (default: 3840x2160, 4K)")
    p.add_argument("--model", default="aim_synthetic",
                   help="registered model (default: aim_synthetic, trained on synthetic scenes: not for photographs)")
    p.add_argument("--checkpoint", type=Path, default=None, help="weights for --model (e.g. the authors' checkpoint)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads of the in-process runs (default: backend's)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --out")
    p.set_defaults(run=run_demo)


def run_models(args: argparse.Namespace) -> int:
    names = models.list_models(include_variants=args.all)
    rows = []
    for name in names:
        settings = models.get_settings(name)
        row = [name, " -> ".join(settings.stages), settings.fusion]
        if args.params:
            model = models.create_model(name)
            per_stage = model.stage_parameters()
            row.append(f"{model.num_parameters() / 1e6:.2f}M")
            row.append(", ".join(f"{k} {v / 1e6:.2f}M" for k, v in per_stage.items()))
        rows.append(row)
    header = ["model", "stages", "fusion"] + (["params", "per stage"] if args.params else [])
    _print_table(header, rows)
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    rows = []
    for name in availability.probe_names():
        result = availability.probe(name)
        rows.append([name, "found" if result.found else "missing", result.version or "-", result.detail])
    _print_table(["component", "status", "version", "detail"], rows)
    print()
    rows = [
        [row["backend"], row["device"], "usable" if row["usable"] else "missing", row["precisions"], row["artifacts"],
         row["missing"] or "-"]
        for row in backends.describe_backends()
    ]
    _print_table(["backend", "device", "status", "precisions", "runs", "missing"], rows)
    try:
        choice = backends.choose_auto()
        print(f"\n--backend auto: {choice.reason}")
    except MattrtError as exc:
        print(f"\n--backend auto: {exc}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    return demo.run_demo(args.out, count=args.count, size=synthetic.parse_size(args.size), model=args.model,
                         checkpoint=args.checkpoint, threads=args.threads, overwrite=args.overwrite)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
