"""Building TensorRT plans from an export directory: one plain plan per stage, cached by key.

    metadata = build_plans("exports/aim", "exports/aim/tensorrt", precision="fp16", profile="server")

Why it is written this way:
- The TensorRT Python API is called directly (no Polygraphy builder helpers: they still set
  builder flags TensorRT 11 removed). Networks are strongly typed where the flag exists
  (10.x opts in; 11.x is always strongly typed and has no FP16/INT8 builder flags), so the
  precision is the graph's: `precision` picks the manifest's FP32 graph, its FP16 graph or its
  INT8 Q/DQ graph, and TensorRT builds what that graph says. TF32 (on by default in TensorRT) is
  turned off, so FP32 layers compute in FP32. Features are detected with `hasattr`, never from
  version strings.
- One optimization profile per plan: batch 1..manifest.max_batch at the stage's fixed spatial
  shape; the optimum is the batch the pipeline sends (1 for the semantic stage, the profile's
  tile batch for the others, never above max_batch). DLA runs no dynamic dimensions (TensorRT's
  "DLA Supported Layers and Restrictions": min = opt = max, run-time shapes = build shapes), so a
  DLA profile fixes every batch at that optimum and the engine pads shorter batches
  (tensorrt_engine.TrtEngine). A graph whose input shape cannot take the profile (e.g. a fixed
  batch) is a BuildError naming the input and both shapes.
- DLA (the jetson-orin-dla profile): mattrt's networks are strongly typed, and TensorRT documents
  strongly typed networks on DLA from 11.4.1 on (its release notes; AGX Orin with JetPack >=
  7.2.2). 10.x documents DLA through the FP16/INT8 builder flags only, 11.0-11.3 have no DLA: such
  a TensorRT, or one reporting no DLA core, is refused with its version named. What actually runs
  on DLA is read back from the built plan with TensorRT's engine inspector and recorded; a plan
  with no layer on DLA is refused, never recorded as a DLA plan.
- Plans stay plain TensorRT plans (trtexec --loadEngine and Triton's tensorrt_plan backend load
  them as they are); what mattrt knows about them sits beside them in `tensorrt-<precision>.json`
  with a copy of the export's manifest, so the output directory opens on its own
  (`tensorrt_engine.open_plans`).
- Cache key: graph sha256, TensorRT version, GPU name and compute capability, the profile and
  the builder options. A plan whose recorded key differs is rebuilt, with a message saying why;
  an up-to-date plan is reused.
- The timing cache is loaded before and saved after the builds (default OUT/timing.cache). A
  sidecar JSON records which TensorRT and GPU wrote it; a cache from another TensorRT version or
  GPU, or one TensorRT rejects, is reported and a new one started (and then saved in its place).
- Failures say what TensorRT said: parser errors with node names and operators, a failed build
  with the logger's last errors (e.g. not enough workspace: raise --workspace).

Profiles (PROFILES) are the deployment targets; each field says exactly what it changes.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from packaging.version import Version

from mattrt.engines.tensorrt.plan_files import (
    DEFAULT_TIMING_CACHE,
    METADATA_FORMAT,
    build_settings,
    metadata_path,
    plan_file_name,
    plan_key,
    prepare_out_dir,
    read_metadata,
    read_timing_cache,
    stale_reasons,
    write_json,
    write_timing_cache,
)
from mattrt.errors import InputError, MattrtError
from mattrt.lazy import lazy_import
from mattrt.manifest import BATCH_DIM, PRECISIONS, GraphEntry, Manifest
from mattrt.models.checkpoints import file_sha256
from mattrt.runtime.engine import check_choice, require_all

trt = lazy_import("tensorrt", probe="tensorrt")
cupy = lazy_import("cupy", probe="cupy_device")

# Probes the build step needs: the builder and a GPU (TensorRT builds on the GPU it targets).
BUILD_PROBES = ("tensorrt", "cupy_device")

# Builder API the build step calls (one place; tests/test_tensorrt_api.py reads it). The lean
# runtime's bindings carry the enums, so those names are checked against TensorRT 11.4 there;
# Builder, IBuilderConfig, INetworkDefinition and OnnxParser are not in the lean bindings and are
# unchecked anywhere here. FEATURE_DETECTED names are looked up with hasattr before use.
BUILDER_API = (
    "Builder", "Builder.create_network", "Builder.create_builder_config", "Builder.create_optimization_profile",
    "Builder.build_serialized_network", "Builder.num_DLA_cores", "OnnxParser", "OnnxParser.parse_from_file",
    "OnnxParser.num_errors", "OnnxParser.get_error", "IBuilderConfig.set_memory_pool_limit",
    "IBuilderConfig.builder_optimization_level", "IBuilderConfig.set_flag", "IBuilderConfig.clear_flag",
    "IBuilderConfig.hardware_compatibility_level",
    "IBuilderConfig.create_timing_cache", "IBuilderConfig.set_timing_cache", "IBuilderConfig.get_timing_cache",
    "IBuilderConfig.add_optimization_profile", "IBuilderConfig.default_device_type", "IBuilderConfig.DLA_core",
    "IOptimizationProfile.set_shape", "INetworkDefinition.num_inputs", "INetworkDefinition.get_input",
    "ITensor.name", "ITensor.shape",
    "ITimingCache.serialize", "ILogger", "Logger.Severity.ERROR", "Logger.Severity.INTERNAL_ERROR",
    "Logger.Severity.WARNING", "MemoryPoolType.WORKSPACE", "BuilderFlag.VERSION_COMPATIBLE",
    "BuilderFlag.GPU_FALLBACK", "BuilderFlag.TF32", "HardwareCompatibilityLevel.AMPERE_PLUS", "DeviceType.DLA",
    # reading back where the DLA plan's layers run
    "IBuilderConfig.profiling_verbosity", "ProfilingVerbosity.DETAILED", "Runtime", "Runtime.DLA_core",
    "Runtime.deserialize_cuda_engine", "ICudaEngine.create_engine_inspector", "EngineInspector.get_engine_information",
    "LayerInformationFormat.JSON",
)
FEATURE_DETECTED = ("NetworkDefinitionCreationFlag.STRONGLY_TYPED",)


class BuildError(MattrtError):
    """TensorRT could not parse a graph or build a plan (the message carries TensorRT's errors)."""


# -- profiles -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrtProfile:
    """A deployment target: what `mattrt build --profile NAME` changes. Every field is used."""

    name: str
    summary: str
    tile_batch: int  # optimization-profile optimum for batched stages (clamped to the export's max_batch)
    optimization_level: int  # IBuilderConfig.builder_optimization_level (TensorRT's default is 3)
    workspace_mb: int | None  # WORKSPACE memory-pool limit; None: TensorRT's default (the whole device memory)
    cuda_graphs: bool  # engines opened from these plans replay one CUDA graph per batch size by default
    tile_size: int | None  # the export's tile side this target needs (None: any)
    compute_capability: tuple[int, int] | None  # the GPU this target builds on (None: any)
    # Layers on DLA core DLA_CORE, the rest on the GPU (GPU fallback); every batch fixed at the
    # optimum (DLA has no dynamic dimensions); FP16/INT8 graphs on a TensorRT that can (module docstring).
    dla: bool
    allows_hardware_compatible: bool  # whether --hardware-compatible is possible on this target


PROFILES: dict[str, TrtProfile] = {
    p.name: p
    for p in (
        TrtProfile(
            name="server",
            summary="H100/H200 class data-centre GPUs: tile batch 8, CUDA graphs, builder optimization level 5",
            tile_batch=8, optimization_level=5, workspace_mb=None, cuda_graphs=True, tile_size=None,
            compute_capability=None, dla=False, allows_hardware_compatible=True,
        ),
        TrtProfile(
            name="jetson-orin",
            summary="Jetson Orin's GPU (sm_87), built on the device: 512 px tiles, tile batch 2, 1 GiB workspace "
                    "(TensorRT 10.x on JetPack 6 or 11.4.1 on JetPack 7)",
            tile_batch=2, optimization_level=3, workspace_mb=1024, cuda_graphs=False, tile_size=512,
            compute_capability=(8, 7), dla=False, allows_hardware_compatible=False,
        ),
        TrtProfile(
            name="jetson-orin-dla",
            summary="Jetson AGX Orin's DLA core 0 with GPU fallback (FP16/INT8 graphs; TensorRT >= 11.4.1, "
                    "JetPack >= 7.2.2): fixed batch 2, 512 px tiles, 1 GiB workspace",
            tile_batch=2, optimization_level=3, workspace_mb=1024, cuda_graphs=False, tile_size=512,
            compute_capability=(8, 7), dla=True, allows_hardware_compatible=False,
        ),
    )
}


def get_profile(name: str) -> TrtProfile:
    return PROFILES[check_choice(name, tuple(PROFILES), "TensorRT profile")]


@dataclass(frozen=True)
class BuildOptions:
    """What the user chose beyond the profile (all part of the cache key)."""

    precision: str = "fp32"
    profile: str = "server"
    workspace_mb: int | None = None  # None: the profile's
    # BuilderFlag.VERSION_COMPATIBLE: later TensorRT of the same major (and the lean runtime) run it
    version_compatible: bool = False
    # HardwareCompatibilityLevel.AMPERE_PLUS: any Ampere-or-newer GPU runs it (slower)
    hardware_compatible: bool = False

    def __post_init__(self) -> None:
        check_choice(self.precision, PRECISIONS, "precision")
        get_profile(self.profile)
        if self.workspace_mb is not None and (
            isinstance(self.workspace_mb, bool) or not isinstance(self.workspace_mb, int) or self.workspace_mb < 1
        ):
            raise InputError(f"workspace must be a positive number of MiB, got {self.workspace_mb!r}")

    @property
    def workspace(self) -> int | None:
        """The workspace limit in MiB that the build uses (yours, else the profile's)."""
        return self.workspace_mb if self.workspace_mb is not None else get_profile(self.profile).workspace_mb


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return "sm_%d%d" % self.compute_capability

    def describe(self) -> str:
        return f"{self.name} ({self.sm})"


def gpu_identity(device: int = 0) -> GpuIdentity:
    """Name and compute capability of CUDA device `device` (through CuPy)."""
    props = cupy.cuda.runtime.getDeviceProperties(device)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return GpuIdentity(name, (int(props["major"]), int(props["minor"])))


# -- what the manifest and profile say about one plan ------------------------------------------
def check_request(manifest: Manifest, options: BuildOptions, gpu: GpuIdentity) -> TrtProfile:
    """The profile, after checking that it, the options, the export and this GPU go together."""
    profile = get_profile(options.profile)
    if profile.tile_size is not None and int(manifest.tile_size) != profile.tile_size:
        raise InputError(
            f"the {profile.name} profile builds {profile.tile_size} x {profile.tile_size} tiles; this export of "
            f"{manifest.model!r} has {manifest.tile_size} x {manifest.tile_size} tiles: re-export with "
            f"`mattrt export {manifest.model} --tile {profile.tile_size} --out DIR`"
        )
    if profile.compute_capability is not None and gpu.compute_capability != profile.compute_capability:
        raise InputError(
            f"the {profile.name} profile builds on the target itself (sm_%d%d); this GPU is {gpu.describe()}. "
            "Run mattrt build on the device (plans are specific to the GPU they are built on)"
            % profile.compute_capability
        )
    if options.hardware_compatible:
        if not profile.allows_hardware_compatible:
            raise InputError(f"--hardware-compatible is not supported on the {profile.name} target "
                             "(TensorRT offers it for Ampere-or-newer data-centre and desktop GPUs only)")
        if gpu.compute_capability < (8, 0):
            raise InputError(
                f"--hardware-compatible needs an Ampere-or-newer GPU to build on; this is {gpu.describe()}")
    if profile.dla and options.precision == "fp32":
        raise InputError(f"the {profile.name} profile places layers on DLA, which computes in FP16/INT8 only: build "
                         "--precision fp16 or int8, or use --profile jetson-orin for an fp32 plan on the GPU")
    missing = [entry.name for entry in manifest.stages if entry.file_for(options.precision, "tensorrt") is None]
    if missing:
        raise InputError(
            f"the export of {manifest.model!r} has no {options.precision} graph for stage(s) {', '.join(missing)}; "
            f"add it with `mattrt precision DIR --precision {options.precision}` or build another precision"
        )
    return profile


def check_lint(manifest: Manifest, precision: str) -> None:
    """InputError naming the nodes and operators when the TensorRT lint recorded in the manifest
    (at export or import) found problems in a graph this build would parse."""
    files = {entry.file_for(precision, "tensorrt") for entry in manifest.stages}
    problems = [p for p in manifest.lint.get("problems", []) if isinstance(p, dict) and p.get("graph") in files]
    if problems:
        lines = [f"  {p['graph']}: node {p.get('node', '')!r} ({p.get('op_type', '')}): {p.get('reason', '')}"
                 for p in problems[:20]]
        more = [f"  ... and {len(problems) - 20} more"] if len(problems) > 20 else []
        raise InputError(f"TensorRT's ONNX parser cannot take the graph(s) of {manifest.model!r}: the TensorRT lint "
                         f"recorded {len(problems)} problem(s):\n" + "\n".join(lines + more)
                         + "\nnothing was built; run it on onnxruntime (--backend onnxruntime)")


def optimum_batch(entry: GraphEntry, manifest: Manifest, profile: TrtProfile) -> int:
    """The batch TensorRT tunes for: 1 for the semantic stage (one canvas per image), the
    profile's tile batch for the batched stages; never above the export's max_batch."""
    if entry.name == "semantic":
        return 1
    return max(1, min(profile.tile_batch, int(manifest.max_batch)))


def profile_shapes(entry: GraphEntry, manifest: Manifest, profile: TrtProfile) -> dict[str, list[list[int]]]:
    """input name -> [min, opt, max] shapes of the plan's one optimization profile (a DLA profile:
    min = opt = max, the batch fixed at the optimum)."""
    opt = optimum_batch(entry, manifest, profile)
    batches = (opt, opt, opt) if profile.dla else (1, opt, int(manifest.max_batch))
    shapes = {}
    for tensor in entry.inputs:
        if tensor.shape[0] != BATCH_DIM:
            fixed = list(tensor.concrete_shape(1))
            shapes[tensor.name] = [fixed, fixed, fixed]
            continue
        shapes[tensor.name] = [list(tensor.concrete_shape(b)) for b in batches]
    return shapes


def profile_mismatch(name: str, graph_shape: tuple[int, ...], shapes: list[list[int]]) -> str | None:
    """Why an input of shape `graph_shape` in the parsed graph (-1: dynamic) cannot take the
    profile's [min, opt, max] `shapes` (None: it can). TensorRT only rejects the profile later,
    as a bare RuntimeError or a failed build."""
    low, opt, high = shapes
    if len(graph_shape) != len(low):
        return (f"input {name!r} has {len(graph_shape)} dimensions {list(graph_shape)} in the graph, the optimization "
                f"profile {len(low)} ({low} .. {high}); re-export the model")
    for axis, size in enumerate(graph_shape):
        if size >= 0 and not low[axis] == opt[axis] == high[axis] == size:
            what = "batch dimension" if axis == 0 else f"dimension {axis}"
            fix = ("re-export it with a dynamic batch (`mattrt export MODEL --out DIR` writes one)" if axis == 0
                   else "re-export the model (the graph and its manifest disagree)")
            return (f"input {name!r} has shape {list(graph_shape)} in the graph: its {what} is fixed at {size}, "
                    f"but the plan's optimization profile needs {low[axis]}..{high[axis]} (opt {opt[axis]}); {fix}")
    return None


# -- metadata beside the plans --------------------------------------------------------------


# -- timing cache -----------------------------------------------------------------------------


# -- TensorRT's messages ----------------------------------------------------------------------
def capturing_logger(module, min_severity_name: str = "WARNING"):
    """An ILogger of `module` (tensorrt or a lean runtime) that keeps every message at or above
    `min_severity_name` (module.Logger.Severity member) for error messages; `last_errors` reads it."""
    severity = module.Logger.Severity
    threshold = int(getattr(severity, min_severity_name))
    errors = {int(severity.INTERNAL_ERROR), int(severity.ERROR)}

    class CapturingLogger(module.ILogger):
        def __init__(self):
            module.ILogger.__init__(self)
            self.messages: list[tuple[bool, str]] = []  # (is an error, text)

        def log(self, level, message):
            if int(level) <= threshold:  # lower values are more severe
                self.messages.append((int(level) in errors, str(message)))

    return CapturingLogger()


def last_errors(logger, count: int = 5) -> str:
    """TensorRT's last error messages (or its last warnings, when it logged no error)."""
    messages = getattr(logger, "messages", [])
    errors = [text for is_error, text in messages if is_error] or [text for _, text in messages]
    if not errors:
        return "TensorRT logged no error"
    return " | ".join(errors[-count:])


def format_parser_errors(parser, graph: Path) -> str:
    """One line per ONNX parser error: node index, name and operator, error code, description."""
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = error.node()
        where = f"node {node}" if node >= 0 else "graph"
        name, operator = error.node_name(), error.node_operator()
        if name:
            where += f" {name!r}"
        if operator:
            where += f" ({operator})"
        code = getattr(error.code(), "name", str(error.code()))
        lines.append(f"  {where}: [{code}] {error.desc()}")
    return (f"TensorRT's ONNX parser rejected {graph.name} ({len(lines)} error(s)):\n" + "\n".join(lines)
            + f"\nCheck the graph with `mattrt lint {graph.parent}`; "
            "rewrites for unsupported ops are in engines/tensorrt/rewrites.py")


def build_failure_message(stage: str, logger, workspace_mb: int | None) -> str:
    text = last_errors(logger)
    advice = "see TensorRT's messages above"
    if "workspace" in text.lower() or "memory" in text.lower():
        have = f"{workspace_mb} MiB" if workspace_mb else "the device's memory"
        advice = f"not enough memory for the build ({have}): raise --workspace, or lower the export's --max-batch"
    return f"TensorRT could not build the {stage} plan: {text}; {advice}"


# -- DLA ----------------------------------------------------------------------------------------
DLA_CORE = 0
# The first TensorRT that documents strongly typed networks on DLA (11.4.1 release notes, "Strongly
# typed networks for DLA"; "Working with DLA": AGX Orin with JetPack >= 7.2.2, none in 11.0-11.3,
# 10.x through the FP16/INT8 builder flags only, which strongly typed networks forbid).
DLA_STRONGLY_TYPED_SINCE = "11.4.1"
DLA_FALLBACK_ADVICE = "build with --profile jetson-orin to run every layer on the GPU"
# Engine-inspector layer types of GPU subgraphs that TensorRT also names {ForeignNode[...]}.
GPU_FOREIGN_NODE_TYPES = ("Myelin", "kgen")


def check_dla_support(tensorrt_version: str, dla_cores: int) -> None:
    """BuildError unless this TensorRT can place mattrt's strongly typed networks on a DLA core."""
    if Version(tensorrt_version) < Version(DLA_STRONGLY_TYPED_SINCE):
        raise BuildError(
            f"TensorRT {tensorrt_version} cannot place strongly typed networks on DLA (10.x documents DLA only through "
            f"the FP16/INT8 builder flags, 11.0-11.3 have no DLA; strongly typed DLA builds need TensorRT "
            f">= {DLA_STRONGLY_TYPED_SINCE} on AGX Orin with JetPack >= 7.2.2): {DLA_FALLBACK_ADVICE}")
    if dla_cores <= DLA_CORE:
        raise BuildError(f"TensorRT {tensorrt_version} reports {dla_cores} DLA core(s) on this device, so DLA core "
                         f"{DLA_CORE} cannot be used (DLA: Jetson AGX Orin with JetPack >= 7.2.2): "
                         + DLA_FALLBACK_ADVICE)


def dla_placement(engine_information: str) -> dict[str, Any]:
    """Where a DLA plan's layers run, from the engine inspector's JSON (profiling verbosity
    DETAILED): TensorRT fuses each DLA loadable into one layer named {ForeignNode[first...last]}
    (trtexec's layer profiles, TensorRT#3143); Myelin subgraphs on the GPU share that name form
    and are told apart by their layer type. No DLA plan has been inspected here: the first
    jetson-orin-dla build checks this reading (tests/test_tensorrt_gpu.py)."""
    layers = json.loads(engine_information).get("Layers", [])
    on_dla = [layer["Name"] for layer in layers if isinstance(layer, dict)
              and str(layer.get("Name", "")).startswith("{ForeignNode[")
              and layer.get("LayerType") not in GPU_FOREIGN_NODE_TYPES]
    return {"core": DLA_CORE, "dla_subgraphs": on_dla, "other_layers": len(layers) - len(on_dla)}


# -- the build ----------------------------------------------------------------------------------
def _stderr(message: str) -> None:
    print(f"mattrt build: {message}", file=sys.stderr)


def build_plans(
    export_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    precision: str = "fp32",
    profile: str = "server",
    workspace_mb: int | None = None,
    timing_cache: str | Path | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    log: Callable[[str], None] = _stderr,
) -> dict[str, Any]:
    """Build (or reuse) one plan per stage of the export at `precision`; return the metadata
    written to OUT/tensorrt-<precision>.json. OUT defaults to EXPORT/tensorrt."""
    export_dir = Path(export_dir)
    options = BuildOptions(precision, profile, workspace_mb, bool(version_compatible), bool(hardware_compatible))
    manifest = Manifest.load(export_dir)
    if export_dir.is_file():
        export_dir = export_dir.parent
    check_lint(manifest, precision)
    require_all(BUILD_PROBES, "building TensorRT plans")
    out_dir = Path(out_dir) if out_dir is not None else export_dir / "tensorrt"
    gpu = gpu_identity()
    chosen = check_request(manifest, options, gpu)
    version = str(trt.__version__)
    prepare_out_dir(out_dir, manifest, log)
    cache_path = Path(timing_cache) if timing_cache is not None else out_dir / DEFAULT_TIMING_CACHE
    seed, note = read_timing_cache(cache_path, version, gpu)
    if note:
        log(note)
    earlier = read_metadata(out_dir, precision) or {"stages": {}}
    metadata = {
        "format": METADATA_FORMAT,
        "model": manifest.model,
        "export_dir": str(export_dir),
        "precision": precision,
        **build_settings(version, gpu, chosen, options),
        "timing_cache": str(cache_path),
        "notes": [],
        "stages": {},  # filled stage by stage: after a failure, the finished plans are reused next time
    }
    timing = None
    for entry in manifest.stages:
        graph = export_dir / entry.file_for(precision, "tensorrt")
        if not graph.is_file():
            raise InputError(f"the manifest names {graph}, which does not exist; re-export the model")
        shapes = profile_shapes(entry, manifest, chosen)
        key = plan_key(file_sha256(graph), version, gpu, chosen, options, shapes)
        plan_path = out_dir / plan_file_name(entry.name, precision)
        recorded = earlier["stages"].get(entry.name, {})
        reasons = stale_reasons(recorded.get("key"), key)
        if not reasons and plan_path.is_file() and file_sha256(plan_path) == recorded.get("plan_sha256"):
            record = recorded
            log(f"{entry.name}: plan up to date ({plan_path.name})")
        else:
            if recorded:
                log(f"{entry.name}: rebuilding {plan_path.name}: {'; '.join(reasons) or 'the plan file changed'}")
            record, timing = _build_stage(entry, graph, plan_path, chosen, options, shapes, version, seed, timing, log)
            record["key"] = key
            write_timing_cache(cache_path, timing, version, gpu)
        metadata["stages"][entry.name] = record
        metadata["notes"] = sorted(set(metadata["notes"]) | set(record.get("notes", [])))
        write_json(metadata_path(out_dir, precision), metadata)
    return metadata


def _has_strongly_typed() -> bool:
    return hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def parse_graph(graph: Path, logger) -> tuple[Any, Any, Any]:
    """A strongly typed network (where this TensorRT has the flag) parsed from an ONNX file:
    (builder, network, parser); the parser is returned because the network borrows its weights."""
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if _has_strongly_typed() else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):
        raise BuildError(format_parser_errors(parser, graph))
    return builder, network, parser


def _build_stage(entry: GraphEntry, graph: Path, plan_path: Path, profile: TrtProfile, options: BuildOptions,
                 shapes: dict, version: str, seed: bytes, timing: bytes | None,
                 log: Callable[[str], None]) -> tuple[dict[str, Any], bytes]:
    """Parse one graph and build its plan; returns the stage record and the timing cache bytes."""
    started = time.perf_counter()
    logger = capturing_logger(trt)
    builder, network, parser = parse_graph(graph, logger)
    config = builder.create_builder_config()
    if options.workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace << 20)
    config.builder_optimization_level = profile.optimization_level
    # TensorRT enables TF32 by default; the graph's FP32 layers stay FP32 (no quiet precision change).
    config.clear_flag(trt.BuilderFlag.TF32)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if profile.dla:
        check_dla_support(version, int(builder.num_DLA_cores))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = DLA_CORE
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer types for dla_placement
    cache = config.create_timing_cache(timing if timing is not None else seed)
    if cache is None or not config.set_timing_cache(cache, False):
        log(f"TensorRT rejected the timing cache ({last_errors(logger)}): starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    add_profile(builder, config, network, shapes, graph, logger)
    log(f"{entry.name}: building {plan_path.name} from {graph.name} ({options.precision}, profile {profile.name})")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(build_failure_message(entry.name, logger, options.workspace))
    data = bytes(plan)
    notes, dla = [], None
    if profile.dla:
        dla = read_dla_placement(data, logger, entry.name)
        if dla["other_layers"]:
            notes.append(f"{entry.name}: {len(dla['dla_subgraphs'])} DLA subgraph(s) on DLA core {DLA_CORE}; "
                         f"{dla['other_layers']} other layer(s) run on the GPU (GPU fallback and DLA transfers)")
    temporary = plan_path.with_name(plan_path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(plan_path)
    batches = shapes[entry.inputs[0].name]
    record = {
        "graph": graph.name,
        "plan": plan_path.name,
        "plan_sha256": hashlib.sha256(data).hexdigest(),
        "dla": dla,  # None: every layer on the GPU
        "strongly_typed": _has_strongly_typed() or not hasattr(trt.BuilderFlag, "FP16"),  # 11.x: always
        "tf32": False,
        "min_batch": batches[0][0],
        "opt_batch": batches[1][0],
        "max_batch": batches[2][0],
        "build_seconds": round(time.perf_counter() - started, 3),
        "notes": notes,
    }
    return record, bytes(config.get_timing_cache().serialize())


def add_profile(builder, config, network, shapes: dict, graph: Path, logger) -> None:
    """The plan's one optimization profile, each input checked against the parsed graph first."""
    optimization = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        name = tensor.name
        if name not in shapes:
            raise BuildError(f"{graph.name} has input {name!r}, which the manifest does not list; re-export the model")
        problem = profile_mismatch(name, tuple(int(d) for d in tensor.shape), shapes[name])
        if problem:
            raise BuildError(f"{graph.name}: {problem}")
        try:
            optimization.set_shape(name, *shapes[name])
        except RuntimeError as exc:  # the bindings raise when min <= opt <= max does not hold
            raise BuildError(f"{graph.name}: TensorRT refused the profile {shapes[name]} for input {name!r}: "
                             f"{exc}") from None
    # -1: an invalid profile (IBuilderConfig::addOptimizationProfile)
    if config.add_optimization_profile(optimization) < 0:
        raise BuildError(f"TensorRT refused the optimization profile of {graph.name} ({last_errors(logger)}); "
                         f"shapes: {shapes}")


def read_dla_placement(plan: bytes, logger, stage: str) -> dict[str, Any]:
    """dla_placement of a freshly built DLA plan; BuildError when no layer runs on DLA (such a
    plan is a GPU plan and is not recorded as a DLA one)."""
    runtime = trt.Runtime(logger)
    runtime.DLA_core = DLA_CORE  # before deserializing: a DLA plan needs its core (IRuntime::setDLACore)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise BuildError(f"TensorRT could not load the {stage} plan it just built: {last_errors(logger)}")
    placement = dla_placement(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    if not placement["dla_subgraphs"]:
        raise BuildError(f"TensorRT placed none of the {stage} stage's layers on DLA (all {placement['other_layers']} "
                         f"run on the GPU): {DLA_FALLBACK_ADVICE}")
    return placement


def prepare(export_dir: str | Path, out_dir: str | Path, *, device: str = "cuda", precision: str = "fp32",
            **options) -> dict[str, Any]:
    """Backend.prepare for the engine cache: build_plans into `out_dir` (cuda only)."""
    if device != "cuda":
        raise InputError(f"TensorRT plans run on cuda, not {device!r}")
    return build_plans(export_dir, out_dir, precision=precision, **options)


def describe_profiles() -> Iterable[str]:
    for profile in PROFILES.values():
        yield f"{profile.name}: {profile.summary}"


__all__ = [
    "BUILDER_API", "BUILD_PROBES", "BuildError", "BuildOptions", "DLA_CORE", "GpuIdentity", "PROFILES", "TrtProfile",
    "build_plans", "check_dla_support", "check_request", "dla_placement", "format_parser_errors", "get_profile",
    "parse_graph", "prepare", "profile_mismatch", "profile_shapes",
]
