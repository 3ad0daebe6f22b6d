"""Subcommands `mattrt eval` (matte error metrics over folders), `mattrt synth` (synthetic data),
`mattrt precision` (FP16 / INT8 graphs of an export) and `mattrt fidelity` (their accuracy).

Registering is cheap: NumPy, SciPy and Pillow are imported inside the run functions.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mattrt.errors import InputError
from mattrt.imageio import list_images, read_alpha, read_matte, write_bytes
from mattrt.lazy import lazy_import

# Bound lazily: registering the commands must stay cheap (`mattrt --help` imports no torch or onnx).
fidelity = lazy_import("mattrt.calibration.fidelity")
metrics = lazy_import("mattrt.calibration.metrics")
precision = lazy_import("mattrt.calibration.precision")
synthetic = lazy_import("mattrt.calibration.synthetic")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="compare predicted alpha mattes with ground truth (SAD, MSE, MAD, Grad, Conn, PSNR)",
        description="Pair files by stem (name without suffix) in --pred and --gt, print per-image metrics "
                    "and their mean. Whole-image metrics always; with --trimap also over the unknown band "
                    "(trimap value 128). SAD, Grad and Conn are divided by 1000 (Deep Image Matting "
                    "convention). Exit status 1 when a pair is missing or an image fails.")
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted mattes (PNG/JPEG/WebP/TIFF, 8 or 16 bit)")
    p.add_argument("--gt", type=Path, required=True, help="folder of ground-truth mattes")
    p.add_argument("--trimap", type=Path, default=None, help="folder of trimaps (0/128/255) for unknown-band metrics")
    p.add_argument("--pred-channel", default="auto",
                   help="plane of the predictions to score: 'auto' (default: the alpha channel of files that have "
                        "one, such as `infer --output rgba` cutouts; the grey plane otherwise; colour files without "
                        "alpha are refused), 'alpha', or a channel index")
    p.add_argument("--json", type=Path, default=None, help="also write per-image results and means to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(run=run_eval)

    p = subparsers.add_parser(
        "synth", help="generate synthetic images with exact alpha, foreground and background",
        description="Write COUNT samples cycling through the AIM-500 types (salient opaque, salient "
                    "transparent/meticulous, non-salient): images/, alpha/ (16-bit), fg/, bg/, trimaps/ "
                    "with one stem per sample, and manifest.json. The same seed gives identical files.")
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
    p.set_defaults(run=run_synth)

    p = subparsers.add_parser(
        "precision", help="add FP16 and/or INT8 (Q/DQ, calibrated) graphs to an export directory",
        description="Convert every stage graph of an export directory to FP16 (mixed precision, FP32 where "
                    "measurement says it is needed) and/or INT8 (explicit symmetric Q/DQ for TensorRT, calibrated "
                    "on the runtime's real stage inputs), lint them for TensorRT and list them in the manifest. "
                    "INT8 also writes <stage>.int8_cpu.onnx from the same calibration: an asymmetric U8S8 Q/DQ graph "
                    "that onnxruntime fuses into integer kernels, which the onnxruntime backend runs for "
                    "--precision int8. `mattrt export --precision ...` does the same right after exporting.")
    p.add_argument("directory", type=Path, help="export directory (written by `mattrt export`)")
    p.add_argument("--force", action="store_true", help="replace graphs of these precisions that already exist")

    precision.add_precision_arguments(p, required=True)
    p.set_defaults(run=run_precision)

    p = subparsers.add_parser(
        "fidelity", help="compare an export's FP32, FP16 and INT8 graphs through the full pipeline",
        description="Run every precision of an export directory through the tiled pipeline (onnxruntime) on "
                    "synthetic samples with exact ground truth, or on a folder (images/ + alpha/ for ground "
                    "truth), and report SAD, MSE, gradient and connectivity against the ground truth and delta "
                    "SAD %, max |difference| and PSNR against FP32, as JSON and a PNG of error maps.")
    p.add_argument("directory", type=Path, help="export directory")
    p.add_argument("--data", default="synthetic:24", metavar="synthetic[:N]|DIR",
                   help="evaluation images (default synthetic:24, calibration.synthetic seed 3, which neither "
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
    p.set_defaults(run=run_fidelity)


def run_synth(args: argparse.Namespace) -> int:
    kinds = synthetic.KINDS if args.kinds is None else [k.strip() for k in args.kinds.split(",") if k.strip()]
    manifest = synthetic.write_dataset(args.out, args.count, synthetic.parse_size(args.size), args.seed, kinds=kinds,
                             trimap_radius=args.trimap_radius, overwrite=args.overwrite,
                             progress=not args.no_progress)
    width, height = manifest["size"]
    print(f"wrote {manifest['count']} samples of {width}x{height} to {args.out} (manifest.json lists them)")
    return 0


def run_precision(args: argparse.Namespace) -> int:
    precision.apply_precision_arguments(args, args.directory)
    return 0


def run_fidelity(args: argparse.Namespace) -> int:


    for target in (args.json, args.figure):
        if target is not None and target.exists() and not args.overwrite:
            raise InputError(f"{target} already exists; pass --overwrite to replace it")
    precisions = None if args.precisions is None else [p.strip() for p in args.precisions.split(",") if p.strip()]
    report, images, alphas = fidelity.fidelity_report(args.directory, args.data, precisions=precisions, batch=args.batch,
                                             threads=args.threads, seed=args.seed, log=print)
    _print_fidelity(report)
    if args.json is not None:
        text = json.dumps(report, indent=2, allow_nan=False) + "\n"
        write_bytes(args.json, text.encode("utf-8"), overwrite=args.overwrite)
        print(f"wrote {args.json}")
    if args.figure is not None:
        if args.figure.suffix.lower() != ".png":
            raise InputError(f"--figure {args.figure}: the figure is a PNG; use a .png name")
        fidelity.write_figure(report, images, alphas, args.figure)
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


def run_eval(args: argparse.Namespace) -> int:


    channel = args.pred_channel if args.pred_channel in ("alpha", "auto") else _channel_index(args.pred_channel)
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise InputError(f"--json {args.json} already exists; pass --overwrite to replace it")
    gt_files = _by_stem(list_images(args.gt), args.gt)
    pred_files = _by_stem(list_images(args.pred), args.pred, known=gt_files)
    trimap_files = _by_stem(list_images(args.trimap), args.trimap) if args.trimap is not None else None
    if not pred_files and not gt_files:
        raise InputError(f"no images found in {args.pred} or {args.gt}")
    if args.json is not None:
        inputs = [*pred_files.values(), *gt_files.values(), *(trimap_files or {}).values()]
        clash = next((p for p in inputs if p.resolve() == args.json.resolve()), None)
        if clash is not None:
            raise InputError(f"--json {args.json} is the input {clash}; inputs are never overwritten: "
                             "choose another --json")

    stems = sorted(set(pred_files) & set(gt_files))
    missing = {
        "pred": sorted(set(gt_files) - set(pred_files)),
        "gt": sorted(set(pred_files) - set(gt_files)),
    }
    if trimap_files is not None:
        missing["trimap"] = sorted(s for s in stems if s not in trimap_files)

    rows: list[dict] = []
    for stem in stems:
        row: dict = {"name": stem}
        try:
            pred, row["pred_channel"] = read_matte(pred_files[stem], channel=channel)
            gt, row["gt_channel"] = read_matte(gt_files[stem])
            if pred.shape != gt.shape:
                raise InputError(f"size mismatch: pred is {pred.shape[1]}x{pred.shape[0]}, "
                                 f"gt is {gt.shape[1]}x{gt.shape[0]}")
            trimap = None
            if trimap_files is not None and stem in trimap_files:
                trimap = read_alpha(trimap_files[stem])
                if trimap.shape != gt.shape:
                    raise InputError(f"size mismatch: trimap is {trimap.shape[1]}x{trimap.shape[0]}, "
                                     f"gt is {gt.shape[1]}x{gt.shape[0]}")
            row.update(metrics.evaluate(pred, gt, trimap))
        except InputError as exc:
            row["error"] = str(exc)
        rows.append(row)

    labels = ("name", "error", "pred_channel", "gt_channel")
    scored = [{k: v for k, v in r.items() if k not in labels} for r in rows if "error" not in r]
    means = metrics.mean_metrics(scored)
    columns = ["sad", "mse", "mad", "grad", "conn", "psnr"]
    if trimap_files is not None:
        columns += [c + "_trimap" for c in ("sad", "mse", "mad", "grad", "conn")]
    _print_results(rows, means, columns)

    failures = [r for r in rows if "error" in r]
    for side in ("pred", "gt"):
        with_alpha = sum(r.get(f"{side}_channel") == "alpha" for r in rows)
        if with_alpha and not (side == "pred" and args.pred_channel == "alpha"):
            hint = " (--pred-channel 0 scores the first colour channel instead)" if side == "pred" else ""
            files = "prediction file(s)" if side == "pred" else "ground-truth file(s)"
            print(f"scored the alpha channel of {with_alpha} {files}{hint}")
    for kind, names in missing.items():
        if names:
            print(f"missing {kind} for {len(names)} image(s): {', '.join(names)}")
    for row in failures:
        print(f"error in {row['name']}: {row['error']}")

    if args.json is not None:
        report = {
            "pred": str(args.pred),
            "gt": str(args.gt),
            "trimap": None if args.trimap is None else str(args.trimap),
            "conventions": ("alphas in [0, 1]; sad, grad, conn divided by 1000; mse, mad means over the "
                            "pixels counted; psnr in dB for peak 1; *_trimap over the unknown band "
                            "(trimap 128); null: infinite PSNR (exact match) or an empty unknown band"),
            "images": [{k: _json_number(v) for k, v in r.items()} for r in rows],
            "mean": {k: _json_number(v) for k, v in means.items()},
            "evaluated": len(scored),
            "missing": missing,
            "failed": [r["name"] for r in failures],
        }
        text = json.dumps(report, indent=2, allow_nan=False) + "\n"
        write_bytes(args.json, text.encode("utf-8"), overwrite=args.overwrite)
        print(f"wrote {args.json}")
    return 1 if failures or any(missing.values()) else 0


def _channel_index(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--pred-channel must be a channel index or 'alpha', got {text!r}") from None


# `mattrt infer` names its outputs <stem>_alpha.png / <stem>_rgba.png.
INFER_SUFFIXES = ("_alpha", "_rgba")


def _by_stem(files: list[Path], folder: Path, known: dict[str, Path] | None = None) -> dict[str, Path]:
    """Files by stem; with `known` (the ground truth), a stem that only matches it once an
    infer suffix is removed is keyed without the suffix."""

    found: dict[str, Path] = {}
    for path in files:
        stem = path.stem
        if known is not None and stem not in known:
            stem = next((stem[: -len(s)] for s in INFER_SUFFIXES if stem.endswith(s) and stem[: -len(s)] in known), stem)
        if stem in found:
            raise InputError(f"{folder}: {found[stem].name} and {path.name} both stand for image {stem!r}; "
                             "keep one file per image")
        found[stem] = path
    return found


def _json_number(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _format(name: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    if name.startswith(("mse", "mad")):
        return f"{value:.5f}"
    return f"{value:.3f}" if name.startswith(("sad", "grad", "conn")) else f"{value:.2f}"


def _print_results(rows: list[dict], means: dict[str, float], columns: list[str]) -> None:
    header = ["image"] + [c.replace("_trimap", "-T") for c in columns]
    table = []
    for row in rows:
        if "error" in row:
            table.append([row["name"], "error"] + [""] * (len(columns) - 1))
        else:
            table.append([row["name"]] + [_format(c, row.get(c, math.nan)) for c in columns])
    if any("error" not in r for r in rows):
        table.append([f"mean ({sum('error' not in r for r in rows)})"]
                     + [_format(c, means.get(c, math.nan)) for c in columns])
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for i, line in enumerate([header, *table]):
        print("  ".join(str(c).ljust(w) if j == 0 else str(c).rjust(w) for j, (c, w) in enumerate(zip(line, widths))).rstrip())
        if i == 0 or (i == len(table) - 1 and table and table[-1][0].startswith("mean")):
            print("  ".join("-" * w for w in widths))
