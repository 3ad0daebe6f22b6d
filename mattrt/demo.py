"""`mattrt demo`: the main job end to end on data that has a ground truth.

1. `mattrt synth`: synthetic images of the three AIM-500 types with their exact alpha
   (a seed the committed model never saw in training);
2. `mattrt infer`: the tiled pipeline with the trained synthetic-domain model (aim_synthetic)
   writes one alpha matte per image;
3. `mattrt eval`: SAD / MSE / gradient / connectivity against the ground truth;
4. a contact sheet (image, ground truth, prediction, error, cutout over a checkerboard) and a
   summary JSON.
Every step goes through the same functions as the commands it names.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mattrt.calibration.metrics import evaluate, mean_metrics
from mattrt.calibration.synthetic import write_dataset
from mattrt.errors import InputError
from mattrt.imageio import quantise, read_alpha, read_image, write_bytes, write_rgb
from mattrt.runtime.foreground import composite, estimate_foreground
from mattrt.runtime.infer import InferOptions, output_path, run_inference
from mattrt.runtime.pipeline import Pipeline

DEMO_MODEL = "aim_synthetic"
DEMO_SEED = 7  # training used seed 0, the held-out check seed 2
SHEET_ROW_HEIGHT = 160
SHEET_COLUMNS = ("image", "ground truth", "prediction", "|error| x 4", "cutout over checkerboard")


def run_demo(out: Path, *, count: int = 6, size: tuple[int, int] = (416, 320), model: str = DEMO_MODEL,
             overwrite: bool = False, progress: bool | None = None) -> int:
    out = Path(out)
    if (out / "summary.json").exists() and not overwrite:
        raise InputError(f"{out} already holds a demo run; pass --overwrite to replace it or choose another --out")
    started = time.perf_counter()

    print(f"[1/4] synthetic data: {count} images of {size[0]}x{size[1]} (seed {DEMO_SEED}) -> {out / 'data'}")
    dataset = write_dataset(out / "data", count, size, DEMO_SEED, overwrite=True, progress=progress is not False)

    print(f"[2/4] matting with {model!r} through the tiled pipeline (torch, CPU) -> {out / 'alpha'}")
    pipeline = Pipeline.from_model(model)
    options = InferOptions(output="alpha", overwrite=True, progress=progress)
    inference = run_inference(pipeline, [str(out / "data" / "images")], out / "alpha", options,
                              summary_path=out / "alpha" / "summary.json")
    if inference["failed"]:
        for failure in inference["failures"]:
            print(f"  failed: {failure['input']}: {failure['error']}")
        return 1

    print("[3/4] metrics against the ground truth")
    rows, scores, sheet_rows = [], [], []
    for sample in dataset["samples"]:
        image = read_image(out / "data" / sample["files"]["image"]).rgb
        gt = read_alpha(out / "data" / sample["files"]["alpha"])
        trimap = read_alpha(out / "data" / sample["files"]["trimap"])
        pred = read_alpha(output_path(out / "alpha", Path(sample["files"]["image"]), "alpha"))
        metrics = evaluate(pred, gt, trimap)
        scores.append(metrics)
        rows.append({"id": sample["id"], "kind": sample["kind"], **metrics})
        sheet_rows.append(_sheet_row(image, gt, pred))
    means = mean_metrics(scores)
    _print_metrics(rows, means)

    print(f"[4/4] contact sheet -> {out / 'contact_sheet.png'}")
    sheet = np.concatenate(sheet_rows, axis=0)
    write_rgb(out / "contact_sheet.png", np.concatenate([_header(sheet.shape[1], SHEET_COLUMNS), sheet]), overwrite=True)
    summary = {
        "model": model,
        "checkpoint_sha256": pipeline.spec.checkpoint_sha256,
        "pipeline": inference["pipeline"],
        "data": {"seed": DEMO_SEED, "count": count, "size": list(size)},
        "images": [_finite(row) for row in rows],
        "mean": _finite(means),
        "seconds_per_image": [record["timings"]["total"] for record in inference["images"]],
        "seconds": round(time.perf_counter() - started, 2),
        "contact_sheet_columns": list(SHEET_COLUMNS),
    }
    write_bytes(out / "summary.json", (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode(), overwrite=True)
    print(f"done in {summary['seconds']:.1f} s; summary: {out / 'summary.json'}")
    return 0


def _finite(row: dict) -> dict:
    """JSON has no infinity (PSNR of an exact match): such values become null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _print_metrics(rows: list[dict], means: dict) -> None:
    columns = ["sad", "mse", "grad", "conn", "sad_trimap"]
    print(f"  {'image':<28}" + "".join(f"{c:>12}" for c in columns))
    for row in rows:
        print(f"  {row['id']:<28}" + "".join(f"{row[c]:>12.4f}" for c in columns))
    print(f"  {'mean':<28}" + "".join(f"{means[c]:>12.4f}" for c in columns))


def _sheet_row(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One contact-sheet row: image | GT | prediction | 4 x |error| | cutout over a checkerboard."""

    h, w = gt.shape
    grey = lambda a: np.repeat(quantise(np.clip(a, 0, 1), 8)[..., None], 3, axis=2)  # noqa: E731
    yy, xx = np.mgrid[0:h, 0:w]
    checker = np.where(((yy // 16) + (xx // 16)) % 2 == 0, 0.85, 0.55).astype(np.float32)[..., None].repeat(3, axis=2)
    cutout = composite(estimate_foreground(image, pred), pred, checker, out_dtype=np.uint8)
    panels = [image, grey(gt), grey(pred), grey(4 * np.abs(pred - gt)), cutout]
    row = np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in panels], axis=1)
    return _resize_height(row, SHEET_ROW_HEIGHT)


def _resize_height(rgb: np.ndarray, height: int) -> np.ndarray:
    width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def _header(width: int, labels: tuple[str, ...], height: int = 22) -> np.ndarray:
    """A white strip with one label centred over each of the equally wide columns."""

    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    column = width / len(labels)
    for i, label in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), label)
        draw.text((i * column + (column - (right - left)) / 2, (height - (bottom - top)) / 2 - top), label, fill="black")
    return np.asarray(strip)
