"""The deployment chain, one step per arrow (Polygraphy's loaders are the model):

    ExportSource | ModelSource | CardSource --> GraphsFromSource --> PrecisionFromGraphs --> ArtifactsFromGraphs
                                                                                      |
    ModelSource (torch) -----------------------------------------> EnginesFromModel   EnginesFromArtifacts
                                                                              \\        /
    ServerSource --------> PipelineFromServer                                PipelineFromEngines

A step is an object that is called to produce what the next step takes; each step takes either
that product or the step before it (called when it is needed), so a chain reads as the data
flows: `PipelineFromEngines(EnginesFromArtifacts(PrecisionFromGraphs(GraphsFromSource(source,
cache=cache), "int8", cache=cache), backend, device="cpu", precision="int8"))()`. Steps that make
files (graphs, precision variants, a backend's build such as TensorRT plans) make them in an
entry of the artifact cache (deploy/cache.py), once; each product carries notes of what was
reused or built, which end up in the Pipeline's notes (summaries record them).

deploy/plan.py builds the chain a command asks for (DeploymentRequest); this module holds the
steps themselves.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mattrt.calibration.variants import VARIANT_RULES, add_precisions
from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.sources import CardSource, ExportSource, ModelSource, ServerSource
from mattrt.errors import InputError
from mattrt.export.exporter import DEFAULT_MAX_BATCH, DEFAULT_OPSET, export_model, exporter_versions
from mattrt.export.onnx_import import normaliser_versions, write_imported_export
from mattrt.manifest import Manifest, graph_precision
from mattrt.models.checkpoints import file_sha256
from mattrt.runtime.artifacts import ModelSpec
from mattrt.runtime.engine import Backend, Engine
from mattrt.runtime.pipeline import Pipeline

Log = Callable[[str], None]
# INT8 variants made for --model runs calibrate on generated samples (data/synthetic.py, seed 1);
# to calibrate on your own images: `mattrt export --precision int8 --calibration DIR`.
CALIBRATION_RECIPE = {"calibration": "synthetic", "method": "entropy"}
# Imported networks (trained on photographs) calibrate on the bundled photographs unless their
# card's [calibration] says otherwise: mattrt's synthetic scenes drive a photographic network's
# activations far beyond their range (data/photographs.py).
IMPORTED_CALIBRATION_RECIPE = {"calibration": "photographs", "method": "entropy"}


def calibration_recipe(manifest: Manifest, default: Mapping[str, Any] = CALIBRATION_RECIPE) -> dict[str, Any]:
    """The INT8 recipe for an export: `default` for the registered models; for an imported model
    its card's [calibration] (data, method, percentile, keep_float) over IMPORTED_CALIBRATION_RECIPE."""
    card = manifest.network.get("card")
    if not card:
        return dict(default)
    section = dict(card.get("calibration", {}))
    recipe = dict(IMPORTED_CALIBRATION_RECIPE)
    if "data" in section:
        recipe["calibration"] = section.pop("data")
    recipe.update(section)
    return recipe


class Step:
    """One link of the chain: calling it returns its product."""

    def __call__(self):
        return self.call_impl()

    def call_impl(self):
        raise NotImplementedError


def produce(value):
    """A step's input: the product itself, or the step before, called now."""
    return value() if isinstance(value, Step) else value


def _quiet(message: str) -> None:
    pass


# -- products ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Graphs:
    """An export directory: one ONNX graph per stage (and its variants) plus the manifest."""

    directory: Path
    manifest: Manifest
    cached: bool  # made by this chain in the artifact cache (so variants may be added there too)
    identity: str  # what names these graphs in later cache keys
    notes: dict = field(default_factory=dict)  # step -> cache entry record


@dataclass(frozen=True)
class Artifacts:
    """What a backend opens: the export itself, or the folder its build step filled."""

    directory: Path
    precision: str
    notes: dict = field(default_factory=dict)


@dataclass
class Engines:
    """Stage engines and what the pipeline needs to know about the model."""

    spec: ModelSpec
    engines: dict[str, Engine]
    notes: dict = field(default_factory=dict)
    selection: dict = field(default_factory=dict)  # a choice made while the chain ran (--backend auto's measurement)


# -- graphs -----------------------------------------------------------------------------------------
class GraphsFromSource(Step):
    """Source -> graphs. A model source is exported: into `out` (`mattrt export`) or, without
    `out`, once into the artifact cache; an export source is taken as it is."""

    def __init__(self, source: ModelSource | ExportSource, *, cache: ArtifactCache | None = None,
                 out: str | Path | None = None, max_batch: int = DEFAULT_MAX_BATCH, opset: int = DEFAULT_OPSET,
                 force: bool = False, simplify: bool = True, allow_lint_errors: bool = False, log: Log | None = print):
        self.source, self.cache, self.out = source, cache, None if out is None else Path(out)
        self.export_options = dict(max_batch=max_batch, opset=opset, simplify=simplify,
                                   allow_lint_errors=allow_lint_errors)
        self.force = force
        self.log = log or _quiet

    def call_impl(self) -> Graphs:
        source = self.source
        if isinstance(source, ExportSource):
            return Graphs(source.directory, source.manifest, cached=False, identity=str(source.directory.resolve()))
        if isinstance(source, CardSource):
            return self._imported(source)
        if not isinstance(source, ModelSource):
            raise InputError(f"{source.describe()} runs the whole pipeline; it has no graphs to make")
        if self.out is not None:
            manifest = self._export(self.out, force=self.force, log=self.log)
            return Graphs(self.out, manifest, cached=False, identity=str(self.out.resolve()))
        if self.cache is None or not source.cacheable:
            raise InputError("exporting a model instance needs an output folder (GraphsFromSource(out=...)); the "
                             "artifact cache keeps registered models, named by their registry name")
        key = {"step": "graphs", **source.cache_key(), "max_batch": self.export_options["max_batch"],
               "opset": self.export_options["opset"], "exporter": exporter_versions()}

        def build(staging: Path) -> Path:
            self.cache.log(f"cache: exporting {source.name!r} once into {self.cache.entry_dir(key, label)} "
                           "(later runs reuse it)")
            self._export(staging / "export", force=False, log=self.cache.indented)
            return staging / "export"

        label = f"{source.name}-graphs"
        entry = self.cache.entry(key, label, build)
        return Graphs(entry.path, Manifest.load(entry.path), cached=True, identity=entry.root.name,
                      notes={"graphs": entry.describe()})

    def _imported(self, source: CardSource) -> Graphs:
        """An imported model's graph, normalised (export/onnx_import.py) into `out` or the cache."""
        options = dict(semantic_size=source.canvas, tile_size=source.tile_size,
                       max_batch=self.export_options["max_batch"])
        if self.out is not None:
            manifest = write_imported_export(source.imported, self.out, force=self.force, log=self.log, **options)
            return Graphs(self.out, manifest, cached=False, identity=str(self.out.resolve()))
        if self.cache is None:
            raise InputError(f"normalising {source.describe()} needs an output folder or the artifact cache")
        key = {"step": "graphs", **source.cache_key(), "max_batch": options["max_batch"],
               "normaliser": normaliser_versions()}
        label = f"{source.name}-graphs"

        def build(staging: Path) -> Path:
            self.cache.log(f"cache: normalising imported model {source.name!r} once into "
                           f"{self.cache.entry_dir(key, label)} (later runs reuse it)")
            write_imported_export(source.imported, staging / "export", log=self.cache.indented, **options)
            return staging / "export"

        entry = self.cache.entry(key, label, build)
        return Graphs(entry.path, Manifest.load(entry.path), cached=True, identity=entry.root.name,
                      notes={"graphs": entry.describe()})

    def _export(self, out: Path, *, force: bool, log: Log) -> Manifest:
        source = self.source
        return export_model(source.model, out, checkpoint=source.checkpoint, semantic_size=source.semantic_size,
                            tile_size=source.tile_size, force=force, log=log, **self.export_options)


class PrecisionFromGraphs(Step):
    """Graphs -> graphs that hold the graphs `precision` runs (mattrt.manifest.graph_precision:
    bf16 runs the fp32 graphs). FP32, or an export that already holds the variant, passes through; graphs this chain made in the cache get the variant in an entry
    of their own (calibrated per CALIBRATION_RECIPE); a user's export without it is an error
    that says how to add it."""

    def __init__(self, graphs: Graphs | Step, precision: str, *, cache: ArtifactCache | None = None,
                 calibration: Mapping[str, Any] | None = None):
        self.graphs, self.precision, self.cache = graphs, precision, cache
        self.calibration = None if calibration is None else dict(calibration)  # None: calibration_recipe()

    def call_impl(self) -> Graphs:
        graphs = produce(self.graphs)
        precision = graph_precision(self.precision)
        if precision == "fp32" or all(precision in entry.files for entry in graphs.manifest.stages):
            return graphs
        if not graphs.cached or self.cache is None:
            raise InputError(
                f"export {graphs.directory} has no {precision} graphs; add them with `mattrt precision "
                f"{graphs.directory} --precision {precision}` or pick another precision"
            )
        recipe = self.calibration if self.calibration is not None else calibration_recipe(graphs.manifest)
        key = {"step": precision, "model": graphs.manifest.model, "graphs": graphs.identity, "precision": precision,
               "calibration": recipe, "rules": VARIANT_RULES}

        def build(staging: Path) -> Path:
            export = staging / "export"
            shutil.copytree(graphs.directory, export)
            if precision == "int8":
                self.cache.log(f"cache: calibrating INT8 on {recipe['calibration']} ({recipe['method']}); for your own "
                               "images run `mattrt export --precision int8 --calibration DIR` and pass --artifacts")
            add_precisions(export, [precision], calibration=recipe["calibration"], method=recipe["method"],
                           percentile=recipe.get("percentile"), keep_float=recipe.get("keep_float", ()),
                           log=self.cache.indented)
            return export

        entry = self.cache.entry(key, f"{graphs.manifest.model}-{precision}", build)
        return Graphs(entry.path, Manifest.load(entry.path), cached=True, identity=entry.root.name,
                      notes={**graphs.notes, precision: entry.describe()})


class ArtifactsFromGraphs(Step):
    """Graphs -> what the backend opens: the export as it is, or (a backend with a build step,
    such as TensorRT) the folder its build filled, made once in the cache."""

    def __init__(self, graphs: Graphs | Step, backend: Backend, *, device: str, precision: str,
                 cache: ArtifactCache | None = None, options: Mapping[str, Any] | None = None):
        self.graphs, self.backend, self.device, self.precision = graphs, backend, device, precision
        self.cache, self.options = cache, dict(options or {})

    def call_impl(self) -> Artifacts:
        graphs = produce(self.graphs)
        backend = self.backend
        if backend.prepare is None:
            return Artifacts(graphs.directory, self.precision, dict(graphs.notes))
        if self.cache is None:
            raise InputError(f"the {backend.name} backend builds its engines from the graphs once, into the artifact "
                             "cache; give the chain a cache")
        stage_graphs = {}
        for entry in graphs.manifest.stages:
            name = entry.file_for(self.precision, backend.name)
            if name is None:
                raise InputError(f"export {graphs.directory} has no {self.precision} graph for stage {entry.name!r}")
            stage_graphs[entry.name] = file_sha256(graphs.directory / name)
        key = {"step": backend.name, "model": graphs.manifest.model, "graphs_sha256": stage_graphs,
               "precision": self.precision, "backend": backend.name, "device": self.device,
               "backend_identity": backend.identity(self.device), "prepare_options": self.options}

        def build(staging: Path) -> Path:
            self.cache.log(f"cache: building {backend.name} artifacts for {self.device} ({self.precision})")
            out = staging / backend.name
            backend.prepare(graphs.directory, out, device=self.device, precision=self.precision, **self.options)
            return out

        entry = self.cache.entry(key, f"{graphs.manifest.model}-{backend.name}-{self.precision}-{self.device}", build)
        return Artifacts(entry.path, self.precision, {**graphs.notes, backend.name: entry.describe()})


# -- engines ----------------------------------------------------------------------------------------
class EnginesFromArtifacts(Step):
    """Artifacts -> the backend's stage engines (read through the manifest alone)."""

    def __init__(self, artifacts: Artifacts | Step, backend: Backend, *, device: str, precision: str,
                 options: Mapping[str, Any] | None = None):
        self.artifacts, self.backend, self.device, self.precision = artifacts, backend, device, precision
        self.options = dict(options or {})

    def call_impl(self) -> Engines:
        artifacts = produce(self.artifacts)
        spec, engines = self.backend.open(artifacts.directory, device=self.device, precision=self.precision,
                                          **self.options)
        return Engines(spec, engines, dict(artifacts.notes))


class EnginesFromModel(Step):
    """A model source -> engines that run its own modules (a backend whose artifacts are "model":
    torch), at the stage sizes the source checked."""

    def __init__(self, source: ModelSource, backend: Backend, *, device: str, precision: str,
                 options: Mapping[str, Any] | None = None):
        self.source, self.backend, self.device, self.precision = source, backend, device, precision
        self.options = dict(options or {})

    def call_impl(self) -> Engines:
        source = self.source
        spec, engines = self.backend.open(source.model, device=self.device, precision=self.precision,
                                          **{"checkpoint": source.checkpoint, **self.options})
        return Engines(dataclasses.replace(spec, **source.sizes), engines)


# -- pipelines ----------------------------------------------------------------------------------------
class PipelineFromEngines(Step):
    """Engines -> the Pipeline (tiling options: overlap, margin, batch, scales, pixel ops, ...)."""

    def __init__(self, engines: Engines | Step, *, notes: Mapping[str, Any] | None = None, **options):
        self.engines, self.notes, self.options = engines, dict(notes or {}), options

    def call_impl(self) -> Pipeline:
        made = produce(self.engines)
        pipeline = Pipeline(made.spec, made.engines, **self.options)
        pipeline.notes.update(self.notes)
        pipeline.notes.update(made.selection)
        if made.notes:
            pipeline.notes["cache"] = list(made.notes.values())[-1]  # the entry the engines read
            pipeline.notes["cache_steps"] = dict(made.notes)
        return pipeline


class PipelineFromServer(Step):
    """A server source -> the client-side stand-in of a pipeline that runs on the server (the
    backend's pipeline_opener: same run/describe as a Pipeline)."""

    def __init__(self, source: ServerSource, backend: Backend, *, device: str, precision: str,
                 options: Mapping[str, Any] | None = None):
        self.source, self.backend, self.device, self.precision = source, backend, device, precision
        self.options = dict(options or {})

    def call_impl(self):
        return self.backend.pipeline_opener(self.source.url, device=self.device, precision=self.precision,
                                            **self.options)


__all__ = ["Artifacts", "ArtifactsFromGraphs", "CALIBRATION_RECIPE", "Engines", "IMPORTED_CALIBRATION_RECIPE",
           "calibration_recipe", "EnginesFromArtifacts",
           "EnginesFromModel", "Graphs", "GraphsFromSource", "PipelineFromEngines", "PipelineFromServer",
           "PrecisionFromGraphs", "Step", "produce"]
