"""The demo's report (jobs/demo.py): what it measured, as report.json and one self-contained
report.html (inline PNG data URIs and SVG charts, no scripts, no external files).

Per photograph: the image, its alpha, the cut-out over a checkerboard and the composite; INT8
against FP32 (mean |difference|, IoU of the alpha > 0.5 masks, for an alpha network also of its
own output before refinement) and Triton against in-process.
Per synthetic scene (exact ground truth): SAD, MSE, gradient and connectivity of each variant,
and the same panels with the ground truth and the error. Latency per variant as a chart.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from mattrt.charts import inline_svg, value_chart
from mattrt.imageio import quantise
from mattrt.metrics import evaluate, mean_metrics
from mattrt.runtime.foreground import composite, estimate_foreground

if TYPE_CHECKING:
    from mattrt.jobs.demo import Demo

VARIANTS = ("triton", "fp32", "int8")
VARIANT_LABELS = {"triton": "Triton FP32 (whole pipeline in the server)", "fp32": "in-process FP32",
                  "int8": "in-process INT8"}
COMPOSITE_BACKGROUND = (0.2, 0.45, 0.85)  # a plain blue: edges show against it
LEVEL = 1 / 255  # one 8-bit level: Triton returns 8-bit alpha
ROW_HEIGHT = 200


# -- the numbers ------------------------------------------------------------------------------------
def build_report(demo: "Demo") -> dict:
    rows = [_image_row(demo, index, item) for index, item in enumerate(demo.images)]
    scenes = [row for row in rows if "metrics" in row]
    report = {
        "model": demo.model,
        "weights": demo.weights,
        "pipeline": _jsonable(demo.pipeline_info),
        "data": {"photographs": list(demo.photos), "scenes": demo.count, "scene_size": list(demo.size)},
        "graphs": {p: {"path": str(g.directory), "cache": _jsonable(g.notes)} for p, g in demo.graphs.items()},
        "server": demo.server_info,
        "images": rows,
        "mean_latency_s": {v: _mean_timings([row["latency_s"][v] for row in rows]) for v in VARIANTS},
        "worst": {
            "triton_vs_in_process_max_abs": max(row["triton_vs_in_process"]["max_abs"] for row in rows),
            "int8_vs_fp32_max_abs": max(row["int8_vs_fp32"]["max_abs"] for row in rows),
            "int8_vs_fp32_min_mask_iou": min(row["int8_vs_fp32"]["mask_iou"] for row in rows),
            "int8_vs_fp32_min_network_mask_iou": min(
                (row["int8_vs_fp32"]["network_mask_iou"] for row in rows if "network_mask_iou" in row["int8_vs_fp32"]),
                default=None),
        },
        "triton_within_one_level": all(row["triton_vs_in_process"]["max_abs"] <= LEVEL + 1e-6 for row in rows),
        "step_seconds": {k: round(v, 3) for k, v in demo.seconds.items()},
        "files": {"mattes": "mattes/<id>_{alpha,cutout,composite}.png", "images": "images/",
                  "repository": "triton-repo/"},
    }
    if scenes:
        report["mean_metrics"] = {v: _finite(mean_metrics([row["metrics"][v] for row in scenes])) for v in VARIANTS}
    return report


def _image_row(demo: "Demo", index: int, item: dict) -> dict:
    triton = demo.triton[item["id"]].alpha
    fp32, int8 = demo.in_process["fp32"][index], demo.in_process["int8"][index]
    row = {
        "id": item["id"], "kind": item["kind"], "size": [int(item["image"].shape[1]), int(item["image"].shape[0])],
        "latency_s": {"triton": {"end_to_end": demo.triton[item["id"]].timings["remote"]},
                      "fp32": dict(fp32.timings), "int8": dict(int8.timings)},
        # Triton answers 8-bit levels: compared with the in-process alpha rounded the same way.
        "triton_vs_in_process": _difference(triton, np.rint(fp32.alpha * 255) / 255),
        "int8_vs_fp32": _difference(int8.alpha, fp32.alpha),
    }
    if demo.pipeline_info.get("semantic_output") == "alpha":
        # The network's own alpha at its input size, before upsampling and refinement: where
        # INT8 is judged (refinement can move a mask near 0.5 either way in soft regions).
        row["int8_vs_fp32"]["network_mask_iou"] = _difference(int8.trimap, fp32.trimap)["mask_iou"]
    if "gt" in item:
        alphas = {"triton": triton, "fp32": fp32.alpha, "int8": int8.alpha}
        row["metrics"] = {k: _finite(evaluate(a, item["gt"], item["trimap"])) for k, a in alphas.items()}
        fp32_sad = row["metrics"]["fp32"]["sad"]
        row["int8_vs_fp32"]["delta_sad_percent"] = (
            100 * (row["metrics"]["int8"]["sad"] - fp32_sad) / fp32_sad if fp32_sad else None)
    return row


def _difference(a: np.ndarray, b: np.ndarray) -> dict:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    mask_a, mask_b = a > 0.5, b > 0.5
    union = int((mask_a | mask_b).sum())
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "pixels_over_one_level": int((diff > LEVEL + 1e-6).sum()),
            "mask_iou": float((mask_a & mask_b).sum() / union) if union else 1.0}


def _mean_timings(rows: list[dict]) -> dict:
    keys = sorted({k for row in rows for k in row})
    return {k: round(float(np.mean([row[k] for row in rows if k in row])), 4) for k in keys}


def _finite(row: dict) -> dict:
    """JSON has no infinity (PSNR of an exact match): such values become null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def print_summary(report: dict) -> None:
    latency = report["mean_latency_s"]
    print("  mean seconds per image: " + ", ".join(f"{VARIANT_LABELS[v]} {latency[v]['end_to_end']:.2f}"
                                                   for v in VARIANTS))
    if "mean_metrics" in report:
        columns = ["sad", "mse", "grad", "conn"]
        print(f"  {'synthetic scenes (mean)':<28}" + "".join(f"{c:>10}" for c in columns))
        for variant in VARIANTS:
            metrics = report["mean_metrics"][variant]
            print(f"  {VARIANT_LABELS[variant][:28]:<28}" + "".join(f"{metrics[c]:>10.4f}" for c in columns))
    worst = report["worst"]
    print(f"  Triton vs in-process FP32: max |alpha difference| {worst['triton_vs_in_process_max_abs'] * 255:.2f}/255; "
          f"INT8 vs FP32: max {worst['int8_vs_fp32_max_abs'] * 255:.2f}/255, "
          f"smallest mask IoU {worst['int8_vs_fp32_min_mask_iou']:.4f}"
          + ("" if worst["int8_vs_fp32_min_network_mask_iou"] is None
             else f" (of the network's own alpha: {worst['int8_vs_fp32_min_network_mask_iou']:.4f})"))


# -- the page ----------------------------------------------------------------------------------------
def render_html(report: dict, demo: "Demo") -> str:
    esc = html.escape
    weights = report["weights"]
    provenance = [f"<b>Weights:</b> {esc(weights['description'])}."]
    if weights.get("source"):
        provenance.append(f"<b>Source:</b> {esc(weights['source'])}. <b>Licence:</b> {esc(weights['license'])}"
                          + (f" ({esc(weights['license_notes'])})" if weights.get("license_notes") else "") + ".")
    if weights.get("graph_sha256"):
        provenance.append(f"ONNX graph SHA-256 {esc(weights['graph_sha256'])}.")
    pipeline = report["pipeline"]
    refine = pipeline.get("refine", {}).get("method") if isinstance(pipeline.get("refine"), dict) else None
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mattrt demo report</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1250px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
        "img{max-width:100%;display:block;margin:4px 0}.note{background:#f4f1e6;padding:.6em;border:1px solid #d8c88a}",
        "</style></head><body><h1>mattrt demo</h1>",
        f"<p class='note'>{' '.join(provenance)}</p>",
        f"<p>{len(report['data']['photographs'])} photograph(s) and {report['data']['scenes']} synthetic scene(s) of "
        f"{report['data']['scene_size'][0]}x{report['data']['scene_size'][1]} with exact alpha; onnxruntime on the CPU"
        + (f"; full-resolution refinement: {esc(str(refine))}" if refine else "")
        + f"; Triton serving the FP32 graphs at {esc(str(report['server'].get('endpoints', {}).get('http', '?')))}.</p>",
        "<h2>Photographs and scenes (alpha through Triton)</h2>",
        *_panels(demo),
    ]
    if "mean_metrics" in report:
        parts += ["<h2>Synthetic scenes: accuracy against the exact alpha (mean)</h2>",
                  _table(["variant", "SAD", "MSE", "gradient", "connectivity"],
                         [[VARIANT_LABELS[v], *(_fmt(m.get(k)) for k in ("sad", "mse", "grad", "conn"))]
                          for v, m in report["mean_metrics"].items()])]
    parts += [
        "<h2>INT8 against FP32, Triton against in-process</h2>",
        "<p>Mask IoU: of the alpha &gt; 0.5 masks, INT8 against FP32; the network's is its own alpha at its input "
        "size, the final one after upsampling and refinement.</p>",
        _table(["image", "INT8 network mask IoU", "INT8 final mask IoU", "INT8 mean |diff|", "INT8 max |diff|", "INT8 delta SAD",
                "Triton max |diff|", "Triton pixels over 1/255"],
               [[esc(r["id"]), _fmt(r["int8_vs_fp32"].get("network_mask_iou")), f"{r['int8_vs_fp32']['mask_iou']:.4f}", f"{r['int8_vs_fp32']['mean_abs'] * 255:.2f}/255",
                 f"{r['int8_vs_fp32']['max_abs'] * 255:.1f}/255",
                 "-" if r["int8_vs_fp32"].get("delta_sad_percent") is None
                 else f"{r['int8_vs_fp32']['delta_sad_percent']:+.2f}%",
                 f"{r['triton_vs_in_process']['max_abs'] * 255:.2f}/255",
                 str(r["triton_vs_in_process"]["pixels_over_one_level"])] for r in report["images"]]),
        "<h2>Latency (mean seconds per image)</h2>",
        _latency_chart(report["mean_latency_s"]),
        _table(["variant", "stage", "seconds"],
               [[VARIANT_LABELS[v], esc(k), f"{s:.3f}"] for v, t in report["mean_latency_s"].items() for k, s in t.items()]),
        "<h2>Step times (seconds)</h2>",
        _table(["step", "seconds"], [[esc(k), f"{v:.1f}"] for k, v in report["step_seconds"].items()]),
        "</body></html>",
    ]
    return "\n".join(parts)


def _latency_chart(latency: dict[str, dict[str, float]]) -> str:
    series = {VARIANT_LABELS[v]: ([1.0], [t["end_to_end"]]) for v, t in latency.items()}
    figure = value_chart(series, title="End-to-end seconds per image (mean over the images)", x_label="",
                         y_label="seconds", value_unit=" s")
    return inline_svg(figure)


def _panels(demo: "Demo") -> list[str]:
    out = []
    for item in demo.images:
        alpha = demo.triton[item["id"]].alpha
        if "gt" in item:
            labels = ("image", "ground truth", "alpha", "|error| x 4", "cut-out", "composite")
        else:
            labels = ("photograph", "alpha", "cut-out", "composite")
        row = _panel_row(item, alpha)
        header = _header(row.shape[1], labels)
        out.append(f"<p><b>{html.escape(item['id'])}</b> ({html.escape(item['kind'])}, "
                   f"{item['image'].shape[1]}x{item['image'].shape[0]})</p>")
        out.append(f"<img alt='{html.escape(item['id'])}' src='{_png_data_uri(np.concatenate([header, row]))}'>")
    return out


def _panel_row(item: dict, alpha: np.ndarray) -> np.ndarray:
    """One row of panels at thumbnail size (a 4K foreground estimate only to shrink it would cost
    seconds): image | [ground truth] | alpha | [error] | cut-out over a checkerboard | composite."""
    image, pred = _thumbnail(item["image"]), _thumbnail(alpha)
    h, w = pred.shape
    grey = lambda a: np.repeat(quantise(np.clip(a, 0, 1), 8)[..., None], 3, axis=2)  # noqa: E731
    yy, xx = np.mgrid[0:h, 0:w]
    checker = np.where(((yy // 10) + (xx // 10)) % 2 == 0, 0.85, 0.6).astype(np.float32)[..., None].repeat(3, axis=2)
    foreground = estimate_foreground(image, pred)
    cutout = composite(foreground, pred, checker, out_dtype=np.uint8)
    over = composite(foreground, pred, COMPOSITE_BACKGROUND, out_dtype=np.uint8)
    if "gt" in item:
        gt = _thumbnail(item["gt"])
        panels = [image, grey(gt), grey(pred), grey(4 * np.abs(pred - gt)), cutout, over]
    else:
        panels = [image, grey(pred), cutout, over]
    return np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in panels], axis=1)


def _thumbnail(array: np.ndarray, height: int = ROW_HEIGHT - 4) -> np.ndarray:
    """An RGB uint8 image or a float alpha resized to `height` rows (area-averaged)."""
    width = max(1, round(array.shape[1] * height / array.shape[0]))
    if array.ndim == 2:
        small = Image.fromarray(array.astype(np.float32)).resize((width, height), Image.Resampling.BOX)
        return np.clip(np.asarray(small), 0, 1)
    return np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.BOX))


def _header(width: int, labels: tuple[str, ...], height: int = 22) -> np.ndarray:
    """A white strip with one label centred over each of the equally wide columns."""
    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    column = width / len(labels)
    for i, label in enumerate(labels):
        left, top, right, bottom = draw.textbbox((0, 0), label)
        draw.text((i * column + (column - (right - left)) / 2, (height - (bottom - top)) / 2 - top), label, fill="black")
    return np.asarray(strip)


def _png_data_uri(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


__all__ = ["COMPOSITE_BACKGROUND", "VARIANTS", "build_report", "print_summary", "render_html"]
