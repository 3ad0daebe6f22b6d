"""The files of a TensorRT plans folder: OUT/<stage>-<precision>.plan, OUT/tensorrt-<precision>.json
(what each plan depends on: its key, so a plan is reused only while graph, TensorRT version,
GPU, profile and options are unchanged), a copy of the manifest, and the timing cache (replaced
with a note when another TensorRT version or GPU made it)."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mattrt.errors import InputError
from mattrt.manifest import MANIFEST_FILE, Manifest

if TYPE_CHECKING:
    from mattrt.engines.tensorrt.build import BuildOptions, GpuIdentity, TrtProfile

METADATA_FORMAT = 2  # 2: per-stage batch range and the DLA placement read from the plan


DEFAULT_TIMING_CACHE = "timing.cache"


def build_settings(tensorrt_version: str, gpu: GpuIdentity, profile: TrtProfile,
                   options: BuildOptions) -> dict[str, Any]:
    """What every plan of one build shares: TensorRT, the GPU, the profile and the options."""
    return {
        "tensorrt": tensorrt_version,
        "gpu": gpu.name,
        "compute_capability": "%d.%d" % gpu.compute_capability,
        "profile": asdict(profile),
        "options": {**asdict(options), "workspace_mb": options.workspace},
    }


def plan_key(graph_sha256: str, tensorrt_version: str, gpu: GpuIdentity, profile: TrtProfile,
             options: BuildOptions, shapes: dict) -> dict[str, Any]:
    """The parts a plan depends on; a plan is reused only when all of them are equal."""
    return {"graph_sha256": graph_sha256, **build_settings(tensorrt_version, gpu, profile, options),
            "shapes": shapes, "format": METADATA_FORMAT}


def stale_reasons(recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> list[str]:
    """Why a recorded plan key differs from the wanted one (empty: the plan is up to date)."""
    if recorded is None:
        return ["no plan yet"]
    labels = {"graph_sha256": "the graph changed", "tensorrt": "TensorRT {old} -> {new}", "gpu": "GPU {old} -> {new}",
              "compute_capability": "compute capability {old} -> {new}", "profile": "profile settings changed",
              "options": "builder options changed", "shapes": "optimization-profile shapes changed",
              "format": "metadata format {old} -> {new}"}
    return [labels.get(part, part + " changed").format(old=recorded.get(part), new=wanted.get(part))
            for part in wanted if recorded.get(part) != wanted[part]]


def metadata_path(out_dir: Path, precision: str) -> Path:
    return Path(out_dir) / f"tensorrt-{precision}.json"


def plan_file_name(stage: str, precision: str) -> str:
    return f"{stage}-{precision}.plan"


def read_metadata(out_dir: Path, precision: str) -> dict[str, Any] | None:
    path = metadata_path(out_dir, precision)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); delete it to rebuild the {precision} plans") from None
    if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT or not isinstance(data.get("stages"), dict):
        raise InputError(f"{path} is not a mattrt plan metadata file of format {METADATA_FORMAT}; "
                         f"delete it to rebuild the {precision} plans")
    return data


def write_json(path: Path, data: dict) -> None:
    """Write through a temporary file so a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)


def prepare_out_dir(out_dir: Path, manifest: Manifest, log: Callable[[str], None]) -> None:
    """Create OUT, or accept an earlier plans directory of the same model; never take over a
    directory holding something else. The manifest copy is (re)written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copy = out_dir / MANIFEST_FILE
    if copy.is_file():
        earlier = Manifest.load(out_dir)
        if earlier.model != manifest.model:
            raise InputError(f"{out_dir} holds plans of model {earlier.model!r}, not {manifest.model!r}; "
                             "pick another --out directory")
        if earlier.to_dict() != manifest.to_dict():
            log(f"{out_dir}: the export's manifest changed since the last build; plans are checked against it")
    elif any(out_dir.iterdir()):
        raise InputError(f"{out_dir} is not empty and holds no mattrt plans (no {MANIFEST_FILE}); "
                         "pick a new or empty --out directory")
    write_json(copy, manifest.to_dict())


def read_timing_cache(path: Path, tensorrt_version: str, gpu: GpuIdentity) -> tuple[bytes, str | None]:
    """Bytes to seed the timing cache with, and a note when the file is not used. The sidecar
    PATH.json names the TensorRT and GPU that wrote it; a cache written for another version or
    GPU starts afresh (TensorRT's caches are tied to both)."""
    if not path.is_file():
        return b"", None
    sidecar = path.with_name(path.name + ".json")
    try:
        written = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except (json.JSONDecodeError, OSError):
        written = {"tensorrt": "an unknown version (unreadable " + sidecar.name + ")"}
    if written.get("tensorrt") not in (None, tensorrt_version):
        return b"", (f"timing cache {path} was written by TensorRT {written['tensorrt']}, this is {tensorrt_version}: "
                     "starting a new cache (saved to the same path after the build)")
    if written.get("gpu") not in (None, gpu.name):
        return b"", (f"timing cache {path} was written on {written['gpu']}, this is {gpu.name}: "
                     "starting a new cache (saved to the same path after the build)")
    return path.read_bytes(), None


def write_timing_cache(path: Path, data: bytes, tensorrt_version: str, gpu: GpuIdentity) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
    write_json(path.with_name(path.name + ".json"), {"tensorrt": tensorrt_version, "gpu": gpu.name,
                                                     "compute_capability": "%d.%d" % gpu.compute_capability})


__all__ = ["DEFAULT_TIMING_CACHE", "METADATA_FORMAT", "build_settings", "metadata_path", "plan_file_name", "plan_key",
           "prepare_out_dir", "read_metadata", "read_timing_cache", "stale_reasons", "write_json", "write_timing_cache"]
