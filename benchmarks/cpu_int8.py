"""CPU INT8 benchmark (not a test): onnxruntime's CPU provider on one stage graph, FP32 vs the
TensorRT-form INT8 graph (symmetric S8S8 Q/DQ) vs onnxruntime's CPU INT8 graph (U8S8 Q/DQ),
interleaved in one process at explicit thread counts, and the INT8 delta SAD of an
aim_synthetic export through the fidelity report.

    .venv/bin/python benchmarks/cpu_int8.py --export DIR_AIM --fidelity-export DIR_AIM_SYNTHETIC

--export: an export directory (`mattrt export aim --out DIR`: the detail stage at 512 x 512).
  With INT8 graphs in it (`mattrt precision DIR --precision int8`) the script times the files the
  manifest names. Without, it records the runtime's detail tiles of a few synthetic images
  (calibration.feeds), calibrates one ranges file on them and builds both INT8 graphs from it
  with the library (calibrate_ranges, build_int8, build_cpu_int8; no exclusion plan: the figure
  is about speed) into --work, never into the export.
--fidelity-export: an export with INT8 graphs (aim_synthetic); `fidelity_report` on
  synthetic:24 gives delta SAD % against FP32 for both INT8 graphs through the full pipeline.

Timing: one session per (graph, thread count), inter-op threads 1, one warm-up run each, then
`--repeats` rounds; every round runs every session once, in turn, so that a busy machine slows
all of them alike. Reported: the median (p50) per session and FP32 / INT8 ratios of the medians
at the same thread count. The machine may be shared: the load average is recorded before and
after. Writes benchmarks/results/cpu_int8-<date>.json (or --json) and prints a table.
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

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("fp32", "int8_tensorrt_form", "int8_cpu")


def machine() -> dict:
    flags: set[str] = set()
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = sorted(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f)
    return {"cpu": model, "simd": simd, "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    import onnx
    import onnxruntime

    from mattrt import __version__

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"mattrt": __version__, "git_commit": commit, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "numpy": np.__version__}


def graphs_to_time(export: Path, stage: str, work: Path, calibration: str, log) -> tuple[dict[str, Path], dict]:
    """{variant: graph path} for `stage` and how the INT8 graphs came about."""
    from mattrt.calibration.calibrate import calibrate_ranges
    from mattrt.calibration.feeds import collect_stage_feeds, parse_data_source
    from mattrt.calibration.int8_cpu import build_cpu_int8
    from mattrt.calibration.int8_tensorrt import build_int8
    from mattrt.manifest import Manifest

    manifest = Manifest.load(export)
    entry = manifest.stage(stage)
    fp32 = export / entry.files["fp32"]
    cpu_file = entry.file_for("int8", "onnxruntime")
    if "int8" in entry.files and cpu_file and cpu_file != entry.files["int8"]:
        return ({"fp32": fp32, "int8_tensorrt_form": export / entry.files["int8"], "int8_cpu": export / cpu_file},
                {"source": "the export's manifest (mattrt precision)", "record": entry.parity.get("int8_cpu")})
    work.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": fp32, "int8_tensorrt_form": work / f"{stage}.int8.onnx", "int8_cpu": work / f"{stage}.int8_cpu.onnx"}
    ranges = work / f"{stage}.int8.ranges.json"
    side = entry.spatial_size
    source = parse_data_source(calibration, size=(side + side // 4, side))
    how = {"source": f"calibrated here on {source.describe()}: the runtime's {stage} inputs; entropy; no exclusion plan",
           "work": str(work)}
    record = work / f"{stage}.int8.how.json"
    if record.is_file() and all(p.is_file() for p in paths.values()):
        return paths, {**json.loads(record.read_text()), "reused": True}
    log(f"calibrating {stage} on {source.describe()} ...")
    samples = collect_stage_feeds(export, source, max_samples=8)[stage].samples
    how["samples"] = len(samples)
    how["calibrated_tensors"] = calibrate_ranges(fp32, samples, ranges, batch=min(4, len(samples)), stage=stage)
    build_int8(fp32, ranges, paths["int8_tensorrt_form"])
    build_cpu_int8(fp32, ranges, paths["int8_cpu"])
    record.write_text(json.dumps(how, indent=2) + "\n")
    return paths, how


def time_graphs(paths: dict[str, Path], threads: list[int], repeats: int, batch: int, log) -> dict:
    import onnxruntime as ort

    sessions = {}
    for count in threads:
        for variant, path in paths.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads = count
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            sessions[(count, variant)] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    first = next(iter(sessions.values())).get_inputs()[0]
    shape = [batch] + [int(d) for d in first.shape[1:]]
    feed = {first.name: np.random.default_rng(0).uniform(-2.0, 2.5, shape).astype(np.float32)}
    for session in sessions.values():
        session.run(None, feed)  # warm-up
    times: dict = {key: [] for key in sessions}
    for round_ in range(repeats):
        for key, session in sessions.items():
            started = time.perf_counter()
            session.run(None, feed)
            times[key].append(time.perf_counter() - started)
        log(f"  round {round_ + 1}/{repeats}: " + ", ".join(f"{v}@{t}t {times[(t, v)][-1] * 1000:.0f} ms"
                                                         for t, v in sessions))
    result = {}
    for count in threads:
        p50 = {v: float(np.median(times[(count, v)])) for v in paths}
        result[str(count)] = {
            "p50_ms": {v: round(s * 1000, 1) for v, s in p50.items()},
            "all_ms": {v: [round(s * 1000, 1) for s in times[(count, v)]] for v in paths},
            "speedup_vs_fp32": {v: round(p50["fp32"] / p50[v], 3) for v in paths if v != "fp32"},
        }
    return {"input": {"name": first.name, "shape": shape}, "threads": result}


def fidelity(export: Path, data: str, threads: int, log) -> dict:
    from mattrt.calibration.fidelity import fidelity_report

    report, _, _ = fidelity_report(export, data, precisions=["int8", "int8_cpu"], threads=threads, log=log)
    summary = {"export": str(export), "model": report["model"], "data": report["data"], "images": report["images"]}
    for variant in ("fp32", "int8", "int8_cpu"):
        entry = report["precisions"][variant]
        item = {"graphs": entry["graphs"], "sad_mean": entry.get("vs_gt_mean", {}).get("sad")}
        item.update({k: entry["vs_fp32"][k] for k in ("delta_sad_percent", "sad_to_fp32_percent", "psnr_mean",
                                                       "pixels_over_0.1_percent") if k in entry.get("vs_fp32", {})})
        if "target" in entry:
            item["target"] = entry["target"]
        summary["int8_tensorrt_form" if variant == "int8" else variant] = item
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, required=True, help="export directory whose stage graph is timed")
    parser.add_argument("--stage", default="detail")
    parser.add_argument("--fidelity-export", type=Path, default=None,
                        help="export with INT8 graphs for the delta SAD figures (aim_synthetic)")
    parser.add_argument("--fidelity-data", default="synthetic:24")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "mattrt-cpu-int8-benchmark",
                        help="where INT8 graphs of an export without them are built and kept (reused)")
    parser.add_argument("--calibration", default="synthetic:4", help="calibration images when the export has no INT8")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--weights", default="PyTorch initialisation (untrained): speed does not depend on the values",
                        help="how the timed export's weights were made, for the record")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    date = datetime.datetime.now(datetime.timezone.utc)
    target = args.json or RESULTS / f"cpu_int8-{date:%Y-%m-%d}.json"
    if target.exists():
        print(f"{target} exists; pass another --json", file=sys.stderr)
        return 1
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    result: dict = {"kind": "mattrt CPU INT8 benchmark", "date": date.isoformat(timespec="seconds"),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
                    "versions": versions(), "load_average_before": list(os.getloadavg())}
    from mattrt.manifest import Manifest

    manifest = Manifest.load(args.export)
    entry = manifest.stage(args.stage)
    paths, how = graphs_to_time(args.export, args.stage, args.work, args.calibration, log)
    result["speed"] = {"model": manifest.model, "stage": args.stage, "spatial_size": entry.spatial_size,
                       "weights": args.weights, "checkpoint_sha256": manifest.checkpoint_sha256,
                       "graphs": {v: str(p) for v, p in paths.items()}, "int8_graphs": how,
                       "provider": "onnxruntime CPUExecutionProvider"}
    log(f"timing {manifest.model} {args.stage} ({entry.spatial_size} x {entry.spatial_size}, batch {args.batch}), "
        f"threads {threads}, {args.repeats} interleaved rounds")
    result["speed"].update(time_graphs(paths, threads, args.repeats, args.batch, log))
    result["load_average_after_speed"] = list(os.getloadavg())
    if args.fidelity_export is not None:
        log(f"fidelity of {args.fidelity_export} on {args.fidelity_data}")
        result["fidelity"] = fidelity(args.fidelity_export, args.fidelity_data, max(threads), log)
    result["load_average_after"] = list(os.getloadavg())
    result["targets"] = {"cpu_int8_speedup_vs_fp32_at_least": 1.5, "abs_delta_sad_percent_at_most": 3.0}

    print(f"\n{manifest.model} {args.stage} at {entry.spatial_size} x {entry.spatial_size}, onnxruntime CPU, p50 ms")
    for count, row in result["speed"]["threads"].items():
        cells = ", ".join(f"{v} {row['p50_ms'][v]:.0f}" for v in paths)
        ratios = ", ".join(f"{v} x{r:.2f}" for v, r in row["speedup_vs_fp32"].items())
        print(f"  {count} thread(s): {cells}  (speed-up vs fp32: {ratios})")
    if "fidelity" in result:
        for variant in ("int8_tensorrt_form", "int8_cpu"):
            item = result["fidelity"][variant]
            print(f"  {variant}: delta SAD {item['delta_sad_percent']:+.3f}% vs FP32 "
                  f"(SAD to FP32 {item['sad_to_fp32_percent']:.3f}%) on {result['fidelity']['data']}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
