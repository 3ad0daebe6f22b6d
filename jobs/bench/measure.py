"""Running a benchmark plan: synthetic images with exact alpha, interleaved rounds, one
end-to-end measurement per run (decode, matte, encode) with peak memory per step, and the
statistics of the measured runs."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mattrt.availability import available
from mattrt.data.synthetic import generate_sample, sample_rng
from mattrt.deploy.selection import alpha_deltas
from mattrt.errors import InputError
from mattrt.imageio import decode_image, quantise
from mattrt.imagewrite import write_alpha, write_rgb
from mattrt.jobs.bench.plan import PIPELINE_KINDS, SAMPLE_KIND, SAMPLE_SEED, BenchPlan, Case, Variant, resolution_label
from mattrt.jobs.bench.runners import Runner, TiledRunner, make_runner
from mattrt.lazy import is_loaded, lazy_import
from mattrt.metrics import mse, sad

torch = lazy_import("torch", probe="torch")
cupy = lazy_import("cupy", probe="cupy")


STAGES = ("io_read", "semantic", "detail", "network", "refine", "pixel", "io_write")


MIB = 2**20


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 (linear interpolation), mean, std (ddof 1; 0 for one sample), min, max, n."""
    values = np.asarray(list(samples), dtype=np.float64)
    if values.size == 0:
        raise InputError("no samples to summarize")
    return {
        "n": int(values.size),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def interleaved_schedule(case_count: int, warmup: int, repeats: int) -> list[tuple[int, int, bool]]:
    """(round, case index, measured) in run order: every round runs each case once, starting one
    case later than the round before; the first `warmup` rounds are not measured."""
    order = []
    for round_index in range(warmup + repeats):
        start = round_index % case_count if case_count else 0
        for offset in range(case_count):
            order.append((round_index, (start + offset) % case_count, round_index >= warmup))
    return order


class HostMemory:
    """Peak RSS of a step: the kernel's high-water mark (VmHWM) reset just before it."""

    STATUS = Path("/proc/self/status")
    CLEAR = Path("/proc/self/clear_refs")

    def __init__(self):
        self.reason = ""
        try:
            self.CLEAR.write_text("5")
            self._read("VmHWM")
        except OSError as exc:
            self.reason = f"peak RSS needs Linux /proc/self/clear_refs ({exc.strerror or exc})"

    @property
    def available(self) -> bool:
        return not self.reason

    def _read(self, key: str) -> int:
        for line in self.STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(f"{key} not in {self.STATUS}")

    def start(self) -> int:
        if not self.available:
            return 0
        self.CLEAR.write_text("5")  # VmHWM restarts from the current RSS
        return self._read("VmRSS")

    def added_mib(self, before: int) -> float | None:
        """Peak RSS since start() minus the RSS at start(), in MiB."""
        if not self.available:
            return None
        return (self._read("VmHWM") - before) / MIB

    def peak_mib(self) -> float | None:
        return self._read("VmHWM") / MIB if self.available else None


class DeviceClock:
    """CUDA-event device time and torch/CuPy peak memory of one step on cuda."""

    def __init__(self, device: str):
        # CUDA events and peak memory come from torch's CUDA runtime (on cuda without it: none recorded).
        self.on = device == "cuda" and available("torch_cuda")
        self._events = None

    def start(self) -> None:
        if not self.on:
            return
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self._events[0].record()

    def stop(self) -> dict:
        if not self.on:
            return {}
        self._events[1].record()
        torch.cuda.synchronize()
        figures_ = {"device_seconds": self._events[0].elapsed_time(self._events[1]) / 1000.0,
                    "device_peak_mib": torch.cuda.max_memory_allocated() / MIB}
        if is_loaded(cupy):
            figures_["cupy_pool_mib"] = cupy.get_default_memory_pool().total_bytes() / MIB
        return figures_


@dataclass
class BenchImage:
    size: tuple[int, int]
    png: bytes  # the image as a PNG file's bytes: each run decodes it (I/O read)
    alpha: np.ndarray  # exact ground truth
    kind: str
    variant: str


def make_images(sizes: Iterable[tuple[int, int]]) -> dict[tuple[int, int], BenchImage]:
    """One synthetic image with exact alpha per size (calibration.synthetic, fixed seed)."""
    images = {}
    for index, size in enumerate(sizes):
        sample = generate_sample(SAMPLE_KIND, size, sample_rng(SAMPLE_SEED, index))
        with tempfile.TemporaryDirectory(prefix="mattrt-bench-") as folder:
            path = write_rgb(Path(folder) / "image.png", sample.image)
            png = path.read_bytes()
        images[size] = BenchImage(size, png, sample.alpha, sample.kind, sample.variant)
    return images


def measure_once(runner: Runner, image: BenchImage, memory: HostMemory, scratch: Path) -> tuple[dict, np.ndarray]:
    """One end-to-end run: decode the PNG, matte, encode the alpha PNG; seconds and memory per step."""
    runner.before_run()
    device = DeviceClock(runner.variant.device)
    record: dict[str, Any] = {}
    started = time.perf_counter()
    before = memory.start()
    decoded = decode_image(image.png, name="bench.png").rgb
    record["io_read"] = time.perf_counter() - started
    record["memory_io_read_mib"] = memory.added_mib(before)
    before = memory.start()
    device.start()
    matting_started = time.perf_counter()
    alpha, stages = runner.run(decoded)
    record["matting"] = time.perf_counter() - matting_started
    record.update(device.stop())
    record["memory_matting_mib"] = memory.added_mib(before)
    record["peak_rss_mib"] = memory.peak_mib()
    record.update(stages)
    written = time.perf_counter()
    before = memory.start()
    target = scratch / "alpha.png"
    write_alpha(target, alpha, bit_depth=16, overwrite=True)
    record["io_write"] = time.perf_counter() - written
    record["memory_io_write_mib"] = memory.added_mib(before)
    record["total"] = time.perf_counter() - started
    return record, alpha


def fp32_reference(case: Case, cases: Sequence[Case]) -> Case | None:
    """The case a pipeline case's fidelity is measured against: of its kind, at its resolution,
    tile, batch, threads and refinement, onnxruntime on the CPU at fp32 (today's default) where it
    ran, else its own backend's fp32."""
    v = case.variant
    same = [c for c in cases if c.status == "ok" and c.variant.kind == v.kind and c.size == case.size
            and c.variant.precision == "fp32" and (c.variant.tile, c.variant.batch, c.variant.threads, c.variant.refine)
            == (v.tile, v.batch, v.threads, v.refine) and "alpha16" in c.extra]
    for wanted in (("onnxruntime", "cpu"), (v.backend, v.device)):
        found = next((c for c in same if (c.variant.backend, c.variant.device) == wanted), None)
        if found is not None:
            return found
    return None


def compare_to_fp32(cases: Sequence[Case]) -> None:
    """ΔSAD (%), max and 99.9th-percentile |Δalpha| of each tiled case against its FP32 reference
    (deploy/selection.py's fidelity figures), into case.extra["vs_fp32"]; the kept alphas are dropped.
    |Δalpha| is read from the 16-bit alphas (exact to 1/65535)."""
    for case in cases:
        reference = fp32_reference(case, cases) if "alpha16" in case.extra else None
        if reference is None:
            continue
        figures = alpha_deltas(case.extra["alpha16"], reference.extra["alpha16"])
        figures = {k: v / 65535 for k, v in figures.items()}
        theirs = reference.extra["sad"]
        case.extra["vs_fp32"] = {
            "reference": reference.variant.label,
            "delta_sad_pct": 100 * (case.extra["sad"] - theirs) / theirs if theirs else 0.0,
            "max_abs_delta": figures["max_abs_delta"], "tail_abs_delta": figures["tail_abs_delta"],
        }
    for case in cases:
        case.extra.pop("alpha16", None)


def run_cases(plan: BenchPlan, log) -> dict:
    """Open every pending case's runner, run the interleaved schedule, return what happened."""
    memory = HostMemory()
    if not memory.available:
        log(f"memory: {memory.reason}; peak RSS is not recorded")
    setup_started = time.perf_counter()
    images = make_images(plan.sizes)
    log(f"images: {len(images)} synthetic {SAMPLE_KIND} images with exact alpha "
        f"({', '.join(resolution_label(s) for s in plan.sizes)}) in {time.perf_counter() - setup_started:.1f} s")
    runners: dict[Variant, Runner] = {}
    opened: dict[Variant, dict] = {}
    for case in plan.cases:
        if case.status != "pending":
            continue
        variant = case.variant
        if variant not in runners and variant not in opened:
            runner = make_runner(variant, plan, log)
            started = time.perf_counter()
            try:
                runner.open()
                runners[variant] = runner
                opened[variant] = {"open_seconds": time.perf_counter() - started, **runner.describe()}
            # A variant that cannot open is recorded as failed (every case of it); the others still run.
            except Exception as exc:  # noqa: BLE001
                opened[variant] = {"error": f"{type(exc).__name__}: {exc}"}
                runner.close()
        if "error" in opened[variant]:
            case.status, case.reason = "failed", opened[variant]["error"]
    setup_seconds = time.perf_counter() - setup_started
    live = [c for c in plan.cases if c.status == "pending"]
    schedule = interleaved_schedule(len(live), plan.warmup, plan.repeats)
    bar = tqdm(total=len(schedule), desc="bench", unit="run", disable=(not sys.stderr.isatty()) if plan.options.progress is None
               else not plan.options.progress, file=sys.stderr)
    measure_started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="mattrt-bench-") as scratch:
            for round_index, case_index, measured in schedule:
                case = live[case_index]
                if case.status != "pending":
                    bar.update(1)
                    continue
                bar.set_postfix_str(f"{case.variant.label} @ {case.resolution}", refresh=False)
                try:
                    record, alpha = measure_once(runners[case.variant], images[case.size], memory, Path(scratch))
                # Recorded per case (JSON "failed", exit status 1); the others still run.
                except Exception as exc:  # noqa: BLE001
                    case.status, case.reason = "failed", f"{type(exc).__name__}: {exc}"
                    bar.update(1)
                    continue
                record["round"] = round_index
                record["measured"] = measured
                case.runs.append(record)
                if "sad" not in case.extra:  # the output is deterministic: score it once
                    truth = images[case.size].alpha
                    case.extra["sad"] = sad(alpha, truth)
                    case.extra["mse"] = mse(alpha, truth)
                    if case.variant.kind in PIPELINE_KINDS:  # kept (16 bit) to compare with the FP32 reference
                        case.extra["alpha16"] = quantise(alpha, 16, "alpha")
                bar.update(1)
            for case in live:
                if case.status == "pending" and isinstance(runners.get(case.variant), TiledRunner) and memory.available:
                    decoded = decode_image(images[case.size].png).rgb
                    case.extra["stage_memory_mib"] = runners[case.variant].stage_memory(decoded, memory)
        for variant, runner in runners.items():  # what the runs found out (e.g. a baseline's fallbacks)
            opened[variant].update(runner.describe())
    finally:
        bar.close()
        for runner in runners.values():
            runner.close()
    for case in live:
        if case.status == "pending":
            case.status = "ok"
    compare_to_fp32(plan.cases)
    return {
        "setup_seconds": setup_seconds,
        "measure_seconds": time.perf_counter() - measure_started,
        "runs_in_order": [[r, i, m] for r, i, m in schedule],
        "opened": {v.label: info for v, info in opened.items()},
        "images": {resolution_label(s): {"kind": im.kind, "variant": im.variant, "png_bytes": len(im.png)}
                   for s, im in images.items()},
        "memory_method": "VmHWM reset via /proc/self/clear_refs before each step, in this process"
        if memory.available else memory.reason,
    }


__all__ = ["BenchImage", "DeviceClock", "HostMemory", "MIB", "STAGES", "compare_to_fp32", "fp32_reference",
           "interleaved_schedule", "make_images", "measure_once", "run_cases", "summarize"]
