"""Issue 19's ISNet target: the network at 1024² on the CPU, onnxruntime FP32 against the faster
precisions (onnxruntime INT8, OpenVINO FP32 / BF16 / INT8), with the mask IoU of each against FP32.

- images: the bundled photographs (data/photographs.py), fitted to the card's 1024² canvas by the
  pipeline itself; `--refine none`, so the pipeline runs the network and a bilinear upsample only;
- time: the pipeline's own "semantic" timing (fit to the canvas, normalise, the network, output
  copy), per photograph, after one warm-up run of each variant, variants interleaved and their order
  reversed every round;
- fidelity, against onnxruntime FP32 on the network's own 1024² alpha: IoU of the alpha > 0.5 masks
  (the smallest over the photographs), max and mean |Δalpha|.

Writes benchmarks/results/isnet-precisions-<date>.json and prints one row per variant.

    python benchmarks/isnet_precisions.py [--model isnet] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
from pathlib import Path

import numpy as np

from mattrt.data.photographs import PHOTOGRAPHS, photographs
from mattrt.deploy.plan import DeploymentRequest, open_pipeline
from mattrt.jobs.bench.report import hardware, versions
from mattrt.machine import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
            ("openvino", "int8"))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    mask_a, mask_b = a > 0.5, b > 0.5
    union = int((mask_a | mask_b).sum())
    return float((mask_a & mask_b).sum() / union) if union else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="isnet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()

    images = dict(photographs())
    names = [f"{backend} {precision}" for backend, precision in VARIANTS]
    pipelines = {}
    for (backend, precision), name in zip(VARIANTS, names):
        request = DeploymentRequest(model=args.model, backend=backend, precision=precision,
                                    backend_options={"threads": args.threads}, pipeline_options={"refine": "none"},
                                    cache_dir=args.cache_dir)
        pipelines[name] = open_pipeline(request, log=None).__enter__()
    alphas: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up: first-use compiles and allocations
        pipelines[name].run(images[PHOTOGRAPHS[0]])
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for photo, image in images.items():
            for name in order:
                result = pipelines[name].run(image)
                seconds[name].append(result.timings["semantic"])
                alphas[name][photo] = result.trimap[0]
    reference = alphas[names[0]]
    base = statistics.median(seconds[names[0]])
    rows = []
    for name in names:
        diffs = {photo: np.abs(alphas[name][photo] - reference[photo]) for photo in images}
        ious = {photo: mask_iou(alphas[name][photo], reference[photo]) for photo in images}
        median = statistics.median(seconds[name])
        rows.append({"variant": name, "network_p50_s": median, "speedup_vs_fp32": base / median,
                     "min_mask_iou": min(ious.values()), "mask_iou": ious,
                     "max_abs_diff": max(float(d.max()) for d in diffs.values()),
                     "mean_abs_diff": float(np.mean([d.mean() for d in diffs.values()])),
                     "times_s": seconds[name]})
        print(f"{name:18s} {median:6.3f} s  {base / median:4.2f}x  IoU min {min(ious.values()):.4f}  "
              f"max |Δ| {rows[-1]['max_abs_diff']:.3f}", flush=True)
    for pipeline in pipelines.values():
        pipeline.__exit__(None, None, None)
    date = datetime.date.today().isoformat()
    record = {"benchmark": "isnet_precisions", "date": date, "arguments": {k: str(v) for k, v in vars(args).items()},
              "photographs": list(images), "canvas": list(next(iter(reference.values())).shape),
              "hardware": hardware(), "cpu_flags": cpu_flags(), "versions": versions(),
              "load_average_before_after": [load_before, os.getloadavg()], "rows": rows}
    out = args.out or RESULTS / f"isnet-precisions-{date}.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
