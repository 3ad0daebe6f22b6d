"""GPU pipeline latency (not a test): one 4K image through the whole Pipeline with torch CUDA
engines, for tiny and full models, in four configurations measured side by side in one run:

    engine kernels   off | on      TorchEngine(kernels=...): F.max_unpool2d and AlphaNet's
                                   attention pooling through mattrt's custom ops (CuPy kernels)
    per-pixel work   host | device  Pipeline(pixel_ops=...): tile preprocessing, guidance crops,
                                   stitching and fusion in NumPy on the CPU, or through the CUDA
                                   kernels on the GPU (tiles fed to the engine without copies)

For each model and configuration: end-to-end latency (median and best of --repeats runs after
--warmup runs; a run ends with the alpha on the host), the pipeline's own per-step timings (it
synchronises the device at each step boundary), the custom-op calls the engines routed, and
the largest alpha difference from the baseline (kernels off, host per-pixel work). Ratios to
the baseline are printed side by side. The same model weights (calibrated random weights:
untrained networks are near-constant, see mattrt.runtime.diagnostics) serve every
configuration of a model. Failures are recorded per measurement; the others still run.

Needs: an NVIDIA GPU, a CUDA build of torch, CuPy (cupy-cuda12x or cupy-cuda13x), NumPy, SciPy
(the pipeline's resize). Run from the repository root:

    python benchmarks/pipeline_gpu.py [--models aim_tiny,aim,alphanet_tiny,alphanet]
                                      [--size 3840x2160] [--repeats 5] [--warmup 1] [--batch 4]

Writes benchmarks/results/pipeline-gpu-<gpu>-<date>.json. Exits with status 2 and a message when
the machine has no GPU (nothing is measured then).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from checkout import ROOT, ensure_mattrt_importable  # noqa: E402  (benchmarks/ is on sys.path)

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_MODELS = ("aim_tiny", "aim", "alphanet_tiny", "alphanet")
# (engine kernels, per-pixel work); the first is the baseline of the ratios.
CONFIGS = ((False, "host"), (True, "host"), (False, "device"), (True, "device"))
STEPS = ("semantic", "detail_resize", "guidance", "upload", "preprocess", "detail", "stitch_fusion", "download")


def fail(message: str) -> None:
    print(f"benchmarks/pipeline_gpu.py: {message}", file=sys.stderr)
    sys.exit(2)


def check_environment():
    """torch with CUDA and CuPy with a device, or exit 2 naming what is missing."""
    missing = [name for name in ("torch", "cupy", "scipy") if importlib.util.find_spec(name) is None]
    if missing:
        fail(f"needs {', '.join(missing)} (a CUDA build of torch, cupy-cuda12x or cupy-cuda13x, scipy)")
    import torch

    if not torch.cuda.is_available():
        fail(f"needs an NVIDIA GPU seen by torch (torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
             "this machine has none, so nothing was measured")
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("CuPy sees no device")
    except Exception as exc:
        fail(f"needs CuPy with a CUDA device for the device-side per-pixel work and the kernels ({exc})")
    return torch, cupy


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic photo-like uint8 image: a shaded backdrop, an elliptic subject with a
    strand-textured edge (soft alpha everywhere along it) and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = yy / height, xx / width
    backdrop = np.stack([0.35 + 0.3 * x, 0.45 + 0.2 * y, 0.55 - 0.25 * x * y], axis=-1)
    angle = np.arctan2(y - 0.55, (x - 0.5) * width / height)
    radius = np.hypot((x - 0.5) * width / height, (y - 0.55) / 1.2)
    edge = 0.32 + 0.015 * np.sin(angle * 140) + 0.008 * np.sin(angle * 37 + 1.0)
    subject = np.clip((edge - radius) / 0.01, 0, 1)[..., None]
    skin = np.stack([0.85 - 0.2 * y, 0.6 - 0.1 * y, 0.45 + 0.1 * x], axis=-1)
    image = subject * skin + (1 - subject) * backdrop + rng.normal(0, 0.02, (height, width, 3)).astype(np.float32)
    from mattrt.imageio import quantise  # the benchmarks import mattrt once the checkout is on the path

    return quantise(np.clip(image, 0, 1), 8, "image")


def build_model(name: str, weights: str):
    from mattrt.models import create_model
    from mattrt.runtime.diagnostics import calibrated_random_weights

    model = create_model(name)
    return calibrated_random_weights(model) if weights == "calibrated" else model.eval()


def measure(model, image: np.ndarray, *, device: str, kernels: bool, pixel_ops: str, precision: str, batch: int,
            repeats: int, warmup: int, synchronize) -> tuple[dict, np.ndarray]:
    """One configuration: latency, per-step timings, routed calls; returns (row, alpha)."""
    from mattrt.runtime.pipeline import Pipeline

    with Pipeline.from_model(model, device=device, precision=precision, kernels=kernels, pixel_ops=pixel_ops,
                             batch=batch) as pipeline:
        described = pipeline.describe()
        for _ in range(warmup):
            pipeline.run(image)
        seconds, steps = [], {key: [] for key in STEPS}
        result = None
        for _ in range(repeats):
            synchronize()
            started = time.perf_counter()
            result = pipeline.run(image)
            seconds.append(time.perf_counter() - started)  # the alpha is on the host: the run is over
            for key in STEPS:
                if key in result.timings:
                    steps[key].append(result.timings[key])
        runs = warmup + repeats
        calls = {stage: {op: n // runs for op, n in getattr(engine, "kernel_calls", {}).items()}
                 for stage, engine in pipeline.engines.items()}
        fallbacks = {stage: dict(getattr(engine, "kernel_fallbacks", {})) for stage, engine in pipeline.engines.items()}
    row = {
        "kernels": kernels,
        "pixel_ops": described["pixel_ops"],
        "pixel_ops_reason": described["pixel_ops_reason"],
        "latency_ms_median": 1e3 * statistics.median(seconds),
        "latency_ms_best": 1e3 * min(seconds),
        "latency_ms_all": [round(1e3 * s, 3) for s in seconds],
        "steps_ms_median": {key: 1e3 * statistics.median(v) for key, v in steps.items() if v},
        "routed_calls_per_run": {stage: c for stage, c in calls.items() if c},
        "fallbacks": {stage: f for stage, f in fallbacks.items() if f},
        "tiles": result.plan["tiles"],
        "plan": {k: result.plan[k] for k in ("tile", "overlap", "rows", "columns", "tiles")},
    }
    return row, result.alpha


def run_model(name: str, image: np.ndarray, *, device: str, device_pixel_ops: str, precision: str, batch: int,
              repeats: int, warmup: int, weights: str, synchronize, cleanup, configs=CONFIGS) -> list[dict]:
    """Every configuration of one model (each guarded), with ratios and alpha differences to the first."""
    rows: list[dict] = []
    print(f"[{name}] building the model ({weights} weights)", flush=True)
    started = time.perf_counter()
    try:
        model = build_model(name, weights)
    except Exception as exc:
        print(f"  FAILED to build: {type(exc).__name__}: {exc}", flush=True)
        return [{"model": name, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}]
    parameters = int(sum(p.numel() for p in model.parameters()))
    print(f"  {parameters / 1e6:.2f} M parameters, built in {time.perf_counter() - started:.1f} s", flush=True)
    baseline_alpha = None
    baseline_ms = None
    for kernels, pixel in configs:
        pixel_ops = device_pixel_ops if pixel == "device" else "host"
        label = f"kernels {'on ' if kernels else 'off'} | per-pixel {pixel}"
        started = time.perf_counter()
        try:
            row, alpha = measure(model, image, device=device, kernels=kernels, pixel_ops=pixel_ops, precision=precision,
                                 batch=batch, repeats=repeats, warmup=warmup, synchronize=synchronize)
            row.update(model=name, parameters=parameters, config=label, error=None)
            if baseline_alpha is None:
                baseline_alpha, baseline_ms = alpha, row["latency_ms_median"]
            difference = np.abs(alpha.astype(np.float64) - baseline_alpha)
            row["alpha_vs_baseline"] = {"max_abs": float(difference.max()), "mean_abs": float(difference.mean()),
                                        "pixels_over_1e-3": int((difference > 1e-3).sum())}
            row["ratio_to_baseline"] = row["latency_ms_median"] / baseline_ms
            print(f"  {label}: {row['latency_ms_median']:9.1f} ms (best {row['latency_ms_best']:.1f}), "
                  f"x{row['ratio_to_baseline']:.3f} of baseline, max|d alpha| {row['alpha_vs_baseline']['max_abs']:.2e}, "
                  f"routed {row['routed_calls_per_run'] or '-'}", flush=True)
        except Exception as exc:
            print(f"  {label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            row = {"model": name, "config": label, "kernels": kernels, "pixel_ops": pixel_ops,
                   "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        finally:
            cleanup()
        row["wall_s"] = round(time.perf_counter() - started, 1)
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    header = ["model", "config", "median ms", "x baseline", *(f"{s} ms" for s in STEPS), "max|d alpha|"]
    lines = []
    for row in rows:
        if row.get("error"):
            lines.append([row["model"], row.get("config", ""), "FAILED", row["error"][:50]] + [""] * (len(header) - 4))
            continue
        steps = row["steps_ms_median"]
        lines.append([row["model"], row["config"], f"{row['latency_ms_median']:.1f}", f"{row['ratio_to_baseline']:.3f}",
                      *(f"{steps[s]:.1f}" if s in steps else "-" for s in STEPS),
                      f"{row['alpha_vs_baseline']['max_abs']:.1e}"])
    widths = [max(len(str(h)), *(len(str(line[i])) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))


def side_by_side(rows: list[dict]) -> dict:
    """Per model: kernels on/off at each per-pixel placement, device/host at each kernels setting."""
    summary = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        ok = {(r["kernels"], r["pixel_ops"] != "host"): r["latency_ms_median"] for r in rows
              if r["model"] == model and not r.get("error")}
        ratios = {}
        for device_side in (False, True):
            if (True, device_side) in ok and (False, device_side) in ok:
                where = "device" if device_side else "host"
                ratios[f"kernels_on_over_off_with_{where}_pixel_ops"] = ok[(True, device_side)] / ok[(False, device_side)]
        for kernels in (False, True):
            if (kernels, True) in ok and (kernels, False) in ok:
                ratios[f"device_over_host_pixel_ops_with_kernels_{'on' if kernels else 'off'}"] = (
                    ok[(kernels, True)] / ok[(kernels, False)])
        if (True, True) in ok and (False, False) in ok:
            ratios["all_on_over_baseline"] = ok[(True, True)] / ok[(False, False)]
        summary[model] = ratios
    return summary


def environment(torch, cupy) -> dict:
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {
        "gpu": name,
        "compute_capability": f"{props['major']}.{props['minor']}",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cupy": cupy.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_threads_torch": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 3840x2160; got {text!r}")
    return int(match.group(2)), int(match.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated registered models")
    parser.add_argument("--size", type=parse_size, default=(2160, 3840), help="image WIDTHxHEIGHT (default 3840x2160)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (allocations, kernel compilation)")
    parser.add_argument("--batch", type=int, default=4, help="tiles per detail call")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--weights", choices=("calibrated", "default"), default="calibrated",
                        help="calibrated random weights (meaningful alphas) or PyTorch's initialisation (faster to build)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default: benchmarks/results/pipeline-gpu-<gpu>-<date>.json)")
    args = parser.parse_args(argv)

    torch, cupy = check_environment()
    ensure_mattrt_importable()
    env = environment(torch, cupy)
    height, width = args.size
    print(f"{env['gpu']} (sm_{env['compute_capability'].replace('.', '')}), torch {env['torch']} "
          f"(CUDA {env['torch_cuda']}), CuPy {env['cupy']}; image {width}x{height}", flush=True)
    image = synthetic_image(height, width)

    def cleanup() -> None:
        try:
            torch.cuda.synchronize()
            cupy.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()
        except Exception as exc:  # after a device fault these raise too; the next measurement records its own
            print(f"  cleanup failed: {type(exc).__name__}: {exc}", flush=True)

    started = time.time()
    rows: list[dict] = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows += run_model(name, image, device="cuda", device_pixel_ops="device", precision=args.precision,
                          batch=args.batch, repeats=args.repeats, warmup=args.warmup, weights=args.weights,
                          synchronize=torch.cuda.synchronize, cleanup=cleanup)

    print()
    print_table(rows)
    ratios = side_by_side(rows)
    print("\nratios (< 1: faster):")
    for model, values in ratios.items():
        print(f"  {model}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    failed = [f"{r['model']} {r.get('config', '')}".strip() for r in rows if r.get("error")]
    print(f"failed: {failed or 'none'}")

    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["gpu"]).strip("-").lower()
    path = args.out or RESULTS / f"pipeline-gpu-{slug}-{env['date'][:10]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env,
               "settings": {"image": [height, width], "repeats": args.repeats, "warmup": args.warmup,
                            "batch": args.batch, "precision": args.precision, "weights": args.weights,
                            "configs": [{"kernels": k, "pixel_ops": p} for k, p in CONFIGS],
                            "timing": "perf_counter around Pipeline.run (alpha on the host), after a device sync"},
               "ratios": ratios, "failed": failed, "wall_s": round(time.time() - started, 1), "results": rows}
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
