"""`mattrt precision` (FP16 / INT8 graphs added to an export) and `mattrt fidelity` (how much
each precision changes the matte through the full pipeline)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mattrt.calibration.fidelity import fidelity_report, write_figure
from mattrt.commands.arguments import add_precision_arguments, apply_precision_arguments
from mattrt.commands.command import Command
from mattrt.errors import InputError
from mattrt.imagewrite import write_bytes

PRECISION_DESCRIPTION = ("Convert every stage graph of an export directory to FP16 (mixed precision, FP32 where "
                    "measurement says it is needed) and/or INT8 (explicit symmetric Q/DQ for TensorRT, calibrated "
                    "on the runtime's real stage inputs), lint them for TensorRT and list them in the manifest. "
                    "INT8 also writes <stage>.int8_cpu.onnx from the same calibration: an asymmetric U8S8 Q/DQ graph "
                    "that onnxruntime fuses into integer kernels, which the onnxruntime backend runs for "
                    "--precision int8. `mattrt export --precision ...` does the same right after exporting.")
FIDELITY_DESCRIPTION = ("Run every precision of an export directory through the tiled pipeline (onnxruntime) on "
                    "synthetic samples with exact ground truth, or on a folder (images/ + alpha/ for ground "
                    "truth), and report SAD, MSE, gradient and connectivity against the ground truth and delta "
                    "SAD %, max |difference| and PSNR against FP32, as JSON and a PNG of error maps.")


def add_precision_command_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", type=Path, help="export directory (written by `mattrt export`)")
    p.add_argument("--force", action="store_true", help="replace graphs of these precisions that already exist")
    add_precision_arguments(p, required=True)


def run_precision(args: argparse.Namespace) -> int:
    apply_precision_arguments(args, args.directory)
    return 0


def add_fidelity_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", type=Path, help="export directory")
    p.add_argument("--data", default="synthetic:24", metavar="synthetic[:N]|DIR",
                   help="evaluation images (default synthetic:24, data.synthetic seed 3, which neither "
                        "training nor default calibration uses)")
    p.add_argument("--seed", type=int, default=None, help="seed of synthetic data (default 3)")
    p.add_argument("--precisions", default=None,
                   help="comma-separated subset of fp32,fp16,int8,int8_cpu (default: every one the export has; int8 "
                        "is the TensorRT-form graph, int8_cpu onnxruntime's CPU graph)")
    p.add_argument("--json", type=Path, default=None, help="write the report to this JSON file")
    p.add_argument("--figure", type=Path, default=None, help="write a PNG of error maps")
    p.add_argument("--batch", type=int, default=4, help="detail tiles per call (default 4)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --figure files")


def run_fidelity(args: argparse.Namespace) -> int:
    for target in (args.json, args.figure):
        if target is not None and target.exists() and not args.overwrite:
            raise InputError(f"{target} already exists; pass --overwrite to replace it")
    precisions = None if args.precisions is None else [p.strip() for p in args.precisions.split(",") if p.strip()]
    report, images, alphas = fidelity_report(args.directory, args.data, precisions=precisions, batch=args.batch,
                                             threads=args.threads, seed=args.seed, log=print)
    _print_fidelity(report)
    if args.json is not None:
        text = json.dumps(report, indent=2, allow_nan=False) + "\n"
        write_bytes(args.json, text.encode("utf-8"), overwrite=args.overwrite)
        print(f"wrote {args.json}")
    if args.figure is not None:
        if args.figure.suffix.lower() != ".png":
            raise InputError(f"--figure {args.figure}: the figure is a PNG; use a .png name")
        write_figure(report, images, alphas, args.figure)
        print(f"wrote {args.figure}")
    return 0


def _print_fidelity(report: dict) -> None:
    header = ["precision", "SAD", "MSE", "Grad", "Conn", "dSAD%", "SAD->FP32%", "max|diff|", "PSNR", "seconds"]
    table = []
    for precision, entry in report["precisions"].items():
        truth = entry.get("vs_gt_mean", {})
        close = entry.get("vs_fp32", {})

        def number(value, form):
            return "-" if value is None else format(value, form)

        table.append([precision, number(truth.get("sad"), ".3f"), number(truth.get("mse"), ".5f"),
                      number(truth.get("grad"), ".3f"), number(truth.get("conn"), ".3f"),
                      number(close.get("delta_sad_percent"), "+.3f"), number(close.get("sad_to_fp32_percent"), ".3f"),
                      number(close.get("max_abs"), ".2e"), number(close.get("psnr_mean"), ".1f"),
                      number(entry.get("seconds"), ".1f")])
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    print(f"{report['model']}: {report['images']} image(s), {report['data']}")
    for line in [header, *table]:
        print("  ".join(str(c).rjust(w) for c, w in zip(line, widths)))
    for precision, entry in report["precisions"].items():
        if "target" in entry:
            target = entry["target"]
            print(f"{precision}: |delta SAD| <= {target['abs_delta_sad_percent_at_most']}%: "
                  f"{'met' if target['met'] else 'NOT met'}")


COMMANDS = {
    "precision": Command(add_precision_command_arguments, run_precision, PRECISION_DESCRIPTION),
    "fidelity": Command(add_fidelity_arguments, run_fidelity, FIDELITY_DESCRIPTION),
}
