"""Where a deployment starts: what the user named.

    ModelSource("aim", checkpoint="aim.pth", tile_size=512)   a registered model (or a MattingModel
                                                              instance) and the authors' weights
    CardSource(find_imported("isnet"))                        an imported model: a model card and its ONNX
                                                              graph (`mattrt import`, `mattrt fetch`)
    ExportSource("exports/aim")                               an export directory (`mattrt export`)
    ServerSource("127.0.0.1:8001")                            a Triton server running the pipeline

The stage sizes are decided here, once: a model source checks the canvas and tile it is asked
for against the model's stride (models/settings.py `stage_size_overrides`), and the graphs
exported from it, or the eager engines opened over it, take those sizes; an export fixed them
when it was made (its manifest), so an export source refuses any other. Everything downstream
reads the sizes from the manifest or the ModelSpec, never from a second option. An imported
model's canvas is its graph's size (a graph of dynamic size takes --semantic-size); its tile
is the refinement's.

`model_source(NAME)` is what `--model NAME` means: a registered model, else an imported one in
the cache directory, else an error listing both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mattrt.errors import InputError, UnknownModelError
from mattrt.manifest import Manifest
from mattrt.models import MattingModel, get_settings, list_models
from mattrt.models.checkpoints import file_sha256
from mattrt.models.imported import ImportedModel, find_imported, imported_root, list_imported, verify_imported
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


@dataclass(frozen=True)
class CardSource:
    """An imported model: its card and ONNX graph, normalised into the artifact cache by
    GraphsFromSource (export/onnx_import.py) at the canvas and tile asked for."""

    imported: ImportedModel
    semantic_size: int | None = None  # a graph of dynamic size only (a fixed graph refuses another)
    tile_size: int | None = None  # the refinement's tile

    def __post_init__(self):
        for value, option in ((self.semantic_size, "--semantic-size"), (self.tile_size, "--tile")):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{option} must be a positive whole number, got {value!r}")
        fixed = self.imported.card.input.size
        if self.semantic_size is not None and fixed is not None and self.semantic_size != fixed[0]:
            raise InputError(f"imported model {self.name!r} runs at {fixed[0]} x {fixed[1]} (its card's input.size); "
                             f"--semantic-size {self.semantic_size} needs a graph of dynamic size")

    @property
    def name(self) -> str:
        return self.imported.name

    @property
    def model(self) -> str:
        return self.imported.name

    @property
    def canvas(self) -> int | None:
        """The canvas asked for, else the one a graph of dynamic size was imported at (None: the
        graph's own size, or export/onnx_import.py's default)."""
        return self.semantic_size if self.semantic_size is not None else self.imported.record.get("semantic_size")

    @property
    def cacheable(self) -> bool:
        return True

    def cache_key(self) -> dict[str, Any]:
        """The original graph's SHA-256 and the card's content (its file name and pin are the graph's
        identity, already in the key; its provenance, when and whence it was fetched, shapes nothing),
        with the sizes."""
        card = {k: v for k, v in self.imported.card.to_dict().items() if k not in ("file", "sha256", "provenance")}
        return {"model": self.name, "imported_graph_sha256": self.imported.sha256, "card": card,
                "semantic_size": self.canvas, "tile_size": self.tile_size}

    def describe(self) -> str:
        return f"imported model {self.name}"


Source = ModelSource | CardSource | ExportSource | ServerSource


def model_source(model: Any, *, checkpoint: Any = None, semantic_size: int | None = None,
                 tile_size: int | None = None, cache_dir: str | Path | None = None) -> ModelSource | CardSource:
    """What `--model NAME` names: a registered model (ModelSource), else a model imported into the
    cache directory (CardSource, its graph checked against the SHA-256 recorded at import), else an
    error listing the registered and the imported models."""
    if not isinstance(model, str) or model in list_models(include_variants=True):
        return ModelSource(model, checkpoint=checkpoint, semantic_size=semantic_size, tile_size=tile_size)
    imported = find_imported(model, cache_dir)
    if imported is None:
        names = [m.name for m in list_imported(cache_dir)[0]]
        raise UnknownModelError(
            f"unknown model {model!r}; registered models: {', '.join(list_models(include_variants=False))} (and their "
            f"variants: `mattrt models --all`); "
            f"imported models ({imported_root(cache_dir)}): {', '.join(names) or 'none'}. Import a network with "
            "`mattrt import CARD` or `mattrt fetch isnet`"
        )
    if checkpoint is not None:
        raise InputError(f"--checkpoint applies to registered models; the imported model {model!r} carries its "
                         "weights in its ONNX graph")
    verify_imported(imported)
    return CardSource(imported, semantic_size=semantic_size, tile_size=tile_size)


__all__ = ["CardSource", "ExportSource", "ModelSource", "ServerSource", "Source", "model_source"]
