"""TensorRT parity and latency per stage (not a test): for a machine with TensorRT and a GPU.

For every precision the export has (fp32, FP16 graph, INT8 Q/DQ graph), build the plans with
`mattrt build`'s code (engines/tensorrt/build.py), then per stage:
- parity: TensorRT's outputs against onnxruntime running the FP32 graph (the fidelity of the
  precision) and against onnxruntime running the same graph TensorRT built (TensorRT's own
  error at that precision), on the stage inputs the pipeline really produces (recorded from
  synthetic images, calibration.feeds at the fidelity seed), as max abs error and relative L2;
- latency: p50 and p99 of `run_device` at the profile's batch (inputs already on the GPU),
  timed with CUDA events on the caller's stream, CUDA graphs off and on, side by side.
Failures are recorded per precision and stage; the others still run.

Needs: TensorRT with its builder (`tensorrt`), CuPy with a CUDA device, onnxruntime. Run from
the repository root with an export that has the precisions to compare:

    python benchmarks/trt_parity.py EXPORT_DIR [--precisions fp32,fp16,int8] [--profile server]
                                    [--repeats 100] [--warmup 10] [--samples 16] [--plans DIR]

Writes benchmarks/results/trt-parity-<gpu>-<date>.json. Exits with status 2 and the missing
dependency's message when the machine cannot build plans (nothing is measured then).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from checkout import ROOT, ensure_mattrt_importable  # noqa: E402  (benchmarks/ is on sys.path)

RESULTS = ROOT / "benchmarks" / "results"


def fail(message: str) -> None:
    print(f"benchmarks/trt_parity.py: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path, help="export directory (mattrt export, mattrt precision)")
    parser.add_argument("--precisions", default="fp32,fp16,int8",
                        help="comma-separated; those the export lacks are skipped")
    parser.add_argument("--profile", default="server", help="TensorRT profile (server, jetson-orin, jetson-orin-dla)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per stage and configuration")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    parser.add_argument("--samples", type=int, default=16, help="synthetic images whose stage inputs are compared")
    parser.add_argument("--plans", type=Path, help="plans directory (default: a temporary one)")
    return parser.parse_args(argv)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    difference = candidate - reference
    norm = float(np.linalg.norm(reference))
    return {"max_abs": float(np.abs(difference).max()),
            "rel_l2": float(np.linalg.norm(difference) / norm) if norm > 0 else float(np.linalg.norm(difference))}


def run_onnxruntime(path: Path, feeds: list[dict[str, np.ndarray]], output_names: list[str]) -> list[dict]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [dict(zip(output_names, session.run(output_names, feed))) for feed in feeds]


def percentile_ms(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times), q))


def time_device(engine, device_feeds: dict, repeats: int, warmup: int) -> dict:
    """p50/p99 of run_device in milliseconds (CUDA events on the caller's stream)."""
    import cupy

    for _ in range(warmup):
        engine.run_device(device_feeds)
    stream = cupy.cuda.get_current_stream()
    times = []
    for _ in range(repeats):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        engine.run_device(device_feeds)
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return {"p50_ms": percentile_ms(times, 50), "p99_ms": percentile_ms(times, 99), "repeats": repeats}


def measure_precision(args, manifest, feeds_by_stage, precision: str, plans_dir: Path, references: dict) -> dict:
    import cupy

    from mattrt.engines.tensorrt.build import build_plans, get_profile, optimum_batch
    from mattrt.engines.tensorrt.engine import open_plans

    started = time.perf_counter()
    metadata = build_plans(args.export_dir, plans_dir, precision=precision, profile=args.profile)
    record = {"build_seconds": round(time.perf_counter() - started, 2), "notes": metadata["notes"], "stages": {}}
    profile = get_profile(args.profile)
    for graphs in (False, True):
        _, engines = open_plans(plans_dir, precision=precision, cuda_graphs=graphs)
        for entry in manifest.stages:
            stage = record["stages"].setdefault(entry.name, {})
            engine = engines[entry.name]
            try:
                with engine:
                    samples = feeds_by_stage[entry.name]
                    if not graphs:  # parity once (the graphs replay the same kernels)
                        outputs = [engine.run(feed) for feed in samples]
                        same = run_onnxruntime(args.export_dir / entry.file_for(precision, "tensorrt"), samples,
                                               engine.output_names)
                        for name in engine.output_names:
                            trt_all = np.concatenate([o[name] for o in outputs])
                            fp32 = np.concatenate([r[name] for r in references[entry.name]])
                            stage.setdefault("parity", {})[name] = {
                                "vs_onnxruntime_fp32": compare(fp32, trt_all),
                                f"vs_onnxruntime_{precision}_graph": compare(
                                    np.concatenate([r[name] for r in same]), trt_all),
                            }
                    batch = optimum_batch(entry, manifest, profile)
                    stacked = {k: np.concatenate([s[k] for s in samples])[:batch] for k in engine.input_names}
                    if next(iter(stacked.values())).shape[0] < batch:  # repeat samples up to the batch
                        stacked = {k: np.resize(v, (batch, *v.shape[1:])) for k, v in stacked.items()}
                    device_feeds = {k: cupy.asarray(v) for k, v in stacked.items()}
                    stage[f"latency_cuda_graphs_{'on' if graphs else 'off'}"] = {
                        "batch": batch, **time_device(engine, device_feeds, args.repeats, args.warmup)}
            except Exception as exc:  # recorded; the other stages still run
                stage[f"error_cuda_graphs_{'on' if graphs else 'off'}"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_mattrt_importable()
    from mattrt.errors import MattrtError
    from mattrt.runtime.engine import require_all

    try:
        require_all(("tensorrt", "cupy_device", "onnxruntime"), "benchmarks/trt_parity.py")
    except MattrtError as exc:
        fail(f"{exc}; nothing was measured")
    import cupy
    import tensorrt

    from mattrt.calibration.feeds import FIDELITY_SEED, collect_stage_feeds, parse_data_source
    from mattrt.engines.tensorrt.build import gpu_identity
    from mattrt.manifest import Manifest

    manifest = Manifest.load(args.export_dir)
    wanted = [p.strip() for p in args.precisions.split(",") if p.strip()]
    precisions = [p for p in wanted if all(entry.file_for(p, "tensorrt") for entry in manifest.stages)]
    recorded = collect_stage_feeds(args.export_dir, parse_data_source(f"synthetic:{args.samples}", seed=FIDELITY_SEED),
                                   max_samples=64)
    feeds_by_stage = {name: list(stage.batches(1)) for name, stage in recorded.items()}
    references = {entry.name: run_onnxruntime(args.export_dir / entry.files["fp32"], feeds_by_stage[entry.name],
                                              entry.output_names) for entry in manifest.stages}
    gpu = gpu_identity()
    results = {
        "script": "benchmarks/trt_parity.py",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "export": str(args.export_dir), "model": manifest.model, "profile": args.profile,
        "tensorrt": tensorrt.__version__, "cupy": cupy.__version__, "gpu": gpu.describe(),
        "python": platform.python_version(), "skipped_precisions": sorted(set(wanted) - set(precisions)),
        "inputs": f"stage inputs recorded from {args.samples} synthetic images (seed {FIDELITY_SEED})",
        "precisions": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        plans_dir = args.plans or Path(scratch) / "plans"
        for precision in precisions:
            try:
                results["precisions"][precision] = measure_precision(args, manifest, feeds_by_stage, precision,
                                                                     plans_dir, references)
            except Exception as exc:
                results["precisions"][precision] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
    RESULTS.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-")
    path = RESULTS / f"trt-parity-{slug}-{_dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
