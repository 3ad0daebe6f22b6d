"""`mattrt eval`: matte error metrics of predicted mattes against ground truth, over folders."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mattrt.commands.command import Command
from mattrt.errors import InputError
from mattrt.imageio import list_images, read_alpha, read_matte
from mattrt.imagewrite import write_bytes
from mattrt.metrics import evaluate, mean_metrics

DESCRIPTION = ("Pair files by stem (name without suffix) in --pred and --gt, print per-image metrics "
               "and their mean. Whole-image metrics always; with --trimap also over the unknown band "
               "(trimap value 128). SAD, Grad and Conn are divided by 1000 (Deep Image Matting "
               "convention). Exit status 1 when a pair is missing or an image fails.")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", type=Path, required=True, help="folder of predicted mattes (PNG/JPEG/WebP/TIFF, 8 or 16 bit)")
    p.add_argument("--gt", type=Path, required=True, help="folder of ground-truth mattes")
    p.add_argument("--trimap", type=Path, default=None, help="folder of trimaps (0/128/255) for unknown-band metrics")
    p.add_argument("--pred-channel", default="auto",
                   help="plane of the predictions to score: 'auto' (default: the alpha channel of files that have "
                        "one, such as `infer --output rgba` cutouts; the grey plane otherwise; colour files without "
                        "alpha are refused), 'alpha', or a channel index")
    p.add_argument("--json", type=Path, default=None, help="also write per-image results and means to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")


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
            row.update(evaluate(pred, gt, trimap))
        except InputError as exc:
            row["error"] = str(exc)
        rows.append(row)

    labels = ("name", "error", "pred_channel", "gt_channel")
    scored = [{k: v for k, v in r.items() if k not in labels} for r in rows if "error" not in r]
    means = mean_metrics(scored)
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


COMMANDS = {"eval": Command(add_eval_arguments, run_eval, DESCRIPTION)}
