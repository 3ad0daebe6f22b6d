"""The plan of a benchmark run: what is asked (BenchOptions), the variants and cases it makes,
every check done before any work, and where the results go."""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mattrt.availability import available
from mattrt.deploy.choice import AUTO, choose_auto
from mattrt.deploy.sources import CardSource, ExportSource, ModelSource, model_source
from mattrt.engines.backends import BACKENDS, backend_names
from mattrt.errors import InputError
from mattrt.jobs.bench.rembg import REMBG_AM_MIB_PER_MEGAPIXEL, rembg_am_mib
from mattrt.manifest import Manifest
from mattrt.models import get_settings
from mattrt.resources import available_memory, format_bytes
from mattrt.runtime import threads as thread_settings
from mattrt.runtime.tiling import check_tiling

RESULTS_DIR = Path("benchmarks") / "results"


# Named resolutions (width, height); any WxH is accepted too.
NAMED_RESOLUTIONS = {
    "360p": (640, 360), "540p": (960, 540), "720p": (1280, 720), "1080p": (1920, 1080),
    "1440p": (2560, 1440), "4k": (3840, 2160), "8k": (7680, 4320),
}


FULL_RESOLUTIONS = ("1080p", "4k", "8k")


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


# Baselines of an imported alpha network (jobs/bench/rembg.py).
BASELINE_LABELS = {"rembg": "rembg's way", "rembg_am": "rembg alpha matting"}


# The kinds a case of mattrt's own pipeline has: tiled (a trimap network and its detail stage)
# and alpha (an imported network whose output is alpha, refined at full resolution).
PIPELINE_KINDS = ("tiled", "alpha")


SAMPLE_KIND = "salient_opaque"  # hair: sub-pixel strands, where tiling and resizing differ most


SAMPLE_SEED = 7


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


@dataclass(frozen=True)
class BenchOptions:
    """What a benchmark run is asked for (commands/bench.py fills it from `mattrt bench`'s options;
    None: the default the help text names)."""

    model: str | None = None
    artifacts: Path | None = None
    checkpoint: Any = None  # a path or {part: path} (parsed)
    backend: Sequence[str] | None = None
    device: Sequence[str] | None = None
    precision: Sequence[str] | None = None
    threads: Sequence[int] | None = None
    cache_dir: Path | None = None
    quick: bool = False
    resolutions: Sequence[str] | None = None
    tiles: Sequence[int] | None = None
    batches: Sequence[int] | None = None
    sweep_backends: Sequence[str] | None = None
    repeats: int | None = None
    warmup: int | None = None
    no_baselines: bool = False
    triton_url: str | None = None
    out: Path | None = None
    name: str | None = None
    overwrite: bool = False
    progress: bool | None = None


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
    refine: str | None = None  # kind "alpha": the refinement (None: the model card's)

    @property
    def label(self) -> str:
        if self.kind == "authors":
            name = "authors (torch eager, resized)"
        elif self.kind == "whole_onnx":
            name = "whole-image onnxruntime (rembg-style)"
        elif self.kind in BASELINE_LABELS:
            name = BASELINE_LABELS[self.kind]
        else:
            name = f"{self.backend} {self.device} {self.precision}"
        details = []
        if self.kind == "tiled":
            details += [f"tile {self.tile}", f"batch {self.batch or 'auto'}"]
        if self.kind == "alpha":
            details.append({None: "refined", "none": "no refinement"}.get(self.refine, f"refined {self.refine}"))
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
    options: "BenchOptions"


def _model_settings(source, artifacts: Path | None) -> dict:
    """Sizes that decide whether a tile fits, from the registry, an imported model's card or an
    export's manifest; "alpha" for a network whose output is alpha (no detail tiles)."""
    if artifacts is not None:
        manifest = Manifest.load(artifacts)
        if manifest.network.get("output") == "alpha":
            return {"alpha": True, "semantic_size": int(manifest.semantic_size), "fixed_tile": True}
        settings, fixed = manifest, True
    elif isinstance(source, CardSource):
        size = source.imported.card.input.size
        return {"alpha": True, "semantic_size": int(size[0]) if size else None, "fixed_tile": True}
    else:
        settings, fixed = get_settings(source.model), False
    return {
        "alpha": False,
        "stride_multiple": int(settings.stride_multiple),
        "semantic_size": int(settings.semantic_size),
        "tile_size": int(settings.tile_size),
        "tile_overlap": int(settings.tile_overlap),
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
        check_tiling(tile, max(overlap, 0), stride)
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


def build_plan(options: BenchOptions) -> BenchPlan:
    """Check every option and list the cases; raises InputError before any work."""
    model = QUICK_MODEL if options.model is None and options.artifacts is None else options.model
    known = set(backend_names()) | {TRITON}
    names = list(options.backend) if options.backend else [*backend_names(), *([TRITON] if TRITON not in
                                                                                    BACKENDS else [])]
    names = [n for n in names if n != AUTO] + (
        [choose_auto(precision="fp32").backend.name] if AUTO in names else [])
    for name in names:
        if name not in known:
            raise InputError(f"unknown backend {name!r}; choose from {', '.join(sorted(known))}")
    sweep_names = options.sweep_backends or (["torch"] if options.quick else None)
    for name in sweep_names or ():
        if name not in known:
            raise InputError(f"unknown backend {name!r} in --sweep-backends; choose from {', '.join(sorted(known))}")
    sizes = [parse_resolution(t) for t in (options.resolutions or (QUICK_RESOLUTIONS if options.quick else FULL_RESOLUTIONS))]
    if len(set(sizes)) != len(sizes):
        raise InputError("--resolutions lists the same size twice")
    if options.artifacts is not None and not Path(options.artifacts).is_dir():
        raise InputError(f"--artifacts {options.artifacts} is not a folder")
    source = None if model is None else model_source(model, checkpoint=options.checkpoint,
                                                     cache_dir=options.cache_dir)  # unknown names: an error
    settings = _model_settings(source, options.artifacts)
    if settings["alpha"]:
        return _alpha_network_plan(options, model, source, settings, names, sizes)
    tiles = list(options.tiles or [settings["tile_size"]])
    if options.quick and not options.tiles and not settings["fixed_tile"]:
        # A two-point tile sweep: the model's tile and about two thirds of it.
        smaller = settings["tile_size"] * 2 // 3 // settings["stride_multiple"] * settings["stride_multiple"]
        if smaller > settings["tile_overlap"] and smaller >= settings["stride_multiple"]:
            tiles.append(smaller)
    for tile in tiles:  # each tile checked by the source a run opens (deploy/sources.py), before any work
        if options.artifacts is not None:
            ExportSource(Path(options.artifacts), tile_size=tile)
        else:
            ModelSource(model, tile_size=tile)
    batches = list(options.batches or [None])
    check_sizes(sizes, tiles, [b for b in batches if b is not None], settings)
    thread_counts, repeats, warmup, out, stem = _run_settings(options)
    devices_asked = list(options.device or [])

    cases: list[Case] = []
    largest = max(sizes, key=lambda s: s[0] * s[1])

    def add(variant: Variant, status: str = "pending", reason: str = "", only: tuple[int, int] | None = None):
        for size in ([only] if only else sizes):
            cases.append(Case(variant, size, status, reason))

    for name in names:
        backend = BACKENDS.get(name)
        if backend is None:  # only triton can be absent from the registry
            add(Variant(TRITON, TRITON, "-", "-"), "skipped",
                "triton: serving not merged (no triton backend registered)")
            continue
        devices = devices_asked or list(backend.devices)
        for device in devices:
            if device not in backend.devices:
                add(Variant("tiled", name, device, "-"), "skipped", f"{name} runs on {', '.join(backend.devices)} only")
                continue
            precisions = list(options.precision or _default_precisions(backend, device, options.quick))
            missing = backend.missing(device)
            reason = "; ".join(f"needs {p.name}: {p.detail}" for p in missing)
            if backend.artifacts == "url":
                variant = Variant(TRITON, name, device, "server")
                if reason:
                    add(variant, "skipped", reason)
                elif not options.triton_url:
                    add(variant, "skipped", "no server given (--triton-url HOST:PORT; start one with `mattrt serve`)")
                else:
                    add(variant)
                continue
            if backend.artifacts == "model" and model is None:
                reason = reason or f"{name} runs a registered model (--model), not an export directory"
            for precision in precisions:
                if precision not in backend.precisions:
                    add(Variant("tiled", name, device, precision), "skipped", f"{name} has no {precision}")
                    continue
                # a precision this machine cannot run (bf16 without native bf16) is skipped with the backend's reason
                refused = None if reason else backend.refusal(device, precision)
                main = Variant("tiled", name, device, precision, tiles[0], batches[0], thread_counts[0])
                add(main, "skipped" if reason or refused else "pending", reason or refused or "")
                if refused:
                    continue
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
    if not options.no_baselines:
        torch_backend, onnx_backend = BACKENDS["torch"], BACKENDS["onnxruntime"]
        no_model = "needs --model (it runs the model's own network)" if model is None else ""
        for kind, backend in (("authors", torch_backend), ("whole_onnx", onnx_backend)):
            missing = backend.missing("cpu")
            reason = no_model or "; ".join(f"needs {p.name}: {p.detail}" for p in missing)
            add(Variant(kind, backend.name, "cpu", "fp32", threads=thread_counts[0]),
                "skipped" if reason else "pending", reason)
    if not any(c.status == "pending" for c in cases):
        raise InputError("nothing to run: every variant is skipped here (" +
                         "; ".join(sorted({f"{c.variant.label}: {c.reason}" for c in cases})) + ")")
    return BenchPlan(model, options.artifacts, options.checkpoint, settings, sizes, cases, repeats, warmup,
                     options.quick, out, stem, options)


def _run_settings(options: BenchOptions) -> tuple[list[int], int, int, Path, str]:
    """Thread counts, repeats, warm-up rounds, the results folder and the file stem (checked)."""
    thread_counts = list(options.threads or [thread_settings.available_cores()])
    for count in thread_counts:
        thread_settings.resolve_threads(count)
    repeats = options.repeats or (QUICK_REPEATS if options.quick else FULL_REPEATS)
    warmup = options.warmup if options.warmup is not None else (QUICK_WARMUP if options.quick else FULL_WARMUP)
    out = Path(options.out) if options.out is not None else RESULTS_DIR
    devices_asked = list(options.device or [])
    date = datetime.date.today().isoformat()
    device_part = "-".join(devices_asked) if devices_asked else ("cuda" if _has_cuda() else "cpu")
    stem = options.name or f"bench-{'quick' if options.quick else 'full'}-{device_part}-{date}"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", stem):
        raise InputError(f"--name {stem!r}: use letters, digits, '.', '_' and '-' only")
    existing = [p for p in result_paths(out, stem).values() if p.exists()]
    if existing and not options.overwrite:
        raise InputError(f"{existing[0]} exists; choose another --out or --name, or pass --overwrite to replace it")
    return thread_counts, repeats, warmup, out, stem


def _alpha_network_plan(options: BenchOptions, model: str | None, source, settings: dict, names: list[str],
                        sizes: list[tuple[int, int]]) -> BenchPlan:
    """The cases of a network whose output is alpha (an imported model, or an export of one): each
    backend and precision with the model card's refinement, onnxruntime FP32 without it, and the
    baselines a user would otherwise run: rembg's way and rembg's alpha-matting way."""
    for given, option in ((options.tiles, "--tiles"), (options.batches, "--batches"),
                          (options.sweep_backends, "--sweep-backends")):
        if given:
            raise InputError(f"{option}: {model or options.artifacts} is a network whose output is alpha; it has no "
                             "detail tiles to sweep (its refinement's tile: `mattrt infer --tile`)")
    thread_counts, repeats, warmup, out, stem = _run_settings(options)
    threads = thread_counts[0]
    cases: list[Case] = []

    def add(variant: Variant, status: str = "pending", reason: str = "", only=None):
        for size in ([only] if only else sizes):
            cases.append(Case(variant, size, status, reason))

    for name in names:
        backend = BACKENDS.get(name)
        if backend is None:  # only triton can be absent from the registry
            add(Variant(TRITON, TRITON, "-", "-"), "skipped", "triton: no triton backend registered")
            continue
        for device in list(options.device or backend.devices):
            if backend.artifacts == "url":
                missing = "; ".join(f"needs {p.name}: {p.detail}" for p in backend.missing(device))
                reason = missing or ("" if options.triton_url else
                                     "no server given (--triton-url HOST:PORT; start one with `mattrt serve`)")
                add(Variant(TRITON, name, device, "server"), "skipped" if reason else "pending", reason)
                continue
            if device not in backend.devices:
                add(Variant("alpha", name, device, "-"), "skipped", f"{name} runs on {', '.join(backend.devices)} only")
                continue
            missing = "; ".join(f"needs {p.name}: {p.detail}" for p in backend.missing(device))
            if backend.artifacts == "model" and not missing:
                missing = f"{name} runs a registered model's own network; an imported ONNX graph has none"
            for precision in list(options.precision or _default_precisions(backend, device, options.quick)):
                variant = Variant("alpha", name, device, precision, threads=threads)
                if precision not in backend.precisions:
                    add(variant, "skipped", f"{name} has no {precision}")
                    continue
                refused = missing or backend.refusal(device, precision)
                add(variant, "skipped" if refused else "pending", refused or "")
                if not refused and (name, device, precision) == ("onnxruntime", "cpu", "fp32"):
                    add(Variant("alpha", name, device, precision, threads=threads, refine="none"))
    if not options.no_baselines:
        for kind in ("rembg", "rembg_am"):
            variant = Variant(kind, "onnxruntime", "cpu", "fp32", threads=threads)
            if not isinstance(source, CardSource):
                add(variant, "skipped", "needs the original graph: --model NAME of an imported model")
                continue
            missing = BACKENDS["onnxruntime"].missing("cpu")
            if missing:
                add(variant, "skipped", "; ".join(f"needs {p.name}: {p.detail}" for p in missing))
                continue
            for size in sizes:
                needed, free = rembg_am_mib(*size) * (1 << 20), available_memory()
                if kind == "rembg_am" and free is not None and needed > free / 2:
                    add(variant, "skipped", "pymatting's whole-image closed form would add about "
                        f"{format_bytes(needed)} ({REMBG_AM_MIB_PER_MEGAPIXEL} MiB per megapixel, measured at 4K), over half the "
                        f"{format_bytes(free)} available", only=size)
                else:
                    add(variant, only=size)
    if not any(c.status == "pending" for c in cases):
        raise InputError("nothing to run: every variant is skipped here (" +
                         "; ".join(sorted({f"{c.variant.label}: {c.reason}" for c in cases})) + ")")
    return BenchPlan(model, options.artifacts, options.checkpoint, settings, sizes, cases, repeats, warmup,
                     options.quick, out, stem, options)


def result_paths(out: Path, stem: str) -> dict[str, Path]:
    return {
        "json": out / f"{stem}.json",
        "csv": out / f"{stem}.csv",
        "latency_plot": out / f"{stem}-latency.png",
        "tile_plot": out / f"{stem}-tiles.png",
        "accuracy_plot": out / f"{stem}-accuracy.png",
    }


def _has_cuda() -> bool:
    return available("torch_cuda")


__all__ = ["BASELINE_LABELS", "BenchOptions", "BenchPlan", "Case", "FULL_RESOLUTIONS", "NAMED_RESOLUTIONS",
           "PIPELINE_KINDS", "QUICK_MODEL", "RESULTS_DIR", "SAMPLE_KIND", "SAMPLE_SEED", "TRITON", "Variant", "build_plan",
           "check_sizes", "parse_resolution", "resolution_label", "result_paths"]
