"""Where a deployment starts: what the user named.

    ModelSource("aim", checkpoint="aim.pth", tile_size=512)   a registered model (or a MattingModel
                                                              instance) and the authors' weights
    ExportSource("exports/aim")                               an export directory (`mattrt export`)
    ServerSource("127.0.0.1:8001")                            a Triton server running the pipeline

The stage sizes are decided here, once: a model source checks the canvas and tile it is asked
for against the model's stride (models/settings.py `stage_size_overrides`), and the graphs
exported from it, or the eager engines opened over it, take those sizes; an export fixed them
when it was made (its manifest), so an export source refuses any other. Everything downstream
reads the sizes from the manifest or the ModelSpec, never from a second option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mattrt.errors import InputError
from mattrt.manifest import Manifest
from mattrt.models import MattingModel, get_settings
from mattrt.models.checkpoints import file_sha256
from mattrt.models.settings import ModelSettings, stage_size_overrides


def _checkpoint_sha256(checkpoint) -> Any:
    if isinstance(checkpoint, dict):
        return {part: file_sha256(path) for part, path in sorted(checkpoint.items())}
    if checkpoint is not None:
        return file_sha256(checkpoint)
    return None  # the model's default weights (committed file or untrained)


@dataclass(frozen=True)
class ModelSource:
    """A registered model by name (or an instance), with the weights and stage sizes to use."""

    model: str | MattingModel
    checkpoint: Any = None  # a path, or {part: path} for models shipped in several files
    semantic_size: int | None = None
    tile_size: int | None = None
    sizes: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        settings = self.settings
        object.__setattr__(self, "sizes", stage_size_overrides(settings, self.semantic_size, self.tile_size))

    @property
    def name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.settings.name

    @property
    def settings(self) -> ModelSettings:
        if isinstance(self.model, str):
            return get_settings(self.model)  # unknown names: an error listing the registered ones
        if not isinstance(self.model, MattingModel):
            raise InputError(f"a model source is a registered model name or a MattingModel, got "
                             f"{type(self.model).__name__}")
        return self.model.settings

    @property
    def cacheable(self) -> bool:
        """Only a registered name (with its checkpoint file) identifies the weights for a cache key."""
        return isinstance(self.model, str)

    def cache_key(self) -> dict[str, Any]:
        return {"model": self.name, "checkpoint_sha256": _checkpoint_sha256(self.checkpoint),
                "semantic_size": self.semantic_size, "tile_size": self.tile_size}

    def describe(self) -> str:
        return f"model {self.name}"


@dataclass(frozen=True)
class ExportSource:
    """An export directory: its manifest fixed the model, weights and stage sizes."""

    directory: Path
    semantic_size: int | None = None  # when given, must equal the export's
    tile_size: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "directory", Path(self.directory))
        if self.tile_size is None and self.semantic_size is None:
            return  # nothing to check yet: the manifest is read (and validated) when the graphs are opened
        manifest = self.manifest
        for asked, fixed, what, option in ((self.tile_size, manifest.tile_size, "tile", "--tile"),
                                           (self.semantic_size, manifest.semantic_size, "semantic canvas",
                                            "--semantic-size")):
            if asked is not None and asked != fixed:
                raise InputError(
                    f"the export in {self.directory} is fixed at {what} {fixed} x {fixed}; {what} {asked} needs graphs "
                    f"exported with that size (mattrt export {manifest.model} {option} {asked}, or --model "
                    f"{manifest.model} {option} {asked}, which exports through the artifact cache)"
                )

    @property
    def manifest(self) -> Manifest:
        return Manifest.load(self.directory)

    @property
    def name(self) -> str:
        return self.manifest.model

    def describe(self) -> str:
        return f"export {self.directory}"


@dataclass(frozen=True)
class ServerSource:
    """A Triton server whose pipeline model runs the whole pipeline; its repository fixed the model."""

    url: str

    def describe(self) -> str:
        return f"server {self.url}"


Source = ModelSource | ExportSource | ServerSource

__all__ = ["ExportSource", "ModelSource", "ServerSource", "Source"]
