"""What the pipeline knows about a model, whichever backend runs it.

`ModelSpec` is everything the pipeline needs to know about a model (normalisation, fusion kind,
guidance kind, stride, canvas and tile sizes, the full settings for model-specific guidance);
it is built from a model's settings or from an export manifest, so an export directory is run
through its manifest alone, with no Python model class. Backends (engines/backends.py) return a
ModelSpec with their stage engines; `check_engines` checks the pair against the pipeline's
contract. `MattingResult` is what a pipeline returns, in this process or from a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from mattrt.errors import InputError
from mattrt.manifest import Manifest
from mattrt.runtime.engine import Engine

if TYPE_CHECKING:
    from mattrt.models.settings import ModelSettings


@dataclass(frozen=True)
class ModelSpec:
    name: str
    stages: tuple[str, ...]
    fusion: str
    guidance: str
    guidance_channels: int
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stride_multiple: int
    semantic_size: int
    tile_size: int
    tile_overlap: int
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "registry" or the export directory
    checkpoint_sha256: Any = None
    # The semantic stage's output: "trimap" (a detail stage and the fusion follow) or "alpha" (an
    # imported single-stage network, refined at full resolution by `refine`); how the image is
    # fitted to its canvas: "letterbox" (aspect kept) or "stretch" (resized to the square).
    semantic_output: str = "trimap"
    fit: str = "letterbox"
    refine: dict[str, Any] = field(default_factory=dict)  # refinement settings of an alpha network

    @classmethod
    def from_settings(cls, settings: "ModelSettings", checkpoint_sha256: Any = None) -> "ModelSpec":
        return cls(
            name=settings.name,
            stages=tuple(settings.stages),
            fusion=settings.fusion,
            guidance=settings.guidance,
            guidance_channels=int(settings.guidance_channels),
            channel_order=settings.channel_order,
            mean=tuple(float(v) for v in settings.mean),
            std=tuple(float(v) for v in settings.std),
            stride_multiple=int(settings.stride_multiple),
            semantic_size=int(settings.semantic_size),
            tile_size=int(settings.tile_size),
            tile_overlap=int(settings.tile_overlap),
            settings=settings.to_dict(),
            source="registry",
            checkpoint_sha256=checkpoint_sha256,
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, source: str = "") -> "ModelSpec":
        norm = manifest.normalization
        input_range = list(norm.get("input_range", [0.0, 1.0]))
        if input_range != [0.0, 1.0]:
            raise InputError(f"manifest input_range {input_range} is not supported; this runtime feeds RGB in [0, 1]")
        return cls(
            name=manifest.model,
            stages=tuple(g.name for g in manifest.stages),
            fusion=manifest.fusion,
            guidance=manifest.guidance["kind"],
            guidance_channels=int(manifest.guidance["channels"]),
            channel_order=norm["channel_order"],
            mean=tuple(float(v) for v in norm["mean"]),
            std=tuple(float(v) for v in norm["std"]),
            stride_multiple=int(manifest.stride_multiple),
            semantic_size=int(manifest.semantic_size),
            tile_size=int(manifest.tile_size),
            tile_overlap=int(manifest.tile_overlap),
            settings=dict(manifest.settings),
            source=source,
            checkpoint_sha256=manifest.checkpoint_sha256,
            semantic_output=manifest.network["output"],
            fit=manifest.network["fit"],
            refine=dict(manifest.network.get("refine", {})),
        )

    @property
    def trained(self) -> bool:
        return self.checkpoint_sha256 not in (None, "untrained")


def read_export(directory: str | Path) -> tuple[Path, Manifest, ModelSpec]:
    """An export directory (or its manifest file): the folder, its manifest and the model it describes."""
    directory = Path(directory)
    manifest = Manifest.load(directory)
    if directory.is_file():
        directory = directory.parent
    return directory, manifest, ModelSpec.from_manifest(manifest, source=str(directory))


def check_engines(spec: ModelSpec, engines: Mapping[str, Engine]) -> None:
    """Every stage the spec names has an engine with the inputs and outputs the pipeline feeds/reads."""
    missing = [s for s in spec.stages if s not in engines]
    if missing:
        raise InputError(f"model {spec.name!r}: no engine for stage(s) {', '.join(missing)}")
    if spec.semantic_output == "alpha":
        semantic = engines.get("semantic")
        if semantic is None or semantic.input_names != ["image"] or semantic.output_names != ["alpha"]:
            raise InputError(f"model {spec.name!r} is an alpha network: its one stage 'semantic' must read 'image' and "
                             f"return 'alpha'; it has {semantic.describe() if semantic else 'no semantic stage'}")
        return
    for required in ("semantic", "detail"):
        if required not in engines:
            raise InputError(f"model {spec.name!r}: the pipeline needs a {required!r} stage")
    semantic = engines["semantic"]
    if semantic.input_names != ["image"] or "trimap" not in semantic.output_names:
        raise InputError(
            f"semantic stage of {spec.name!r} must read 'image' and return 'trimap'; it has {semantic.describe()}"
        )
    detail = engines["detail"]
    want = ["image"] if spec.guidance == "none" else ["image", "guidance"]
    if detail.input_names != want or "detail" not in detail.output_names:
        raise InputError(
            f"detail stage of {spec.name!r} must read {want} and return 'detail' (guidance {spec.guidance!r}); "
            f"it has {detail.describe()}"
        )


@dataclass
class MattingResult:
    alpha: np.ndarray  # H x W float32 in [0, 1]
    trimap: np.ndarray  # 3 x h x w trimap probabilities of the content region at semantic resolution (an alpha network: its 1 x h x w alpha)
    timings: dict[str, float]  # seconds per step
    plan: dict  # the tiling plan (TilePlan.describe) and sizes
    detail: np.ndarray | None = None  # stitched raw alpha at detail resolution (keep_detail=True)


__all__ = ["MattingResult", "ModelSpec", "check_engines", "read_export"]
