"""Runtime benchmark (not a test): tiled 4K throughput through torch and onnxruntime, tiling
overhead against one whole-image call, peak memory at 4K and 8K, and tiled-vs-whole fidelity.

    .venv/bin/python benchmarks/runtime.py                   # everything, default sizes
    .venv/bin/python benchmarks/runtime.py --sections speed --width 0.25

Sections (all measured in one run, side by side, so the ratios share the machine's state):
- speed: one 3840 x 2160 image through the Pipeline with torch engines and with onnxruntime
  engines over an export of the same weights (one backend active at a time); megapixels per
  second end to end; the tiling
  overhead = (detail-stage seconds per image pixel, tiled) / (seconds per canvas pixel of one
  detail call over the whole padded canvas), per backend, and for torch also end to end
  (tiled pipeline / whole-image pipeline). The onnxruntime whole-canvas call uses a graph
  exported at the canvas size for this measurement only (the deployed graphs are tile-sized).
- memory: peak RSS (VmHWM) of a fresh process running 4K and 8K images (a tiny model) and how
  much the run itself added over the RSS before it (the peak is reset just before the run;
  ru_maxrss would not do: a child inherits its parent's high-water mark through fork/exec).
- fidelity: max |tiled - whole| of alpha and of the stitched raw alpha for each tiny model at
  its default tiling, and for SHM with a blending margin covering M-Net's receptive field.

The speed section uses PyTorch's initialisation (speed does not depend on the values);
memory and fidelity use calibrated random weights (mattrt.runtime.diagnostics), without which
untrained networks are near-constant. The figures are about speed and tiling, not matting
quality. The machine may be shared: timings are noisy.
Writes benchmarks/results/runtime-cpu-<date>.json and prints tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mattrt.machine import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"
TINY_MODELS = ["shm_tiny", "aim_tiny", "salient_tiny", "semantic_tiny", "alphanet_tiny"]


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    from mattrt import __version__

    return {"mattrt": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "numpy": np.__version__, "python": platform.python_version()}


def test_image(height: int, width: int) -> np.ndarray:
    """A deterministic photo-like image: generated matting samples mirrored to fill the size."""
    from mattrt.export.parity import generated_image

    side = min(height, width, 1080)
    base = generated_image(side, 0)
    reps_y, reps_x = -(-height // side), -(-width // side)
    rows = [np.concatenate([base if (i + j) % 2 == 0 else base[:, ::-1] for j in range(reps_x)], axis=1) for i in range(reps_y)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:height, :width])


# -- speed ------------------------------------------------------------------------------------------
def _timed_run(pipeline, image, repeats: int, **kwargs):
    best = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = pipeline.run(image, **kwargs)
        seconds = time.perf_counter() - started
        if best is None or seconds < best[0]:
            best = (seconds, result)
    return best


def _whole_canvas_feeds(pipeline, image):
    """The feeds of the one detail call whole-image mode makes (same crop and guidance code)."""
    from mattrt.runtime import ops

    plan = pipeline.plan(*image.shape[:2], whole=True)
    low = pipeline.semantic_pass(pipeline._model_order(image))
    offsets = np.zeros((1, 2), np.int64)
    tile = (plan.canvas_height, plan.canvas_width)
    feeds = {"image": ops.preprocess_tiles(pipeline._model_order(image), offsets, tile, pipeline._mean, pipeline._std)}
    if pipeline.spec.guidance == "trimap":
        feeds["guidance"] = ops.upsampled_tiles(low, *image.shape[:2], offsets, tile)
    return feeds, plan


def _export_canvas_graph(model, feeds: dict, path: Path) -> None:
    """The detail stage as an ONNX graph fixed at the whole canvas (benchmark only)."""
    import contextlib
    import io
    import warnings

    import torch

    from mattrt.engines.tensorrt.rewrites import translation_table

    stage = model.stages()["detail"]
    example = tuple(torch.from_numpy(feeds[name]) for name in stage.input_names)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(stage.module.eval(), example, dynamo=True, input_names=stage.input_names,
                                    output_names=stage.output_names, custom_translation_table=translation_table(),
                                    opset_version=18, optimize=True)
    program.save(str(path))


def speed(args) -> dict:
    import onnxruntime as ort
    import torch

    from mattrt.export.exporter import export_model
    from mattrt.models import create_model
    from mattrt.runtime.diagnostics import calibrated_random_weights
    from mattrt.runtime.pipeline import Pipeline

    height, width = args.height, args.width_px
    image = test_image(height, width)
    torch.manual_seed(0)
    model = create_model(args.model, width=args.width, tile_size=args.tile)
    if args.calibrated:
        calibrated_random_weights(model, seed=0)
    options = dict(tile_size=args.tile, overlap=args.overlap, batch=args.batch)
    megapixels = height * width / 1e6
    rows = {}

    with tempfile.TemporaryDirectory(prefix="mattrt-bench-") as tmp:
        started = time.perf_counter()
        export_model(model, Path(tmp) / "export", max_batch=max(8, args.batch), log=None)
        export_seconds = time.perf_counter() - started

        # One backend at a time: onnxruntime's worker threads spin after each run and would
        # slow torch down if both were active in this process.
        with Pipeline.from_model(model, **options) as torch_pipeline:
            torch_pipeline.run(image[:600, :600])  # warm-up
            tiled_torch, result_torch = _timed_run(torch_pipeline, image, args.repeats)
            whole_torch, result_whole = _timed_run(torch_pipeline, image, 1, whole=True)
            feeds, plan = _whole_canvas_feeds(torch_pipeline, image)
            torch_pipeline.engines["detail"].run(feeds)
            started = time.perf_counter()
            torch_pipeline.engines["detail"].run(feeds)
            call_torch = time.perf_counter() - started
        canvas_pixels = plan.canvas_height * plan.canvas_width
        graph = Path(tmp) / "detail_canvas.onnx"
        _export_canvas_graph(model, feeds, graph)

        with Pipeline.from_artifacts(Path(tmp) / "export", threads=args.threads, **options) as ort_pipeline:
            ort_pipeline.run(image[:600, :600])
            tiled_ort, result_ort = _timed_run(ort_pipeline, image, args.repeats)
        options_ort = ort.SessionOptions()
        options_ort.log_severity_level = 3
        if args.threads:
            options_ort.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(graph), options_ort, providers=["CPUExecutionProvider"])
        session.run(None, feeds)  # the first run allocates
        started = time.perf_counter()
        session.run(None, feeds)
        call_ort = time.perf_counter() - started
        del session

    pixels = height * width
    for name, seconds, result, call in (("torch", tiled_torch, result_torch, call_torch),
                                        ("onnxruntime", tiled_ort, result_ort, call_ort)):
        detail_per_pixel_tiled = result.timings["detail"] / pixels
        rows[name] = {
            "seconds": round(seconds, 3),
            "megapixels_per_second": round(megapixels / seconds, 4),
            "timings": {k: round(v, 3) for k, v in result.timings.items()},
            "whole_canvas_detail_call_seconds": round(call, 3),
            "detail_overhead": round(detail_per_pixel_tiled / (call / canvas_pixels), 3),
        }
    rows["torch"]["whole_image_pipeline_seconds"] = round(whole_torch, 3)
    rows["torch"]["end_to_end_overhead"] = round(tiled_torch / whole_torch, 3)
    agreement = float(np.abs(result_torch.alpha - result_ort.alpha).max())
    return {
        "model": args.model,
        "width_multiplier": args.width,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "image": [height, width],
        "tile": args.tile,
        "overlap": args.overlap,
        "batch": args.batch,
        "tiles": result_torch.plan["tiles"],
        "canvas": [plan.canvas_height, plan.canvas_width],
        "semantic_size": model.settings.semantic_size,
        "export_seconds": round(export_seconds, 1),
        "backends": rows,
        "torch_vs_onnxruntime_alpha_max_abs": agreement,
        "tiled_vs_whole_alpha_max_abs_torch": float(np.abs(result_torch.alpha - result_whole.alpha).max()),
    }


# -- memory -----------------------------------------------------------------------------------------
MEMORY_WORKER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from mattrt.models import create_model
from mattrt.runtime.diagnostics import calibrated_random_weights
from mattrt.runtime.pipeline import Pipeline

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

height, width, tile, batch = (int(v) for v in sys.argv[1:5])
model = calibrated_random_weights(create_model(sys.argv[5]))
image = np.empty((height, width, 3), np.uint8)
rng = np.random.default_rng(0)
for y in range(0, height, 512):
    image[y : y + 512] = rng.integers(0, 256, image[y : y + 512].shape, dtype=np.uint8)
with Pipeline.from_model(model, tile_size=tile, overlap=tile // 8, batch=batch, channels_last=True) as pipeline:
    pipeline.run(np.zeros((tile + 8, tile + 8, 3), np.uint8))
    before = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS (VmHWM) restarts from the current RSS
    started = time.perf_counter()
    result = pipeline.run(image)
    seconds = time.perf_counter() - started
peak = status("VmHWM")
print(json.dumps({"rss_before_run_mib": before / 2**20, "peak_rss_mib": peak / 2**20,
                  "added_by_run_mib": (peak - before) / 2**20, "tiles": result.plan["tiles"], "seconds": seconds}))
"""


def memory(args) -> dict:
    runs = {}
    for label, (height, width) in (("4K", (2160, 3840)), ("8K", (4320, 7680))):
        for batch in args.memory_batches:
            done = subprocess.run([sys.executable, "-c", MEMORY_WORKER, str(height), str(width), str(args.memory_tile),
                                   str(batch), args.memory_model], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"memory run {label} failed:\n{done.stderr[-3000:]}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            figures.update(image=[height, width], batch=batch, alpha_mib=4 * height * width / 2**20,
                           input_image_mib=3 * height * width / 2**20)
            runs[f"{label} batch {batch}"] = figures
    return {"model": args.memory_model, "tile": args.memory_tile, "runs": runs}


# -- fidelity ---------------------------------------------------------------------------------------
def fidelity(args) -> dict:
    from mattrt.models import create_model
    from mattrt.runtime.diagnostics import calibrated_random_weights, tiled_vs_whole
    from mattrt.runtime.pipeline import Pipeline

    rows = {}
    for name in TINY_MODELS:
        model = calibrated_random_weights(create_model(name), seed=0)
        # The tiny variants' own tiling (64 px tiles, overlap 16, margin 4): far inside every
        # receptive field. Then 512 px tiles whose margin covers SHM's M-Net receptive field.
        with Pipeline.from_model(model) as pipeline:
            rows[f"{name} tile 64 overlap 16 margin 4"] = tiled_vs_whole(pipeline, test_image(300, 400))
        with Pipeline.from_model(model, tile_size=512, overlap=384, margin=176) as pipeline:
            rows[f"{name} tile 512 overlap 384 margin 176"] = tiled_vs_whole(pipeline, test_image(520, 560))
    return rows


# -- reporting --------------------------------------------------------------------------------------
def print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["speed", "memory", "fidelity"], choices=["speed", "memory", "fidelity"])
    parser.add_argument("--model", default="shm", help="model for the speed section (default: shm)")
    parser.add_argument("--width", type=float, default=0.25, help="its channel-width multiplier (default: 0.25)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--width-px", type=int, default=3840)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--calibrated", action="store_true",
                        help="speed section with calibrated random weights (default: PyTorch's initialisation; speed "
                             "does not depend on the values, and the export's parity check is tuned for it)")
    parser.add_argument("--memory-model", default="shm_tiny")
    parser.add_argument("--memory-tile", type=int, default=512)
    parser.add_argument("--memory-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/runtime-cpu-<date>.json)")
    parser.add_argument("--update", action="store_true",
                        help="keep the other sections of an existing JSON file (each section records when it ran)")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / f"runtime-cpu-{datetime.date.today().isoformat()}.json"

    import torch

    previous = json.loads(out.read_text()) if args.update and out.is_file() else {}
    if previous and "section_dates" not in previous:
        previous["section_dates"] = {k: previous.get("date") for k in ("speed", "memory", "fidelity") if k in previous}
    report = {
        **previous,
        "benchmark": "runtime",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "onnxruntime_threads": args.threads or os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": list(os.getloadavg())},
        "versions": versions(),
        "note": "random weights (speed: PyTorch init; memory, fidelity: calibrated); shared machine, timings are noisy",
    }
    ran_at = report.setdefault("section_dates", {})
    if "speed" in args.sections:
        result = speed(args)
        report["speed"] = result
        ran_at["speed"] = report["date"]
        print(f"\nspeed: {result['model']} (width {result['width_multiplier']}, {result['parameters'] / 1e6:.2f}M parameters), "
              f"{result['image'][1]}x{result['image'][0]}, tile {result['tile']} overlap {result['overlap']} batch {result['batch']}, "
              f"{result['tiles']} tiles")
        rows = []
        for backend, row in result["backends"].items():
            rows.append([backend, row["seconds"], row["megapixels_per_second"], row["timings"].get("detail"),
                         row["whole_canvas_detail_call_seconds"], row["detail_overhead"], row.get("end_to_end_overhead", "-")])
        print_table(["backend", "tiled s", "MP/s", "detail s", "whole-canvas call s", "detail overhead", "end-to-end overhead"], rows)
        print(f"torch vs onnxruntime alpha max abs {result['torch_vs_onnxruntime_alpha_max_abs']:.2e}")
    if "memory" in args.sections:
        result = memory(args)
        report["memory"] = result
        ran_at["memory"] = report["date"]
        print(f"\nmemory: {result['model']} tile {result['tile']}")
        print_table(["run", "tiles", "s", "RSS before run MiB", "peak RSS MiB", "added by run MiB", "alpha MiB"],
                    [[k, v["tiles"], round(v["seconds"], 1), round(v["rss_before_run_mib"]), round(v["peak_rss_mib"]),
                      round(v["added_by_run_mib"]), round(v["alpha_mib"])] for k, v in result["runs"].items()])
    if "fidelity" in args.sections:
        result = fidelity(args)
        report["fidelity"] = result
        ran_at["fidelity"] = report["date"]
        print("\nfidelity: tiled vs whole-image (calibrated random weights)")
        print_table(["model / tiling", "tiles", "alpha max abs", "alpha mean abs", "raw max abs", "raw range"],
                    [[k, v["plan"]["tiles"], f"{v['alpha_max_abs']:.2e}", f"{v['alpha_mean_abs']:.2e}",
                      f"{v['detail_max_abs']:.2e}", f"{v['detail_range']:.2f}"] for k, v in result.items()])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
