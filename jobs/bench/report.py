"""What a benchmark run reports: one row per case (statistics, memory, accuracy), the tiled
pipeline against the baselines, the machine and library versions, the plots, and the JSON/CSV
files; `run_bench` runs a whole benchmark from its options."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mattrt import __version__
from mattrt.availability import probe
from mattrt.charts import labelled_points, save_png, value_chart
from mattrt.errors import InputError
from mattrt.jobs.bench.measure import STAGES, run_cases, summarize
from mattrt.jobs.bench.plan import (
    PIPELINE_KINDS,
    SAMPLE_KIND,
    SAMPLE_SEED,
    BenchOptions,
    BenchPlan,
    Case,
    build_plan,
    resolution_label,
    result_paths,
)
from mattrt.lazy import is_loaded, lazy_import
from mattrt.machine import cpu_model, isa_flags
from mattrt.runtime import threads as thread_settings

torch = lazy_import("torch", probe="torch")


def case_row(case: Case) -> dict[str, Any]:
    """One CSV/JSON row: the variant, the statistics of the measured runs, memory and accuracy."""
    v = case.variant
    width, height = case.size
    row: dict[str, Any] = {
        "kind": v.kind, "label": v.label, "backend": v.backend, "device": v.device, "precision": v.precision,
        "resolution": case.resolution, "width": width, "height": height, "tile": v.tile, "batch": v.batch,
        "threads": v.threads, "sweep": v.sweep, "refine": v.refine, "status": case.status, "reason": case.reason,
    }
    measured = [r for r in case.runs if r["measured"]]
    if case.status != "ok" or not measured:
        return row
    total = summarize([r["total"] for r in measured])
    row.update({f"{k}_s": total[k] for k in ("p50", "p90", "p99", "mean", "std", "min", "max")})
    row["runs"] = total["n"]
    row["images_per_s"] = 1.0 / total["mean"]
    row["megapixels_per_s"] = width * height / 1e6 / total["mean"]
    row["matting_p50_s"] = summarize([r["matting"] for r in measured])["p50"]
    for stage in STAGES:
        values = [r[stage] for r in measured if stage in r]
        row[f"{stage}_p50_s"] = summarize(values)["p50"] if values else None
    if any("device_seconds" in r for r in measured):
        row["device_p50_s"] = summarize([r["device_seconds"] for r in measured])["p50"]
        row["device_peak_mib"] = max(r["device_peak_mib"] for r in measured)
    for key in ("memory_io_read_mib", "memory_matting_mib", "memory_io_write_mib", "peak_rss_mib"):
        # Memory is a high-water mark: warm-up runs count (they make the allocations later runs reuse).
        values = [r[key] for r in case.runs if r.get(key) is not None]
        row[key] = max(values) if values else None
    for key, value in case.extra.get("stage_memory_mib", {}).items():
        row[f"memory_{key}_mib"] = value
    row["sad"] = case.extra.get("sad")
    row["mse"] = case.extra.get("mse")
    versus = case.extra.get("vs_fp32")
    if versus:  # fidelity against the FP32 reference (measure.compare_to_fp32); speed ratio: add_fp32_ratios
        row.update(fp32_reference=versus["reference"], delta_sad_pct=versus["delta_sad_pct"],
                   max_abs_delta_alpha=versus["max_abs_delta"], tail_abs_delta_alpha=versus["tail_abs_delta"])
    return row


def add_fp32_ratios(rows: list[dict]) -> None:
    """speedup_vs_fp32: the FP32 reference's p50 over the row's, beside its ΔSAD and |Δalpha|."""
    p50 = {(r["label"], r["resolution"]): r.get("p50_s") for r in rows}
    for row in rows:
        reference = p50.get((row.get("fp32_reference"), row["resolution"]))
        if reference and row.get("p50_s"):
            row["speedup_vs_fp32"] = reference / row["p50_s"]


BASELINE_KINDS = ("authors", "whole_onnx", "rembg", "rembg_am")


def compare_baselines(rows: list[dict]) -> list[dict]:
    """Per resolution: the first main variant of mattrt's pipeline (tiled, or alpha with its
    refinement) against each baseline (time ratio, SAD)."""
    out = []
    for resolution in dict.fromkeys(r["resolution"] for r in rows):
        here = [r for r in rows if r["resolution"] == resolution and r["status"] == "ok" and not r["sweep"]]
        tiled = next((r for r in here if r["kind"] in PIPELINE_KINDS and r.get("refine") != "none"), None)
        if tiled is None:
            continue
        for baseline in (r for r in here if r["kind"] in BASELINE_KINDS):
            out.append({
                "resolution": resolution, "tiled": tiled["label"], "baseline": baseline["label"],
                "tiled_p50_s": tiled["p50_s"], "baseline_p50_s": baseline["p50_s"],
                "time_ratio_tiled_over_baseline": tiled["p50_s"] / baseline["p50_s"],
                "tiled_sad": tiled["sad"], "baseline_sad": baseline["sad"],
                "sad_ratio_tiled_over_baseline": tiled["sad"] / baseline["sad"] if baseline["sad"] else None,
            })
    return out


def _git_revision() -> dict:
    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                              check=False)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10,
                               check=False)
        if head.returncode:
            return {"revision": None, "why": head.stderr.strip()[:200]}
        return {"revision": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"revision": None, "why": str(exc)}


def _memory_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def hardware() -> dict:
    info = {
        "cpu": cpu_model(), "isa_flags": isa_flags(), "cores": os.cpu_count(),
        "available_cores": thread_settings.available_cores(),
        "memory_gib": _memory_total_gib(), "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if is_loaded(torch) and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    found = {"mattrt": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "onnxruntime", "openvino", "tensorrt_runtime", "cupy", "tritonclient"):
        result = probe(name)
        found[name] = result.version if result.found else None
    return found


def draw_plots(rows: list[dict], paths: dict[str, Path], title: str) -> list[str]:
    """The three PNGs (matplotlib, mattrt/charts.py): latency per variant (bars with values at one
    resolution, curves over megapixels at several), the tile sweep, and speed against accuracy
    (labelled points). Returns the plots written; a plot with no data is left out."""
    ok = [r for r in rows if r["status"] == "ok"]
    written = []
    series = {}
    for row in (r for r in ok if not r["sweep"]):
        x, y = series.setdefault(_short_label(row), ([], []))
        x.append(row["width"] * row["height"] / 1e6)
        y.append(row["p50_s"])
    if series:
        save_png(value_chart(series, title=f"{title}: p50 end-to-end latency", x_label="megapixels",
                             y_label="p50 seconds", value_unit=" s"), paths["latency_plot"])
        written.append(str(paths["latency_plot"]))
    sweep = {}
    for row in (r for r in ok if r["kind"] == "tiled"):
        if not any(o["sweep"] and o["backend"] == row["backend"] and o["device"] == row["device"]
                   and o["resolution"] == row["resolution"] for o in ok):
            continue
        label = f"{_short_label(row)}, batch {row['batch'] or 'auto'}, {row['threads']} threads"
        x, y = sweep.setdefault(label, ([], []))
        x.append(row["tile"])
        y.append(row["p50_s"])
    if sweep:
        save_png(value_chart(sweep, title=f"{title}: tile-size sweep at the largest resolution",
                             x_label="tile size (px)", y_label="p50 seconds", value_unit=" s"), paths["tile_plot"])
        written.append(str(paths["tile_plot"]))
    points = [(_short_label(row), row["resolution"], row["p50_s"], row["sad"] / (row["width"] * row["height"] / 1e6))
              for row in ok if not row["sweep"] and row.get("sad") is not None]
    if points:
        save_png(labelled_points(points, title=f"{title}: speed vs accuracy", x_label="p50 seconds",
                                 y_label="SAD per megapixel (lower is better)"), paths["accuracy_plot"])
        written.append(str(paths["accuracy_plot"]))
    return written


def _short_label(row: dict) -> str:
    """A legend label that fits the chart's legend column (about 20 characters)."""
    if row["kind"] == "authors":
        return "authors (resize)"
    if row["kind"] == "whole_onnx":
        return "whole-image ort"
    if row["kind"] in ("rembg", "rembg_am"):
        return {"rembg": "rembg's way", "rembg_am": "rembg alpha matting"}[row["kind"]]
    backend = {"onnxruntime": "ort", "openvino": "ov", "tensorrt": "trt"}.get(row["backend"], row["backend"])
    device = "" if row["device"] == "cpu" else f" {row['device']}"
    if row["kind"] == "alpha":
        return f"{backend}{device} {row['precision']}" + (" no refine" if row.get("refine") == "none" else "")
    return f"{backend}{device} {row['precision']} tiled"


def write_results(plan: BenchPlan, rows: list[dict], report: dict, overwrite: bool) -> dict[str, Path]:
    paths = result_paths(plan.out, plan.stem)
    plan.out.mkdir(parents=True, exist_ok=True)
    title = f"{plan.model or plan.artifacts}"
    plots = draw_plots(rows, paths, title)
    report["files"] = {"csv": str(paths["csv"]), "plots": plots}
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with tempfile.NamedTemporaryFile("w", dir=plan.out, suffix=".csv.partial", delete=False, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    _place(Path(handle.name), paths["csv"], overwrite)
    staging = paths["json"].with_name(paths["json"].name + ".partial")
    staging.write_text(json.dumps(report, indent=2, default=str) + "\n")
    _place(staging, paths["json"], overwrite)
    return paths


def _csv_value(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _place(staging: Path, target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        staging.unlink()
        raise InputError(f"{target} appeared while the benchmark ran; it was left as it is")
    os.replace(staging, target)


def print_table(rows: list[dict], stream=None) -> None:
    stream = stream or sys.stdout
    header = ["variant", "res", "p50 s", "p90 s", "MP/s", "semantic", "detail", "network", "refine", "pixel", "I/O",
              "+RSS MiB", "SAD", "x fp32", "ΔSAD %", "max|Δα|", "status"]
    lines = [header]
    for row in rows:
        if row["status"] != "ok":
            lines.append([row["label"], row["resolution"]] + [""] * 14 + [f"{row['status']}: {row['reason']}"])
            continue

        def seconds(key, row=row):
            value = row.get(key)
            return "" if value is None else f"{value:.3f}"

        io = (row.get("io_read_p50_s") or 0) + (row.get("io_write_p50_s") or 0)
        lines.append([row["label"], row["resolution"], f"{row['p50_s']:.3f}", f"{row['p90_s']:.3f}",
                      f"{row['megapixels_per_s']:.3f}", seconds("semantic_p50_s"), seconds("detail_p50_s"),
                      seconds("network_p50_s"), seconds("refine_p50_s"), seconds("pixel_p50_s"), f"{io:.3f}",
                      "" if row.get("memory_matting_mib") is None else f"{row['memory_matting_mib']:.0f}",
                      "" if row.get("sad") is None else f"{row['sad']:.2f}",
                      "" if row.get("speedup_vs_fp32") is None else f"{row['speedup_vs_fp32']:.2f}",
                      "" if row.get("delta_sad_pct") is None else f"{row['delta_sad_pct']:+.2f}",
                      "" if row.get("max_abs_delta_alpha") is None else f"{row['max_abs_delta_alpha']:.3f}", "ok"])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)] + [0]
    for index, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip(), file=stream)
        if index == 0:
            print("  ".join("-" * w for w in widths), file=stream)


def run_bench(options: BenchOptions) -> int:
    log = lambda message: print(f"mattrt bench: {message}", file=sys.stderr)
    started = time.perf_counter()
    plan = build_plan(options)  # every check, before any work
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    pending = [c for c in plan.cases if c.status == "pending"]
    log(f"{len(pending)} cases x ({plan.warmup} warm-up + {plan.repeats} measured rounds), interleaved; "
        f"{sum(c.status == 'skipped' for c in plan.cases)} skipped")
    for case in plan.cases:
        if case.status == "skipped":
            log(f"skipped: {case.variant.label} @ {case.resolution}: {case.reason}")
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    run_info = run_cases(plan, log)
    rows = [case_row(c) for c in plan.cases]
    add_fp32_ratios(rows)
    report = {
        "benchmark": "mattrt bench",
        "date": date,
        "command": shlex.join(["mattrt", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("mattrt", "cli.py")
        else shlex.join(sys.argv),
        "git": _git_revision(),
        "hardware": {**hardware(), "load_average_at_start": load_before},
        "versions": versions(),
        "threads": thread_settings.describe(),
        "settings": {
            "model": plan.model, "artifacts": str(plan.artifacts) if plan.artifacts else None,
            "model_sizes": plan.settings, "resolutions": [resolution_label(s) for s in plan.sizes],
            "repeats": plan.repeats, "warmup": plan.warmup, "quick": plan.quick,
            "interleaving": "round-robin: each round runs every case once, the first case rotating per round; "
                            "warm-up rounds excluded from statistics",
            "statistics": "end-to-end seconds (PNG decode + matting + 16-bit alpha PNG encode): p50/p90/p99 by linear "
                          "interpolation, std with ddof 1; throughput from the mean",
            "accuracy": f"SAD (sum |alpha - truth| / 1000) and MSE against the exact alpha of calibration.synthetic "
                        f"{SAMPLE_KIND} images (seed {SAMPLE_SEED})",
            "vs_fp32": "each tiled case against the FP32 reference at its resolution, tile, batch and threads "
                       "(onnxruntime cpu fp32 where it ran, else the same backend's fp32): speedup_vs_fp32 = p50 "
                       "ratio, delta_sad_pct = 100 (SAD - SAD_ref) / SAD_ref, max_abs_delta_alpha and "
                       "tail_abs_delta_alpha (99.9th percentile) of |alpha - alpha_ref| from 16-bit alphas",
        },
        **run_info,
        "cases": rows,
        "skipped": [{"variant": r["label"], "resolution": r["resolution"], "reason": r["reason"]}
                    for r in rows if r["status"] == "skipped"],
        "failed": [{"variant": r["label"], "resolution": r["resolution"], "reason": r["reason"]}
                   for r in rows if r["status"] == "failed"],
        "baselines": compare_baselines(rows),
    }
    report["wall_seconds"] = time.perf_counter() - started
    paths = write_results(plan, rows, report, options.overwrite)
    print_table(rows)
    for item in report["baselines"]:
        sad_ratio = item["sad_ratio_tiled_over_baseline"]
        print(f"{item['resolution']}: {item['tiled']} {item['tiled_p50_s']:.3f} s, SAD {item['tiled_sad']:.2f}  vs  "
              f"{item['baseline']} {item['baseline_p50_s']:.3f} s, SAD {item['baseline_sad']:.2f}: "
              f"{1 / item['time_ratio_tiled_over_baseline']:.2f}x the speed"
              + ("" if sad_ratio is None else f", {sad_ratio:.3f}x the SAD"))
    log(f"wrote {paths['json']}, {paths['csv']} and {len(report['files']['plots'])} plots in "
        f"{report['wall_seconds']:.0f} s")
    return 1 if report["failed"] else 0


__all__ = ["add_fp32_ratios", "case_row", "compare_baselines", "draw_plots", "hardware", "print_table", "run_bench", "versions",
           "write_results"]
