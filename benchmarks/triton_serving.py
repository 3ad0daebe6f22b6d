"""Triton serving benchmark (not a test): the same images through the in-process pipeline and
through a real Triton server running the generated CPU repository, side by side in one run.

    .venv/bin/python benchmarks/triton_serving.py                     # exports shm_tiny (tile 256) first
    .venv/bin/python benchmarks/triton_serving.py --export DIR        # an existing export directory

Sections:
- throughput: N images (H x W, photo-like) at concurrency 1, 2 and 4: images per second and
  p50/p99 latency per image, for the in-process Pipeline (onnxruntime, one Pipeline shared by the
  worker threads) and for Triton over HTTP raw, HTTP encoded (lossless PNG bytes prepared before
  the clock starts; the matte comes back as a PNG), HTTP with system shared memory, and gRPC raw.
  Ratio = Triton throughput / in-process throughput at the same concurrency. Every Triton matte
  is checked against the in-process matte (max difference in 8-bit levels).
- wire: bytes a 3840 x 2160 photograph-like image (generated scene + Gaussian sensor noise,
  sigma 3 levels) takes on the wire raw vs as PNG and JPEG (quality 90), and the matte coming
  back raw vs PNG; one 4K request raw and one encoded (the JPEG file) end to end.
- perf_analyzer: the command for the generated model; run once when a perf_analyzer binary
  exists (the PyPI package `perf-analyzer` 0.1.0 is a placeholder without one).

The machine may be shared: timings are noisy. Writes benchmarks/results/triton-cpu-<date>.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from checkout import ensure_mattrt_importable  # noqa: E402

# This file is named triton.py: keep its folder off the path so it cannot shadow the `triton`
# package (OpenAI Triton) that torch's ONNX exporter probes for.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
ensure_mattrt_importable()

from PIL import Image  # noqa: E402

from mattrt import __version__  # noqa: E402
from mattrt.availability import probe  # noqa: E402
from mattrt.engines.triton.client import TritonMattingClient  # noqa: E402
from mattrt.export.exporter import export_model  # noqa: E402
from mattrt.export.parity import generated_image  # noqa: E402
from mattrt.models import create_model  # noqa: E402
from mattrt.runtime.diagnostics import calibrated_random_weights  # noqa: E402
from mattrt.runtime.pipeline import Pipeline  # noqa: E402
from mattrt.serving.repository import RepositoryOptions, build_repository  # noqa: E402
from mattrt.serving.server import ServerOptions, TritonServer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODES = [  # (label, protocol, transfer, shm)
    ("triton_http_raw", "http", "raw", "none"),
    ("triton_http_encoded", "http", "encoded", "none"),
    ("triton_http_shm", "http", "raw", "system"),
    ("triton_grpc_raw", "grpc", "raw", "none"),
]


def photo_like(height: int, width: int, index: int = 0, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Generated matting scenes mirrored to fill the size, with optional Gaussian sensor noise."""
    side = min(height, width, 1080)
    base = generated_image(side, index)
    reps_y, reps_x = -(-height // side), -(-width // side)
    rows = [np.concatenate([base if (i + j) % 2 == 0 else base[:, ::-1] for j in range(reps_x)], axis=1)
            for i in range(reps_y)]
    image = np.concatenate(rows, axis=0)[:height, :width].astype(np.float32)
    if noise:
        image += np.random.default_rng(seed).normal(0, noise, image.shape).astype(np.float32)
    return np.ascontiguousarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def measure(run, items: list, concurrency: int) -> dict:
    """Images per second and per-image latency percentiles for run(item) at a concurrency."""
    latencies: list[float] = []

    def timed(item):
        started = time.perf_counter()
        result = run(item)
        latencies.append(time.perf_counter() - started)
        return result

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(timed, items))
    wall = time.perf_counter() - started
    return {
        "images": len(items),
        "seconds": round(wall, 3),
        "images_per_second": round(len(items) / wall, 4),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1),
        "_results": results,
    }


def strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def perf_analyzer_section(server: TritonServer, model: str, height: int, width: int, workdir: Path) -> dict:
    data = workdir / "perf_analyzer_input.json"
    pixels = photo_like(height, width)
    data.write_text(json.dumps({"data": [{"IMAGE": {"b64": base64.b64encode(pixels.tobytes()).decode(),
                                                    "shape": [height, width, 3]}}]}))
    command = [
        "perf_analyzer", "-m", model, "-u", server.endpoints["http"], "-i", "http",
        "--input-data", str(data), "--shape", f"IMAGE:{height},{width},3",
        "--concurrency-range", "1:4", "--measurement-interval", "10000", "--percentile", "99",
    ]
    record = {"command": " ".join(command).replace(str(data), data.name),
              "input_data": f"{data.name}: one {height} x {width} photo-like image as b64 (written by this script)"}
    binary = shutil.which("perf_analyzer")
    if binary is None:
        record["ran"] = False
        record["why_not"] = ("no perf_analyzer binary here: `pip install perf-analyzer` installs the PyPI package "
                             "perf-analyzer 0.1.0, a 2 kB placeholder without the binary (it ships in NVIDIA's Triton "
                             "SDK container and client release archives)")
        return record
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    record.update(ran=True, returncode=done.returncode, output_tail=(done.stdout + done.stderr)[-4000:])
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="export directory (default: export --model into a temp dir)")
    parser.add_argument("--model", default="shm_tiny", help="model to export when --export is not given")
    parser.add_argument("--tile", type=int, default=256, help="tile size of that export (default 256)")
    parser.add_argument("--images", type=int, default=12, help="images per measurement (default 12)")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--instances", type=int, default=1, help="instances per stage model (default 1)")
    parser.add_argument("--skip-4k-requests", action="store_true", help="wire section: sizes only, no 4K requests")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mattrt-triton-bench-"))
    report: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_cores": os.cpu_count(), "platform": platform.platform(),
                    "load_average_at_start": list(os.getloadavg())},
        "versions": {"mattrt": __version__, "python": platform.python_version(), "numpy": np.__version__,
                     "nvidia_pytriton": probe("tritonserver").version, "tritonserver": "2.51.0 (nvidia-pytriton 0.7.0)"
                     if probe("tritonserver").version == "0.7.0" else None, "tritonclient": probe("tritonclient").version,
                     "onnxruntime": probe("onnxruntime").version},
    }
    try:
        export = args.export
        if export is None:
            export = workdir / "export"
            started = time.perf_counter()
            export_model(calibrated_random_weights(create_model(args.model), seed=1), export, tile_size=args.tile,
                         max_batch=4, simplify=False, log=None)
            report["export_seconds"] = round(time.perf_counter() - started, 1)
        images = [photo_like(args.height, args.width, i, noise=3.0, seed=i) for i in range(args.images)]
        pngs = [encode(image, "PNG", compress_level=1) for image in images]
        report["workload"] = {"export": str(export), "model": args.model if args.export is None else str(export),
                              "tile": args.tile, "image": [args.height, args.width], "images": args.images,
                              "instances": args.instances}
        throughput: dict = {}
        with Pipeline.from_artifacts(export) as pipeline:
            report["workload"]["pipeline"] = {k: pipeline.describe()[k] for k in ("tile_size", "overlap", "batch")}
            pipeline.run(images[0])  # warm-up
            run = lambda image: np.rint(pipeline.run(image).alpha * 255).astype(np.uint8)  # noqa: E731
            for concurrency in args.concurrency:
                record = measure(run, images, concurrency)
                throughput.setdefault("in_process", {})[str(concurrency)] = record
                print(f"in_process c={concurrency}: {record['images_per_second']:.3f} img/s "
                      f"p50 {record['p50_ms']} ms p99 {record['p99_ms']} ms", flush=True)
        reference = throughput["in_process"][str(args.concurrency[0])]["_results"]

        repo = build_repository(export, workdir / "repo", RepositoryOptions(name="matting", instances=args.instances),
                                log=None)
        with TritonServer(repo, ServerOptions(ready_timeout=600)) as server:
            for label, protocol, transfer, shm in MODES:
                with TritonMattingClient(server.endpoints[protocol], protocol=protocol, transfer=transfer, shm=shm,
                                         api_key=server.key, timeout=600) as client:
                    items = pngs if transfer == "encoded" else images
                    # warm-up: every pipeline instance, connection and shared-memory region once
                    client.matte_many(items[: 2 * max(args.concurrency)], concurrency=max(args.concurrency))
                    for concurrency in args.concurrency:
                        record = measure(client.matte, items, concurrency)
                        diffs = [int(np.abs(m[..., 0].astype(int) - r).max()) for m, r in zip(record["_results"], reference)]
                        record["max_diff_levels_vs_in_process"] = max(diffs)
                        base = throughput["in_process"][str(concurrency)]["images_per_second"]
                        record["throughput_ratio_vs_in_process"] = round(record["images_per_second"] / base, 3)
                        throughput.setdefault(label, {})[str(concurrency)] = record
                        print(f"{label} c={concurrency}: {record['images_per_second']:.3f} img/s p50 {record['p50_ms']} ms "
                              f"p99 {record['p99_ms']} ms ratio {record['throughput_ratio_vs_in_process']} "
                              f"diff {record['max_diff_levels_vs_in_process']}", flush=True)
            report["throughput"] = {mode: {c: strip(r) for c, r in per.items()} for mode, per in throughput.items()}

            photo = photo_like(2160, 3840, 0, noise=3.0, seed=42)
            png, jpeg = encode(photo, "PNG"), encode(photo, "JPEG", quality=90)
            wire = {
                "image": "3840 x 2160 generated scene + Gaussian noise sigma 3 (photograph-like)",
                "raw_request_bytes": photo.nbytes,
                "png_request_bytes": len(png),
                "jpeg_q90_request_bytes": len(jpeg),
                "raw_over_png": round(photo.nbytes / len(png), 2),
                "raw_over_jpeg_q90": round(photo.nbytes / len(jpeg), 2),
            }
            if not args.skip_4k_requests:
                with TritonMattingClient(server.endpoints["http"], timeout=1200) as raw_client:
                    started = time.perf_counter()
                    raw_matte = raw_client.matte(photo)
                    wire["raw_4k_request_seconds"] = round(time.perf_counter() - started, 2)
                with TritonMattingClient(server.endpoints["http"], transfer="encoded", timeout=1200) as encoded_client:
                    started = time.perf_counter()
                    jpeg_matte = encoded_client.matte(jpeg)
                    wire["jpeg_4k_request_seconds"] = round(time.perf_counter() - started, 2)
                matte_png = encode(raw_matte[..., 0], "PNG", compress_level=3)
                wire["raw_matte_response_bytes"] = int(raw_matte.nbytes)
                wire["png_matte_response_bytes"] = len(matte_png)
                wire["round_trip_raw_bytes"] = int(photo.nbytes + raw_matte.nbytes)
                wire["round_trip_jpeg_png_bytes"] = len(jpeg) + len(matte_png)
                wire["round_trip_ratio"] = round(wire["round_trip_raw_bytes"] / wire["round_trip_jpeg_png_bytes"], 2)
                wire["jpeg_vs_raw_matte_max_diff_levels"] = int(np.abs(raw_matte.astype(int) - jpeg_matte.astype(int)).max())
            report["wire"] = wire
            print(json.dumps(wire), flush=True)
            report["perf_analyzer"] = perf_analyzer_section(server, "matting", args.height, args.width, workdir)
        report["machine"]["load_average_at_end"] = list(os.getloadavg())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = args.out or RESULTS / f"triton-cpu-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
