"""`mattrt bench`: latency, throughput and memory of every way mattrt (or a user) can run a model.

Why a benchmark command and not a script: the figures users ask for (how fast is my backend at
4K, what does tiling cost against the resize-everything way, how much memory does an 8K image
take) depend on the machine, so they must be reproducible with one command on that machine.

What one run measures (results in --out, default benchmarks/results/):
- cases: a variant (how the model is run) at a resolution. Variant kinds:
  - "tiled": mattrt's Pipeline through a registered backend (torch, onnxruntime, tensorrt) at a
    precision, tile size, tile batch and thread count (export/deploy.py makes what the backend
    runs, through the artifact cache);
  - "authors": the authors' way: torch eager, the whole network once on the image resized so its
    longer side is the model's semantic canvas (sides cut down to multiples of the stride), the alpha resized
    back (AIM's official hybrid test resizes the whole image rather than tiling it);
  - "whole_onnx": what rembg does: one onnxruntime session over the whole network at a fixed
    S x S canvas, the image resized to it ignoring aspect, one call, the alpha resized back (the
    graph is exported once into the artifact cache folder, bench-whole-*);
  - "triton": whole images to a Triton server (the registry's backend whose `pipeline_opener`
    runs the pipeline remotely; needs --triton-url).
  A backend, device or server that is absent is recorded as skipped with the reason the
  registry's probes give (Backend.missing); nothing is replaced by something else.
- per run, end to end: read/decode of a PNG (I/O), the matting, write/encode of the 16-bit alpha
  PNG (I/O); per stage from the Pipeline's timings: semantic, detail, pixel work (everything
  else: tile preprocessing, stitching, fusion, resizes), and for the baselines "network";
  on cuda, the device time of the matting by CUDA events.
- statistics over the measured runs (warm-up rounds excluded): p50, p90, p99 (linear
  interpolation between order statistics), mean, std (sample, ddof 1), images/s and
  megapixels/s from the mean end-to-end time.
- memory: host peak RSS added by a run, measured in this process by resetting the kernel's
  high-water mark (VmHWM, via /proc/self/clear_refs) just before each step and reading it just
  after, so variants interleaved in one process are still separated: per step (I/O read, matting,
  I/O write; the high-water mark over all runs of a case, warm-up included, since the first run
  makes the allocations later ones reuse) and, once per tiled case, the semantic pass and one
  detail batch alone. On cuda:
  torch.cuda.max_memory_allocated (reset per run) and the CuPy pool size.
- accuracy: on synthetic images with exact alpha (calibration.synthetic), SAD and MSE of each
  variant's alpha against the ground truth (calibration.metrics), so tiled full resolution and
  the two baselines are compared on time and error in the same run.

Interleaving: every round runs every case once (round-robin, the starting case rotating each
round), warm-up rounds first; so a noisy machine slows all variants alike and ratios hold.

Bad input (unknown backend, tile larger than an image, a tile that is not a multiple of the
stride, batch 0, resolution tokens that do not parse, results that would overwrite files) is
refused before any work.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mattrt import __version__, availability
from mattrt.arguments import whole_number
from mattrt.errors import InputError
from mattrt.infer_cli import add_deployment_arguments, deployment_from_args
from mattrt.lazy import is_loaded, lazy_import
from mattrt.manifest import Manifest
from mattrt.runtime import backends
from mattrt.runtime import threads as thread_settings

# Bound lazily: they import torch (or onnxruntime), and registering the command must stay cheap.
torch = lazy_import("torch", probe="torch")
ort = lazy_import("onnxruntime", probe="onnxruntime")
cupy = lazy_import("cupy", probe="cupy")
deploy = lazy_import("mattrt.export.deploy")
whole_graph = lazy_import("mattrt.bench_whole")
checkpoints = lazy_import("mattrt.models.checkpoints")
models = lazy_import("mattrt.models")
registry = lazy_import("mattrt.models.registry")
synthetic = lazy_import("mattrt.calibration.synthetic")
metrics = lazy_import("mattrt.calibration.metrics")
figures = lazy_import("mattrt.calibration.figures")
imageio = lazy_import("mattrt.imageio")
ops = lazy_import("mattrt.runtime.ops")
tiling = lazy_import("mattrt.runtime.tiling")

RESULTS_DIR = Path("benchmarks") / "results"
# Named resolutions (width, height); any WxH is accepted too.
NAMED_RESOLUTIONS = {
    "360p": (640, 360), "540p": (960, 540), "720p": (1280, 720), "1080p": (1920, 1080),
    "1440p": (2560, 1440), "4k": (3840, 2160), "8k": (7680, 4320),
}
FULL_RESOLUTIONS = ("1080p", "4k", "8k")
# --quick: the trained synthetic-domain model at small sizes, so the run ends in under 2 minutes
# on a shared 2-core CPU once the artifact cache holds its exports.
QUICK_MODEL = "aim_synthetic"
QUICK_RESOLUTIONS = ("384x216", "512x288")
QUICK_PRECISIONS = {"torch": ("fp32",), "onnxruntime": ("fp32", "int8")}
QUICK_REPEATS, QUICK_WARMUP = 3, 1
FULL_REPEATS, FULL_WARMUP = 5, 1
# Precisions a backend is benchmarked at by default, per device (others: every precision the
# backend runs). Torch FP16 on a CPU is not a deployment target; ask for it with --precision.
DEFAULT_PRECISIONS = {("torch", "cpu"): ("fp32",)}
TRITON = "triton"
STAGES = ("io_read", "semantic", "detail", "network", "pixel", "io_write")
SAMPLE_KIND = "salient_opaque"  # hair: sub-pixel strands, where tiling and resizing differ most
SAMPLE_SEED = 7
MIB = 2**20


# -- arguments -----------------------------------------------------------------------------------
def parse_resolution(token: str) -> tuple[int, int]:
    """"1080p", "4K", "8k" or "WxH" -> (width, height); InputError for anything else."""
    text = str(token).strip().lower()
    if text in NAMED_RESOLUTIONS:
        return NAMED_RESOLUTIONS[text]
    match = re.fullmatch(r"(\d+)\s*x\s*(\d+)", text)
    if not match:
        raise InputError(
            f"resolution {token!r} does not parse; use WIDTHxHEIGHT (e.g. 1920x1080) or one of "
            + ", ".join(NAMED_RESOLUTIONS)
        )
    width, height = int(match.group(1)), int(match.group(2))
    if width < 8 or height < 8:
        raise InputError(f"resolution {token!r}: each side must be at least 8 pixels")
    return width, height


def resolution_label(size: tuple[int, int]) -> str:
    for name, value in NAMED_RESOLUTIONS.items():
        if value == tuple(size):
            return name
    return f"{size[0]}x{size[1]}"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark backends, precisions, resolutions, tiles and the resize baselines side by side",
        description=(
            "Latency (p50/p90/p99/mean/std, warm-up excluded), throughput and peak memory, per stage and end to end, "
            "of every backend present against the authors' resize-the-whole-image way and a whole-image onnxruntime "
            "session (what rembg does), with SAD against exact synthetic alpha. Variants run interleaved in one "
            "process. Writes JSON, CSV and PNG plots to --out."
        ),
    )
    add_deployment_arguments(p, several=True, source_required=False, help_overrides={  # bench defaults to aim_synthetic
        "backend": "backends to run (default: every registered backend; absent ones are reported skipped)",
        "precision": "precisions to run (default: each backend's; torch on cpu: fp32; --quick: torch fp32, "
                     "onnxruntime fp32 and int8)",
        "threads": "torch/onnxruntime intra-op thread counts to sweep (default: the cores this process may use)",
        "device": "devices to run (default: every device each backend runs on; absent ones are skipped)",
    })
    p.add_argument("--quick", action="store_true",
                   help=f"small run (under 2 minutes on a 2-core CPU with a warm artifact cache): {QUICK_MODEL}, "
                        f"{' and '.join(QUICK_RESOLUTIONS)}, {QUICK_REPEATS} repeats")
    p.add_argument("--resolutions", nargs="+", metavar="RES",
                   help="image sizes: 1080p, 4K, 8K, 360p, 540p, 720p, 1440p or WxH (default: 1080p 4K 8K)")
    p.add_argument("--tiles", nargs="+", type=whole_number(1, "tile size"), metavar="T",
                   help="detail tile sizes (default: the model's); the first is used across backends and "
                        "resolutions, all of them in the sweep")
    p.add_argument("--batches", nargs="+", type=whole_number(1, "tile batch"), metavar="B",
                   help="tiles per detail call (default: 4, or a TensorRT plan's preferred batch)")
    p.add_argument("--sweep-backends", nargs="+", metavar="NAME",
                   help="backends whose tile/batch/thread sweep runs (fp32, at the largest resolution; "
                        "default: torch with --quick, else every tiled backend)")
    p.add_argument("--repeats", type=whole_number(1, "repeats"), help="measured rounds (default: 5; --quick: 3)")
    p.add_argument("--warmup", type=whole_number(0, "warm-up rounds"),
                   help="unmeasured rounds first (default: 1)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the authors' and the whole-image onnxruntime baselines")
    p.add_argument("--triton-url", metavar="HOST:PORT", help="a running mattrt Triton server to include as a variant")
    p.add_argument("--out", type=Path, metavar="DIR", help=f"results folder (default: {RESULTS_DIR})")
    p.add_argument("--name", metavar="NAME", help="file name stem (default: bench-<quick|full>-<devices>-<date>)")
    p.add_argument("--overwrite", action="store_true", help="replace result files of the same name")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_const", const=True, help="always show progress")
    progress.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                          help="never show progress")
    p.set_defaults(run=run_bench, progress=None)


# -- the plan --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """How the model is run (see the module docstring for the kinds)."""

    kind: str
    backend: str
    device: str
    precision: str
    tile: int | None = None
    batch: int | None = None
    threads: int | None = None
    sweep: bool = False  # part of the tile/batch/thread sweep (run at one resolution)

    @property
    def label(self) -> str:
        if self.kind == "authors":
            name = "authors (torch eager, resized)"
        elif self.kind == "whole_onnx":
            name = "whole-image onnxruntime (rembg-style)"
        else:
            name = f"{self.backend} {self.device} {self.precision}"
        details = []
        if self.kind == "tiled":
            details += [f"tile {self.tile}", f"batch {self.batch or 'auto'}"]
        if self.threads is not None:
            details.append(f"{self.threads} thr")
        return name + (" (" + ", ".join(details) + ")" if details else "")


@dataclass
class Case:
    variant: Variant
    size: tuple[int, int]  # width, height
    status: str = "pending"  # pending, ok, skipped, failed
    reason: str = ""
    runs: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def resolution(self) -> str:
        return resolution_label(self.size)


@dataclass
class BenchPlan:
    model: str | None
    artifacts: Path | None
    checkpoint: Any
    settings: dict  # stride_multiple, semantic_size, tile_size, tile_overlap, fixed_tile (an export's)
    sizes: list[tuple[int, int]]
    cases: list[Case]
    repeats: int
    warmup: int
    quick: bool
    out: Path
    stem: str


def _model_settings(args) -> dict:
    """Sizes that decide whether a tile fits, from the registry or an export's manifest."""
    if args.artifacts is not None:
        source = Manifest.load(args.artifacts)
        fixed = True
    else:
        source = registry.get_settings(args.model)
        fixed = False
    return {
        "stride_multiple": int(source.stride_multiple),
        "semantic_size": int(source.semantic_size),
        "tile_size": int(source.tile_size),
        "tile_overlap": int(source.tile_overlap),
        "fixed_tile": fixed,
    }


def check_sizes(sizes: Sequence[tuple[int, int]], tiles: Sequence[int], batches: Sequence[int], settings: dict) -> None:
    """InputError for a tile or batch no run could use (before any work)."""
    stride = settings["stride_multiple"]
    for batch in batches:
        if batch < 1:
            raise InputError(f"tile batch must be at least 1, got {batch}")
    for tile in tiles:
        overlap = min(settings["tile_overlap"], tile - stride)
        tiling.check_tiling(tile, max(overlap, 0), stride)
        for width, height in sizes:
            if tile > min(width, height):
                raise InputError(
                    f"tile {tile} is larger than the {width}x{height} image (its shorter side is "
                    f"{min(width, height)}); "
                    "use a smaller --tiles value or larger --resolutions"
                )


def _default_precisions(backend, device: str, quick: bool) -> tuple[str, ...]:
    if quick:
        return QUICK_PRECISIONS.get(backend.name, ("fp32",))
    return DEFAULT_PRECISIONS.get((backend.name, device), tuple(backend.precisions))


def build_plan(args: argparse.Namespace) -> BenchPlan:
    """Check every argument and list the cases; raises InputError before any work."""
    if args.model is None and args.artifacts is None:
        args.model = QUICK_MODEL
    known = set(backends.backend_names()) | {TRITON}
    names = list(args.backend) if args.backend else [*backends.backend_names(), *([TRITON] if TRITON not in
                                                                                    backends.BACKENDS else [])]
    names = [n for n in names if n != backends.AUTO] + (
        [backends.choose_auto(precision="fp32").backend.name] if backends.AUTO in names else [])
    for name in names:
        if name not in known:
            raise InputError(f"unknown backend {name!r}; choose from {', '.join(sorted(known))}")
    sweep_names = args.sweep_backends or (["torch"] if args.quick else None)
    for name in sweep_names or ():
        if name not in known:
            raise InputError(f"unknown backend {name!r} in --sweep-backends; choose from {', '.join(sorted(known))}")
    sizes = [parse_resolution(t) for t in (args.resolutions or (QUICK_RESOLUTIONS if args.quick else FULL_RESOLUTIONS))]
    if len(set(sizes)) != len(sizes):
        raise InputError("--resolutions lists the same size twice")
    if args.artifacts is not None and not Path(args.artifacts).is_dir():
        raise InputError(f"--artifacts {args.artifacts} is not a folder")
    if args.model is not None and args.model not in registry.list_models():
        raise InputError(f"unknown model {args.model!r}; see `mattrt models --all`")
    settings = _model_settings(args)
    tiles = list(args.tiles or [settings["tile_size"]])
    if args.quick and not args.tiles and not settings["fixed_tile"]:
        # A two-point tile sweep: the model's tile and about two thirds of it.
        smaller = settings["tile_size"] * 2 // 3 // settings["stride_multiple"] * settings["stride_multiple"]
        if smaller > settings["tile_overlap"] and smaller >= settings["stride_multiple"]:
            tiles.append(smaller)
    if settings["fixed_tile"] and tiles != [settings["tile_size"]]:
        raise InputError(
            f"the export in {args.artifacts} is fixed at tile {settings['tile_size']}; sweep tiles with --model "
            "(each tile size is exported through the artifact cache)"
        )
    batches = list(args.batches or [None])
    check_sizes(sizes, tiles, [b for b in batches if b is not None], settings)
    thread_counts = list(args.threads or [thread_settings.available_cores()])
    for count in thread_counts:
        thread_settings.resolve_threads(count)
    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else FULL_WARMUP)

    out = Path(args.out) if args.out is not None else RESULTS_DIR
    devices_asked = list(args.device or [])
    date = datetime.date.today().isoformat()
    device_part = "-".join(devices_asked) if devices_asked else ("cuda" if _has_cuda() else "cpu")
    stem = args.name or f"bench-{'quick' if args.quick else 'full'}-{device_part}-{date}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", stem):
        raise InputError(f"--name {stem!r}: use letters, digits, '.', '_' and '-' only")
    existing = [p for p in result_paths(out, stem).values() if p.exists()]
    if existing and not args.overwrite:
        raise InputError(f"{existing[0]} exists; choose another --out or --name, or pass --overwrite to replace it")

    cases: list[Case] = []
    largest = max(sizes, key=lambda s: s[0] * s[1])

    def add(variant: Variant, status: str = "pending", reason: str = "", only: tuple[int, int] | None = None):
        for size in ([only] if only else sizes):
            cases.append(Case(variant, size, status, reason))

    for name in names:
        backend = backends.BACKENDS.get(name)
        if backend is None:  # only triton can be absent from the registry
            add(Variant(TRITON, TRITON, "-", "-"), "skipped",
                "triton: serving not merged (no triton backend registered)")
            continue
        devices = devices_asked or list(backend.devices)
        for device in devices:
            if device not in backend.devices:
                add(Variant("tiled", name, device, "-"), "skipped", f"{name} runs on {', '.join(backend.devices)} only")
                continue
            precisions = list(args.precision or _default_precisions(backend, device, args.quick))
            missing = backend.missing(device)
            reason = "; ".join(f"needs {p.name}: {p.detail}" for p in missing)
            if backend.artifacts == "url":
                variant = Variant(TRITON, name, device, "server")
                if reason:
                    add(variant, "skipped", reason)
                elif not args.triton_url:
                    add(variant, "skipped", "no server given (--triton-url HOST:PORT; start one with `mattrt serve`)")
                else:
                    add(variant)
                continue
            if backend.artifacts == "model" and args.model is None:
                reason = reason or f"{name} runs a registered model (--model), not an export directory"
            for precision in precisions:
                if precision not in backend.precisions:
                    add(Variant("tiled", name, device, precision), "skipped", f"{name} has no {precision}")
                    continue
                main = Variant("tiled", name, device, precision, tiles[0], batches[0], thread_counts[0])
                add(main, "skipped" if reason else "pending", reason)
                in_sweep = sweep_names is None or name in sweep_names
                if not in_sweep or precision != "fp32":
                    continue
                for tile in tiles:
                    for batch in batches:
                        for count in thread_counts:
                            variant = Variant("tiled", name, device, precision, tile, batch, count, sweep=True)
                            if replace(variant, sweep=False) == main:
                                continue
                            add(variant, "skipped" if reason else "pending", reason, only=largest)
    if not args.no_baselines:
        torch_backend, onnx_backend = backends.BACKENDS["torch"], backends.BACKENDS["onnxruntime"]
        no_model = "needs --model (it runs the model's own network)" if args.model is None else ""
        for kind, backend in (("authors", torch_backend), ("whole_onnx", onnx_backend)):
            missing = backend.missing("cpu")
            reason = no_model or "; ".join(f"needs {p.name}: {p.detail}" for p in missing)
            add(Variant(kind, backend.name, "cpu", "fp32", threads=thread_counts[0]),
                "skipped" if reason else "pending", reason)
    if not any(c.status == "pending" for c in cases):
        raise InputError("nothing to run: every variant is skipped here (" +
                         "; ".join(sorted({f"{c.variant.label}: {c.reason}" for c in cases})) + ")")
    return BenchPlan(args.model, args.artifacts, args.checkpoint, settings, sizes, cases, repeats, warmup,
                     args.quick, out, stem)


def result_paths(out: Path, stem: str) -> dict[str, Path]:
    return {
        "json": out / f"{stem}.json",
        "csv": out / f"{stem}.csv",
        "latency_plot": out / f"{stem}-latency.png",
        "tile_plot": out / f"{stem}-tiles.png",
        "accuracy_plot": out / f"{stem}-accuracy.png",
    }


def _has_cuda() -> bool:
    return availability.available("torch_cuda")


# -- statistics and order ------------------------------------------------------------------------
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


# -- memory -------------------------------------------------------------------------------------
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
        self.on = device == "cuda" and availability.available("torch_cuda")
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


# -- runners ----------------------------------------------------------------------------------------
class Runner:
    """Opens what a variant runs; run(image) -> (alpha, seconds per stage)."""

    variant: Variant

    def open(self) -> None: ...

    def close(self) -> None: ...

    def before_run(self) -> None:
        """Per-run settings shared by the process (torch's thread count)."""
        if self.variant.backend == "torch" and self.variant.threads is not None:
            thread_settings.configure_torch(self.variant.threads)

    def run(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {}

    def stage_memory(self, image: np.ndarray, memory: HostMemory) -> dict:
        return {}


def _stage_seconds(timings: dict[str, float]) -> dict[str, float]:
    """A Pipeline's step timings folded into semantic, detail and pixel work."""
    folded = {"semantic": timings.get("semantic", 0.0), "detail": timings.get("detail", 0.0)}
    folded["pixel"] = sum(v for k, v in timings.items() if k not in ("semantic", "detail", "remote"))
    if "remote" in timings:
        folded = {"network": timings["remote"]}
    return folded


class TiledRunner(Runner):
    def __init__(self, variant: Variant, plan: BenchPlan, args: argparse.Namespace, log):
        self.variant, self.plan, self.args, self.log = variant, plan, args, log
        self.pipeline = None

    def open(self) -> None:
        v = self.variant
        args = argparse.Namespace(**{**vars(self.args), "backend": v.backend, "device": v.device,
                                     "precision": v.precision, "model": self.plan.model,
                                     "artifacts": self.plan.artifacts})
        # The model's own tile is passed as None: the same artifact cache entry `mattrt infer` uses.
        settings = self.plan.settings
        tile = None if settings["fixed_tile"] or v.tile == settings["tile_size"] else v.tile
        deployment = deployment_from_args(args, log=self.log, tile_size=tile)
        backend_options = {"threads": v.threads} if "threads" in deployment.backend.options else {}
        pipeline = deploy.open_pipeline(deployment, backend_options, tile_size=tile, batch=v.batch)
        self.pipeline = pipeline.__enter__()

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None

    def run(self, image):
        result = self.pipeline.run(image)
        return result.alpha, _stage_seconds(result.timings)

    def describe(self) -> dict:
        described = self.pipeline.describe()
        return {k: described.get(k) for k in ("tile_size", "overlap", "margin", "batch", "semantic_size",
                                               "pixel_ops", "selection")}

    def stage_memory(self, image, memory):
        """Peak RSS added by the semantic pass alone and by one detail batch alone."""
        pipeline = self.pipeline
        before = memory.start()
        pipeline.semantic_pass(image)
        semantic = memory.added_mib(before)
        tile = pipeline.tile_size
        feeds = {"image": np.zeros((pipeline.batch, 3, tile, tile), np.float32)}
        if pipeline.spec.guidance != "none":
            feeds["guidance"] = np.zeros((pipeline.batch, pipeline.spec.guidance_channels, tile, tile), np.float32)
        before = memory.start()
        pipeline.engines["detail"].run(feeds)
        return {"semantic": semantic, "detail_batch": memory.added_mib(before)}


def authors_size(height: int, width: int, canvas: int, stride: int) -> tuple[int, int]:
    """The image resized so its longer side is `canvas`, sides cut down to multiples of `stride`
    (as the authors' test code does), at least one stride."""
    scale = canvas / max(height, width)
    return (max(stride, int(height * scale) // stride * stride),
            max(stride, int(width * scale) // stride * stride))


class _WholeImageRunner(Runner):
    """Shared by the two baselines: resize in, one network call, resize the alpha back."""

    def _load_model(self):
        model = models.create_model(self.model_name, checkpoint=checkpoints.parse_checkpoint(self.checkpoint))
        return model.eval()

    def _normalised(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
        spec = self.settings
        ordered = image[..., ::-1] if spec.channel_order.upper() == "BGR" else image
        resized = ops.resize_image(ordered, height, width)
        resized -= np.asarray(spec.mean, np.float32)
        resized /= np.asarray(spec.std, np.float32)
        return np.ascontiguousarray(resized.transpose(2, 0, 1)[None])

    def _network(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _size(self, height: int, width: int) -> tuple[int, int]:
        raise NotImplementedError

    def run(self, image):
        height, width = image.shape[:2]
        started = time.perf_counter()
        small_h, small_w = self._size(height, width)
        feed = self._normalised(image, small_h, small_w)
        resized = time.perf_counter()
        small_alpha = self._network(feed)
        called = time.perf_counter()
        alpha = ops.resize_image(small_alpha[:, :, None], height, width)[:, :, 0]
        np.clip(alpha, 0.0, 1.0, out=alpha)
        done = time.perf_counter()
        return alpha, {"network": called - resized, "pixel": (resized - started) + (done - called)}


class AuthorsRunner(_WholeImageRunner):
    """Torch eager over the whole image resized to the model's canvas (the authors' way)."""

    def __init__(self, variant: Variant, plan: BenchPlan):
        self.variant, self.model_name, self.checkpoint = variant, plan.model, plan.checkpoint
        self.canvas, self.stride = plan.settings["semantic_size"], plan.settings["stride_multiple"]

    def open(self) -> None:
        thread_settings.configure_torch(self.variant.threads)
        self.model = self._load_model()
        self.settings = self.model.settings

    def _size(self, height, width):
        return authors_size(height, width, self.canvas, self.stride)

    def _network(self, batch):
        with torch.inference_mode():
            return self.model(torch.from_numpy(batch))["alpha"][0, 0].float().numpy()

    def describe(self) -> dict:
        return {"canvas": self.canvas, "resize": "longer side to the canvas, sides cut down to multiples of "
                f"{self.stride}, antialiased bilinear in and out"}


class WholeOnnxRunner(_WholeImageRunner):
    """One onnxruntime session over the whole network at a fixed S x S canvas (rembg's way)."""

    def __init__(self, variant: Variant, plan: BenchPlan, cache_dir: Path | None, log):
        self.variant, self.model_name, self.checkpoint = variant, plan.model, plan.checkpoint
        self.canvas = plan.settings["semantic_size"]
        self.cache_dir, self.log = cache_dir, log

    def open(self) -> None:
        model = self._load_model()
        self.settings = model.settings
        self.graph = whole_graph.whole_image_graph(model, self.canvas, self.cache_dir, self.log)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        thread_settings.configure_onnxruntime(options, self.variant.threads)
        self.session = ort.InferenceSession(str(self.graph), options, providers=["CPUExecutionProvider"])

    def close(self) -> None:
        self.session = None

    def _size(self, height, width):
        return self.canvas, self.canvas

    def _network(self, batch):
        return self.session.run(None, {"image": batch})[0][0, 0]

    def describe(self) -> dict:
        return {"canvas": self.canvas, "graph": str(self.graph),
                "resize": "to the square canvas ignoring aspect, antialiased bilinear in and out"}


class RemoteRunner(Runner):
    """A Triton server through the registry's pipeline_opener."""

    def __init__(self, variant: Variant, url: str):
        self.variant, self.url = variant, url
        self.pipeline = None

    def open(self) -> None:
        backend = backends.BACKENDS[self.variant.backend]
        self.pipeline = backend.pipeline_opener(self.url, device=self.variant.device).__enter__()

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None

    def run(self, image):
        result = self.pipeline.run(image)
        return result.alpha, _stage_seconds(result.timings)

    def describe(self) -> dict:
        return self.pipeline.describe()


# -- images --------------------------------------------------------------------------------------
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
        sample = synthetic.generate_sample(SAMPLE_KIND, size, synthetic.sample_rng(SAMPLE_SEED, index))
        with tempfile.TemporaryDirectory(prefix="mattrt-bench-") as folder:
            path = imageio.write_rgb(Path(folder) / "image.png", sample.image)
            png = path.read_bytes()
        images[size] = BenchImage(size, png, sample.alpha, sample.kind, sample.variant)
    return images


# -- running ----------------------------------------------------------------------------------------
def make_runner(variant: Variant, plan: BenchPlan, args: argparse.Namespace, log) -> Runner:
    if variant.kind == "tiled":
        return TiledRunner(variant, plan, args, log)
    if variant.kind == "authors":
        return AuthorsRunner(variant, plan)
    if variant.kind == "whole_onnx":
        return WholeOnnxRunner(variant, plan, args.cache_dir, log)
    if variant.kind == TRITON:
        return RemoteRunner(variant, args.triton_url)
    raise AssertionError(variant.kind)


def measure_once(runner: Runner, image: BenchImage, memory: HostMemory, scratch: Path) -> tuple[dict, np.ndarray]:
    """One end-to-end run: decode the PNG, matte, encode the alpha PNG; seconds and memory per step."""
    runner.before_run()
    device = DeviceClock(runner.variant.device)
    record: dict[str, Any] = {}
    started = time.perf_counter()
    before = memory.start()
    decoded = imageio.decode_image(image.png, name="bench.png").rgb
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
    imageio.write_alpha(target, alpha, bit_depth=16, overwrite=True)
    record["io_write"] = time.perf_counter() - written
    record["memory_io_write_mib"] = memory.added_mib(before)
    record["total"] = time.perf_counter() - started
    return record, alpha


def run_cases(plan: BenchPlan, args: argparse.Namespace, log, progress: bool | None) -> dict:
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
            runner = make_runner(variant, plan, args, log)
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
    bar = tqdm(total=len(schedule), desc="bench", unit="run", disable=(not sys.stderr.isatty()) if progress is None
               else not progress, file=sys.stderr)
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
                    case.extra["sad"] = metrics.sad(alpha, truth)
                    case.extra["mse"] = metrics.mse(alpha, truth)
                bar.update(1)
            for case in live:
                if case.status == "pending" and isinstance(runners.get(case.variant), TiledRunner) and memory.available:
                    decoded = imageio.decode_image(images[case.size].png).rgb
                    case.extra["stage_memory_mib"] = runners[case.variant].stage_memory(decoded, memory)
    finally:
        bar.close()
        for runner in runners.values():
            runner.close()
    for case in live:
        if case.status == "pending":
            case.status = "ok"
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


# -- results --------------------------------------------------------------------------------------
def case_row(case: Case) -> dict[str, Any]:
    """One CSV/JSON row: the variant, the statistics of the measured runs, memory and accuracy."""
    v = case.variant
    width, height = case.size
    row: dict[str, Any] = {
        "kind": v.kind, "label": v.label, "backend": v.backend, "device": v.device, "precision": v.precision,
        "resolution": case.resolution, "width": width, "height": height, "tile": v.tile, "batch": v.batch,
        "threads": v.threads, "sweep": v.sweep, "status": case.status, "reason": case.reason,
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
    return row


def compare_baselines(rows: list[dict]) -> list[dict]:
    """Per resolution: the first tiled main variant against each baseline (time ratio, SAD)."""
    out = []
    for resolution in dict.fromkeys(r["resolution"] for r in rows):
        here = [r for r in rows if r["resolution"] == resolution and r["status"] == "ok" and not r["sweep"]]
        tiled = next((r for r in here if r["kind"] == "tiled"), None)
        if tiled is None:
            continue
        for baseline in (r for r in here if r["kind"] in ("authors", "whole_onnx")):
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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
        "cpu": _cpu_model(), "cores": os.cpu_count(), "available_cores": thread_settings.available_cores(),
        "memory_gib": _memory_total_gib(), "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if is_loaded(torch) and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict:
    found = {"mattrt": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "onnxruntime", "tensorrt_runtime", "cupy", "tritonclient"):
        result = availability.probe(name)
        found[name] = result.version if result.found else None
    return found


def draw_plots(rows: list[dict], paths: dict[str, Path], title: str) -> list[str]:
    """The three PNGs (Pillow, calibration.figures: the project's one plotting path). Returns
    the plots written; a plot with no data is left out."""
    ok = [r for r in rows if r["status"] == "ok"]
    written = []
    series = {}
    for row in (r for r in ok if not r["sweep"]):
        label = _short_label(row)
        x, y = series.setdefault(label, ([], []))
        x.append(row["width"] * row["height"] / 1e6)
        y.append(row["p50_s"])
    if series:
        figures.line_chart({k: _sorted(v) for k, v in series.items()}, paths["latency_plot"],
                           title=f"{title}: p50 end-to-end latency", x_label="megapixels", y_label="seconds")
        written.append(str(paths["latency_plot"]))
    sweep = {}
    for row in (r for r in ok if r["kind"] == "tiled"):
        if not any(o["sweep"] and o["backend"] == row["backend"] and o["device"] == row["device"]
                   and o["resolution"] == row["resolution"] for o in ok):
            continue
        label = f"{_short_label(row)} b{row['batch'] or 'auto'} {row['threads']}t"
        x, y = sweep.setdefault(label, ([], []))
        x.append(row["tile"])
        y.append(row["p50_s"])
    if sweep:
        figures.line_chart({k: _sorted(v) for k, v in sweep.items()}, paths["tile_plot"],
                           title=f"{title}: tile-size sweep at the largest resolution", x_label="tile size (px)",
                           y_label="p50 seconds")
        written.append(str(paths["tile_plot"]))
    accuracy = {}
    for row in (r for r in ok if not r["sweep"] and r.get("sad") is not None):
        label = _short_label(row)
        x, y = accuracy.setdefault(label, ([], []))
        x.append(row["p50_s"])
        y.append(row["sad"] / (row["width"] * row["height"] / 1e6))
    if accuracy:
        figures.line_chart({k: _sorted(v) for k, v in accuracy.items()}, paths["accuracy_plot"],
                           title=f"{title}: speed vs accuracy (one point per resolution)", x_label="p50 seconds",
                           y_label="SAD per megapixel")
        written.append(str(paths["accuracy_plot"]))
    return written


def _short_label(row: dict) -> str:
    """A legend label that fits the chart's legend column (about 20 characters)."""
    if row["kind"] == "authors":
        return "authors (resize)"
    if row["kind"] == "whole_onnx":
        return "whole-image ort"
    backend = {"onnxruntime": "ort", "tensorrt": "trt"}.get(row["backend"], row["backend"])
    device = "" if row["device"] == "cpu" else f" {row['device']}"
    return f"{backend}{device} {row['precision']} tiled"


def _sorted(pair: tuple[list, list]) -> tuple[list, list]:
    order = sorted(range(len(pair[0])), key=lambda i: pair[0][i])
    return [pair[0][i] for i in order], [pair[1][i] for i in order]


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
    header = ["variant", "res", "p50 s", "p90 s", "MP/s", "semantic", "detail", "network", "pixel", "I/O",
              "+RSS MiB", "SAD", "status"]
    lines = [header]
    for row in rows:
        if row["status"] != "ok":
            lines.append([row["label"], row["resolution"]] + [""] * 10 + [f"{row['status']}: {row['reason']}"])
            continue

        def seconds(key, row=row):
            value = row.get(key)
            return "" if value is None else f"{value:.3f}"

        io = (row.get("io_read_p50_s") or 0) + (row.get("io_write_p50_s") or 0)
        lines.append([row["label"], row["resolution"], f"{row['p50_s']:.3f}", f"{row['p90_s']:.3f}",
                      f"{row['megapixels_per_s']:.3f}", seconds("semantic_p50_s"), seconds("detail_p50_s"),
                      seconds("network_p50_s"), seconds("pixel_p50_s"), f"{io:.3f}",
                      "" if row.get("memory_matting_mib") is None else f"{row['memory_matting_mib']:.0f}",
                      "" if row.get("sad") is None else f"{row['sad']:.2f}", "ok"])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header) - 1)] + [0]
    for index, line in enumerate(lines):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip(), file=stream)
        if index == 0:
            print("  ".join("-" * w for w in widths), file=stream)


def run_bench(args: argparse.Namespace) -> int:
    log = lambda message: print(f"mattrt bench: {message}", file=sys.stderr)
    started = time.perf_counter()
    plan = build_plan(args)  # every check, before any work
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    pending = [c for c in plan.cases if c.status == "pending"]
    log(f"{len(pending)} cases x ({plan.warmup} warm-up + {plan.repeats} measured rounds), interleaved; "
        f"{sum(c.status == 'skipped' for c in plan.cases)} skipped")
    for case in plan.cases:
        if case.status == "skipped":
            log(f"skipped: {case.variant.label} @ {case.resolution}: {case.reason}")
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    run_info = run_cases(plan, args, log, args.progress)
    rows = [case_row(c) for c in plan.cases]
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
    paths = write_results(plan, rows, report, args.overwrite)
    print_table(rows)
    for item in report["baselines"]:
        print(f"{item['resolution']}: tiled {item['tiled_p50_s']:.3f} s, SAD {item['tiled_sad']:.2f}  vs  "
              f"{item['baseline']} {item['baseline_p50_s']:.3f} s, SAD {item['baseline_sad']:.2f}")
    log(f"wrote {paths['json']}, {paths['csv']} and {len(report['files']['plots'])} plots in "
        f"{report['wall_seconds']:.0f} s")
    return 1 if report["failed"] else 0


__all__ = ["BenchPlan", "Case", "HostMemory", "Variant", "authors_size", "build_plan", "interleaved_schedule",
           "parse_resolution", "register", "run_bench", "summarize"]
