"""`mattrt demo`: the main job end to end, on a CPU machine, with a ground truth to score against.

1. synthetic 4K scenes of the three AIM-500 kinds with their exact alpha (`mattrt synth`);
2. the model exported once through the artifact cache for onnxruntime, FP32 and INT8
   (`mattrt export`; later runs reuse the cache);
3. a Triton repository over the cached FP32 export (`mattrt triton-repo`);
4. the local Triton server started on free ports;
5. every image matted through the server (tiling inside it): alpha, cutout (RGBA) and composite
   PNGs; the server is stopped as soon as this step ends, failed or not;
6. the in-process pipeline, FP32 and INT8, on the same images;
7. a report: `report.json` and one self-contained `report.html` (inline images and SVG plots):
   latency per stage, metrics against the ground truth, INT8 against FP32, Triton against
   in-process.
Every step goes through the same functions as the commands it names; a failing step stops the
server and is named in the error.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from mattrt.data.synthetic import write_dataset
from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.plan import DeploymentRequest, open_pipeline
from mattrt.deploy.sources import ModelSource
from mattrt.deploy.steps import GraphsFromSource, PrecisionFromGraphs
from mattrt.engines.triton.client import RemotePipeline, TritonMattingClient
from mattrt.errors import InputError, MattrtError
from mattrt.imageio import quantise, read_alpha, read_image
from mattrt.imagewrite import write_alpha, write_bytes, write_rgb, write_rgba
from mattrt.manifest import Manifest
from mattrt.metrics import evaluate, mean_metrics
from mattrt.runtime.foreground import composite, estimate_foreground
from mattrt.serving.repository import RepositoryOptions, build_repository
from mattrt.serving.server import ServerOptions, TritonServer

DEMO_MODEL = "aim_synthetic"
DEMO_SEED = 7  # training used seed 0, the held-out check seed 2
DEFAULT_COUNT = 1
DEFAULT_SIZE = (3840, 2160)
BACKEND = "onnxruntime"
TRITON_PRECISION = "fp32"
STEPS = ("synthetic data", "export (artifact cache)", "Triton repository", "starting the Triton server",
         "matting through Triton", "in-process matting (FP32, INT8)", "report")
COMPOSITE_BACKGROUND = (0.2, 0.45, 0.85)  # a plain blue: edges show against it
SHEET_ROW_HEIGHT = 160
SHEET_COLUMNS = ("image", "ground truth", "Triton alpha", "|error| x 4", "cutout over checkerboard")
LEVEL = 1 / 255  # one 8-bit level: Triton returns 8-bit alpha
MODEL_NOTES = {
    "aim_synthetic": "mattrt's AIM-style model trained on generated synthetic scenes (calibration.synthetic): "
                     "it shows the deployment and the measurements; it is a synthetic-domain model, not for photographs",
}


class DemoError(MattrtError):
    """A demo step failed (the message names the step)."""


def run_demo(out: Path, *, count: int = DEFAULT_COUNT, size: tuple[int, int] = DEFAULT_SIZE, model: str = DEMO_MODEL,
             checkpoint: Path | None = None, threads: int | None = None, overwrite: bool = False,
             progress: bool | None = None) -> int:
    out = Path(out)
    _check_out(out, overwrite)
    if count < 1:
        raise InputError(f"--count must be at least 1, got {count}")
    demo = Demo(out, count, tuple(size), model, checkpoint, threads, progress is not False)
    return demo.run()


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the demo")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = "already holds a demo run" if (out / "report.json").exists() else "is not empty"
        raise InputError(f"{out} {held}; pass --overwrite to replace the demo's files in it or choose another --out")


class Demo:
    """The steps of one demo run and what they hand each other."""

    def __init__(self, out: Path, count: int, size: tuple[int, int], model: str, checkpoint, threads, progress: bool):
        self.out, self.count, self.size, self.model = out, count, size, model
        self.checkpoint, self.threads, self.progress = checkpoint, threads, progress
        self.seconds: dict[str, float] = {}
        self.samples: list[dict] = []
        self.exports: dict[str, Any] = {}
        self.triton: dict[str, Any] = {}
        self.in_process: dict[str, list] = {}
        self.server_info: dict[str, Any] = {}
        self.cache = ArtifactCache(log=_indented)

    def run(self) -> int:
        started = time.perf_counter()
        self.step(0, self.make_data)
        self.step(1, self.export)
        self.step(2, self.make_repository)
        server = TritonServer(self.out / "triton-repo", ServerOptions())
        try:
            self.step(3, lambda: self.start_server(server))
            self.step(4, lambda: self.matte_through_triton(server))
        finally:
            server.close()
            print("  Triton server stopped")
        self.step(5, self.matte_in_process)
        self.seconds["before the report"] = time.perf_counter() - started
        self.step(6, self.write_report)
        print(f"done in {time.perf_counter() - started:.1f} s; report: {self.out / 'report.html'}")
        return 0

    def step(self, index: int, function: Callable[[], Any]) -> None:
        name = STEPS[index]
        print(f"[{index + 1}/{len(STEPS)}] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            function()
        except (KeyboardInterrupt, DemoError):
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, MattrtError) else f"{type(exc).__name__}: {exc}"
            raise DemoError(f"step {index + 1}/{len(STEPS)} ({name}) failed: {reason}") from exc
        self.seconds[name] = time.perf_counter() - started
        print(f"  {name}: {self.seconds[name]:.1f} s", flush=True)

    # -- steps ----------------------------------------------------------------------------------
    def make_data(self) -> None:
        print(f"  {self.count} images of {self.size[0]}x{self.size[1]} (seed {DEMO_SEED}) -> {self.out / 'data'}")
        dataset = write_dataset(self.out / "data", self.count, self.size, DEMO_SEED, overwrite=True, progress=self.progress)
        for sample in dataset["samples"]:
            files = {k: self.out / "data" / v for k, v in sample["files"].items()}
            self.samples.append({"id": sample["id"], "kind": sample["kind"], "image": read_image(files["image"]).rgb,
                                 "gt": read_alpha(files["alpha"]), "trimap": read_alpha(files["trimap"])})

    def export(self) -> None:
        graphs = GraphsFromSource(ModelSource(self.model, checkpoint=self.checkpoint), cache=self.cache, log=_indented)
        for precision in ("fp32", "int8"):
            self.exports[precision] = PrecisionFromGraphs(graphs, precision, cache=self.cache)()
        manifest = self.exports["fp32"].manifest
        if manifest.checkpoint_sha256 == "untrained":
            raise InputError(f"model {self.model!r} has no trained weights; pass --checkpoint FILE (the authors' weights)")
        self.weights = _describe_weights(self.model, self.checkpoint, manifest)
        print(f"  weights: {self.weights['description']}")

    def make_repository(self) -> None:
        options = RepositoryOptions(target="cpu", precision=TRITON_PRECISION, overwrite=True)
        build_repository(self.exports[TRITON_PRECISION].directory, self.out / "triton-repo", options, log=_indented)

    def start_server(self, server) -> None:
        server.start()
        self.server_info = {"endpoints": dict(server.endpoints), "precision": TRITON_PRECISION}
        print(f"  tritonserver ready at http://{server.endpoints['http']} (gRPC {server.endpoints['grpc']})")

    def matte_through_triton(self, server) -> None:
        client = TritonMattingClient(server.endpoints["http"], api_key=server.key)
        with RemotePipeline(client) as remote:
            self.server_info["model"] = remote.describe()
            for sample in self.samples:
                result = remote.run(sample["image"])
                self.triton[sample["id"]] = result
                print(f"  {sample['id']}: {result.timings['remote']:.2f} s")
                self.write_outputs(sample, result.alpha)

    def write_outputs(self, sample: dict, alpha: np.ndarray) -> None:
        (self.out / "mattes").mkdir(parents=True, exist_ok=True)
        stem = self.out / "mattes" / sample["id"]
        foreground = estimate_foreground(sample["image"], alpha, out_dtype=np.uint8)
        write_alpha(f"{stem}_alpha.png", alpha, bit_depth=8, overwrite=True)
        write_rgba(f"{stem}_cutout.png", foreground, alpha, bit_depth=8, overwrite=True)
        write_rgb(f"{stem}_composite.png", composite(foreground, alpha, COMPOSITE_BACKGROUND, out_dtype=np.uint8),
                  overwrite=True)

    def matte_in_process(self) -> None:
        for precision in self.exports:
            request = DeploymentRequest(model=self.model, checkpoint=self.checkpoint, backend=BACKEND,
                                        precision=precision, backend_options={"threads": self.threads})
            with open_pipeline(request, cache=self.cache, log=_indented) as pipeline:
                results = [_timed_run(pipeline, sample["image"]) for sample in self.samples]
            self.in_process[precision] = results
            total = sum(r.timings["end_to_end"] for r in results)
            print(f"  {precision}: {total:.1f} s for {len(results)} image(s)")

    def write_report(self) -> None:
        report = self.report()
        text = json.dumps(report, indent=2, allow_nan=False) + "\n"
        write_bytes(self.out / "report.json", text.encode(), overwrite=True)
        write_bytes(self.out / "report.html", render_html(report, self.thumbnails()).encode(), overwrite=True)
        _print_summary(report)

    # -- the report -----------------------------------------------------------------------------
    def report(self) -> dict:
        images = [self.image_row(sample) for sample in self.samples]
        variants = ("triton", "fp32", "int8")
        return {
            "model": self.model,
            "weights": self.weights,
            "data": {"seed": DEMO_SEED, "count": self.count, "size": list(self.size)},
            "exports": {p: {"path": str(d.directory), "cache": _jsonable(d.notes)} for p, d in self.exports.items()},
            "server": self.server_info,
            "images": images,
            "mean_metrics": {v: _finite(mean_metrics([row["metrics"][v] for row in images])) for v in variants},
            "mean_latency_s": {v: _mean_timings([row["latency_s"][v] for row in images]) for v in variants},
            "worst": {
                "triton_vs_in_process_max_abs": max(row["triton_vs_in_process"]["max_abs"] for row in images),
                "int8_vs_fp32_max_abs": max(row["int8_vs_fp32"]["max_abs"] for row in images),
            },
            "triton_within_one_level": all(row["triton_vs_in_process"]["max_abs"] <= LEVEL + 1e-6 for row in images),
            "step_seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "files": {"mattes": "mattes/<id>_{alpha,cutout,composite}.png", "data": "data/", "repository": "triton-repo/"},
        }

    def image_row(self, sample: dict) -> dict:
        triton_alpha = self.triton[sample["id"]].alpha
        index = [s["id"] for s in self.samples].index(sample["id"])
        fp32, int8 = self.in_process["fp32"][index], self.in_process["int8"][index]
        alphas = {"triton": triton_alpha, "fp32": fp32.alpha, "int8": int8.alpha}
        return {
            "id": sample["id"],
            "kind": sample["kind"],
            "metrics": {k: _finite(evaluate(a, sample["gt"], sample["trimap"])) for k, a in alphas.items()},
            "latency_s": {"triton": {"end_to_end": self.triton[sample["id"]].timings["remote"]},
                          "fp32": dict(fp32.timings), "int8": dict(int8.timings)},
            # Triton answers 8-bit levels: compare with the in-process alpha rounded the same way.
            "triton_vs_in_process": _difference(triton_alpha, np.rint(fp32.alpha * 255) / 255),
            "int8_vs_fp32": _difference(int8.alpha, fp32.alpha),
        }

    def thumbnails(self) -> list[str]:
        rows = [_sheet_row(s["image"], s["gt"], self.triton[s["id"]].alpha) for s in self.samples]
        header = _header(rows[0].shape[1], SHEET_COLUMNS)
        return [_png_data_uri(header)] + [_png_data_uri(row) for row in rows]


# -- helpers --------------------------------------------------------------------------------------
def _indented(message: str) -> None:
    print(f"  {message}", flush=True)


def _timed_run(pipeline, image: np.ndarray):
    """pipeline.run with its wall time added to the per-stage timings as end_to_end."""
    started = time.perf_counter()
    result = pipeline.run(image)
    result.timings["end_to_end"] = time.perf_counter() - started
    return result


def _describe_weights(model: str, checkpoint, manifest: Manifest) -> dict:
    if checkpoint is not None:
        description = f"{model} with the weights in {checkpoint} (given with --checkpoint)"
    else:
        description = MODEL_NOTES.get(model, f"{model} with its registered trained weights")
    return {"model": model, "checkpoint": None if checkpoint is None else str(checkpoint),
            "checkpoint_sha256": manifest.checkpoint_sha256, "description": description}


def _difference(a: np.ndarray, b: np.ndarray) -> dict:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "pixels_over_one_level": int((diff > LEVEL + 1e-6).sum())}


def _mean_timings(rows: list[dict]) -> dict:
    keys = sorted({k for row in rows for k in row})
    return {k: round(float(np.mean([row[k] for row in rows if k in row])), 4) for k in keys}


def _finite(row: dict) -> dict:
    """JSON has no infinity (PSNR of an exact match): such values become null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _print_summary(report: dict) -> None:
    columns = ["sad", "mse", "grad", "conn"]
    print(f"  {'mean over images':<20}" + "".join(f"{c:>12}" for c in columns) + f"{'seconds/image':>15}")
    for variant, label in (("triton", "Triton FP32"), ("fp32", "in-process FP32"), ("int8", "in-process INT8")):
        metrics, latency = report["mean_metrics"][variant], report["mean_latency_s"][variant]
        seconds = latency["end_to_end"]
        print(f"  {label:<20}" + "".join(f"{metrics[c]:>12.4f}" for c in columns) + f"{seconds:>15.2f}")
    worst = report["worst"]
    print(f"  Triton vs in-process FP32: max |alpha difference| {worst['triton_vs_in_process_max_abs'] * 255:.2f}/255; "
          f"INT8 vs FP32: {worst['int8_vs_fp32_max_abs'] * 255:.2f}/255")


def _png_data_uri(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _sheet_row(image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One contact-sheet row: image | GT | prediction | 4 x |error| | cutout over a checkerboard,
    made at thumbnail size (a 4K foreground estimate only to shrink it would cost seconds)."""

    image, gt, pred = _thumbnail(image), _thumbnail(gt), _thumbnail(pred)
    h, w = gt.shape
    grey = lambda a: np.repeat(quantise(np.clip(a, 0, 1), 8)[..., None], 3, axis=2)  # noqa: E731
    yy, xx = np.mgrid[0:h, 0:w]
    checker = np.where(((yy // 8) + (xx // 8)) % 2 == 0, 0.85, 0.55).astype(np.float32)[..., None].repeat(3, axis=2)
    cutout = composite(estimate_foreground(image, pred), pred, checker, out_dtype=np.uint8)
    panels = [image, grey(gt), grey(pred), grey(4 * np.abs(pred - gt)), cutout]
    return np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in panels], axis=1)


def _thumbnail(array: np.ndarray, height: int = SHEET_ROW_HEIGHT - 4) -> np.ndarray:
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


# -- HTML -----------------------------------------------------------------------------------------
VARIANT_LABELS = {"triton": "Triton (FP32, tiled in the server)", "fp32": "in-process FP32", "int8": "in-process INT8"}


def render_html(report: dict, thumbnails: list[str]) -> str:
    """One self-contained page: inline PNG data URIs and SVG, no scripts, no external files."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>mattrt demo report</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}"
        "img{max-width:100%;display:block}.note{background:#fff4d6;padding:.6em;border:1px solid #e0c060}",
        "</style></head><body><h1>mattrt demo</h1>",
        f"<p class='note'><b>Weights:</b> {esc(report['weights']['description'])} "
        f"(checkpoint sha256 {esc(str(report['weights']['checkpoint_sha256']))[:16]}...).</p>",
        f"<p>{report['data']['count']} synthetic image(s) of {report['data']['size'][0]}x{report['data']['size'][1]} "
        f"with exact alpha (seed {report['data']['seed']}); onnxruntime on the CPU; Triton serving the FP32 export "
        f"at {esc(str(report['server'].get('endpoints', {}).get('http', '?')))}.</p>",
        "<h2>Accuracy against the ground truth (mean)</h2>",
        _table(["variant", "SAD", "MSE", "gradient", "connectivity"],
               [[VARIANT_LABELS[v], *(_fmt(m.get(k)) for k in ("sad", "mse", "grad", "conn"))]
                for v, m in report["mean_metrics"].items()]),
        "<h2>Agreement</h2>",
        _table(["image", "Triton vs in-process FP32 max |diff|", "pixels over 1/255", "INT8 vs FP32 max |diff|",
                "INT8 vs FP32 mean |diff|"],
               [[esc(r["id"]), f"{r['triton_vs_in_process']['max_abs'] * 255:.2f}/255",
                 str(r["triton_vs_in_process"]["pixels_over_one_level"]), f"{r['int8_vs_fp32']['max_abs'] * 255:.2f}/255",
                 f"{r['int8_vs_fp32']['mean_abs'] * 255:.3f}/255"] for r in report["images"]]),
        "<h2>Latency (mean seconds per image)</h2>",
        _latency_svg(report["mean_latency_s"]),
        _table(["variant", "stage", "seconds"],
               [[VARIANT_LABELS[v], esc(k), f"{s:.3f}"] for v, t in report["mean_latency_s"].items() for k, s in t.items()]),
        "<h2>Per image</h2>",
        _table(["image", "kind", "variant", "SAD", "MSE", "gradient", "connectivity"],
               [[esc(r["id"]), esc(r["kind"]), VARIANT_LABELS[v], *(_fmt(m.get(k)) for k in ("sad", "mse", "grad", "conn"))]
                for r in report["images"] for v, m in r["metrics"].items()]),
        "<h2>Images (Triton alpha)</h2>",
        *(f"<img alt='row {i}' src='{uri}'>" for i, uri in enumerate(thumbnails)),
        "<h2>Step times (seconds)</h2>",
        _table(["step", "seconds"], [[esc(k), f"{v:.1f}"] for k, v in report["step_seconds"].items()]),
        "</body></html>",
    ]
    return "\n".join(parts)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _latency_svg(latency: dict[str, dict[str, float]]) -> str:
    """Horizontal stacked bars: one per variant, one segment per stage (inline SVG)."""
    colours = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"]
    stages = {v: {k: s for k, s in t.items() if k != "end_to_end"} or t for v, t in latency.items()}
    names = sorted({k for t in stages.values() for k in t})
    longest = max(sum(t.values()) for t in stages.values()) or 1.0
    width, left, bar = 900, 260, 26
    scale = (width - left - 80) / longest
    rows = []
    for i, (variant, times) in enumerate(stages.items()):
        y, x = 10 + i * (bar + 12), left
        rows.append(f"<text x='5' y='{y + 18}' font-size='13'>{html.escape(VARIANT_LABELS[variant])}</text>")
        for name in names:
            if name in times:
                w = times[name] * scale
                rows.append(f"<rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='{bar}' "
                            f"fill='{colours[names.index(name) % len(colours)]}'><title>{html.escape(name)} "
                            f"{times[name]:.3f} s</title></rect>")
                x += w
        rows.append(f"<text x='{x + 5:.1f}' y='{y + 18}' font-size='12'>{sum(times.values()):.2f} s</text>")
    legend_y = 10 + len(stages) * (bar + 12) + 10
    for i, name in enumerate(names):
        rows.append(f"<rect x='{left + i * 110}' y='{legend_y}' width='12' height='12' fill='{colours[i % len(colours)]}'/>"
                    f"<text x='{left + i * 110 + 16}' y='{legend_y + 11}' font-size='12'>{html.escape(name)}</text>")
    return (f"<svg width='{width}' height='{legend_y + 25}'>"
            + "".join(rows) + "</svg>")
