"""One frozen settings dataclass per model (the timm pattern).

`ModelSettings` holds what every stage, exporter and runtime needs to know about a model;
each model subclasses it with its own defaults and extra fields. Settings are data only:
they never hold modules or tensors, so they serialise into export manifests as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mattrt.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Order of the three trimap classes everywhere in mattrt (semantic outputs, guidance, fusion).
TRIMAP_CLASSES = ("background", "unknown", "foreground")


@dataclass(frozen=True)
class ModelSettings:
    name: str = ""
    description: str = ""
    paper: str = ""
    # Network stages in the order the pipeline calls them (names of `MattingModel.stages()`).
    stages: tuple[str, ...] = ("semantic", "detail")
    # Key of `mattrt.models.fusion.FUSIONS` that turns trimap probabilities + raw alpha into alpha.
    fusion: str = "unknown_blend"
    # Guidance the detail stage reads besides the image: "none", "trimap" (the 3 trimap
    # probabilities) or a model-specific builder name; `guidance_channels` is its width.
    guidance: str = "trimap"
    guidance_channels: int = 3
    # Input normalisation: RGB in [0, 1], then (x - mean) / std per channel.
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Height and width of every network input must be a multiple of this.
    stride_multiple: int = 32
    # Fixed spatial sizes of the stage calls (README.md, "How it works": only the batch is dynamic).
    semantic_size: int = 512
    tile_size: int = 512
    tile_overlap: int = 64
    # Channel-width multiplier: 1.0 is the published network; test and synthetic-domain
    # variants use the same code at reduced widths. Authors' checkpoints need 1.0.
    width: float = 1.0
    # For reduced variants: the full model they shrink.
    variant_of: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def stage_size_overrides(settings: ModelSettings, semantic_size: int | None, tile_size: int | None) -> dict[str, int]:
    """The semantic canvas and detail tile asked for (None: the model's own), as settings
    overrides, checked against the model's stride. The one place this rule lives: graphs are
    exported at these sizes (export/exporter.py), eager engines run at them (engines/torch), and
    an export fixes them for everything downstream (its manifest)."""
    overrides = {}
    for value, what, option, field in ((semantic_size, "semantic size", "--semantic-size", "semantic_size"),
                                       (tile_size, "tile size", "--tile", "tile_size")):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(f"{what} must be a positive integer, got {value!r}")
        stride = settings.stride_multiple
        if value % stride:
            lower = max(stride, value // stride * stride)
            raise InputError(
                f"{what} {value} ({option}) is not a multiple of model {settings.name!r}'s stride multiple {stride}; "
                f"use {lower} or {lower + stride}"
            )
        overrides[field] = value
    return overrides


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def scaled(channels: int, width: float, minimum: int = 4, divisor: int = 2) -> int:
    """Channel count of a layer at a width multiplier (rounded to `divisor`, at least `minimum`)."""
    if width == 1.0:
        return channels
    value = int(round(channels * width / divisor)) * divisor
    return max(minimum, value)


__all__ = ["ModelSettings", "IMAGENET_MEAN", "IMAGENET_STD", "TRIMAP_CLASSES", "scaled", "stage_size_overrides"]
