"""From what a command was asked to what runs: a DeploymentRequest becomes a chain of steps.

`mattrt infer`, `bench`, `demo`, `triton-repo` (and batch jobs) take a registered model
(`--model NAME [--checkpoint P]`), an export directory (`--artifacts DIR`) or a server
(`--backend triton --url HOST:PORT`), a backend (`--backend auto` by default), a device, a
precision, backend options (threads, kernels, ...) and tiling options. `deployment_chain` turns
that into the steps of deploy/steps.py, in this order, each setting entering at one step:

    source (model / export / server; the stage sizes)       deploy/sources.py
    backend and device (explicit, or --backend auto)        deploy/choice.py
      (auto on the CPU with several candidates: measured   deploy/selection.py (MeasuredChoice,
       once on the graphs, kept in the cache)                EnginesFromSelection)
    graphs -> precision variant -> backend build            GraphsFromSource, PrecisionFromGraphs, ArtifactsFromGraphs
    engines (backend options)                               EnginesFromArtifacts | EnginesFromModel
    Pipeline (tiling options)                               PipelineFromEngines | PipelineFromServer

    request = DeploymentRequest(model="aim_synthetic", precision="int8", backend_options={"threads": 2})
    with open_pipeline(request) as pipeline: ...

Every check that can fail runs when the chain is built, before any export or build work.
Precision: an explicit one is always run; not given (None), an explicit backend runs fp32 and
`--backend auto` on the CPU may pick fp32, bf16 or int8 by measurement (deploy/selection.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mattrt.deploy.cache import ArtifactCache
from mattrt.deploy.choice import AUTO, DEFAULT_PRECISION, choose_backend
from mattrt.deploy.selection import Candidate, EnginesFromSelection, MeasuredChoice
from mattrt.deploy.sources import CardSource, ExportSource, ModelSource, ServerSource, model_source
from mattrt.deploy.steps import (
    ArtifactsFromGraphs,
    EnginesFromArtifacts,
    EnginesFromModel,
    GraphsFromSource,
    PipelineFromEngines,
    PipelineFromServer,
    PrecisionFromGraphs,
    Step,
)
from mattrt.engines.backends import BACKENDS, get_backend
from mattrt.errors import InputError
from mattrt.export.exporter import DEFAULT_MAX_BATCH
from mattrt.runtime.pipeline import Pipeline

Log = Callable[[str], None]


@dataclass(frozen=True)
class DeploymentRequest:
    """What a command asks for (module docstring). Options that are None are not given."""

    model: Any = None  # a registered or imported model name (or a MattingModel instance: torch only)
    artifacts: str | Path | None = None  # an export directory
    url: str | None = None  # a server that runs the pipeline
    checkpoint: Any = None  # weights for `model`: a path or {part: path}
    backend: str = AUTO
    device: str | None = None
    precision: str | None = None  # None: not asked for (fp32, or what --backend auto measures on the CPU)
    semantic_size: int | None = None
    tile_size: int | None = None
    max_batch: int = DEFAULT_MAX_BATCH
    backend_options: Mapping[str, Any] = field(default_factory=dict)  # threads, kernels, channels_last; a server's client options
    pipeline_options: Mapping[str, Any] = field(default_factory=dict)  # overlap, margin, batch, scales, max_pixels, pixel_ops
    cache_dir: str | Path | None = None


def _source(request: DeploymentRequest):
    given = [n for n, v in (("--model", request.model), ("--artifacts", request.artifacts), ("--url", request.url))
             if v is not None]
    if request.url is not None:
        if len(given) > 1 or request.checkpoint is not None:
            raise InputError("with --url the server runs the model its repository holds: drop --model, --artifacts "
                             "and --checkpoint")
        return ServerSource(request.url)
    if len(given) != 1:
        raise InputError("give either a registered model (--model NAME) or an export directory (--artifacts DIR)")
    if request.artifacts is not None:
        if request.checkpoint is not None:
            raise InputError("--checkpoint applies to --model; an export directory carries its weights")
        return ExportSource(Path(request.artifacts), semantic_size=request.semantic_size, tile_size=request.tile_size)
    return model_source(request.model, checkpoint=request.checkpoint, semantic_size=request.semantic_size,
                        tile_size=request.tile_size, cache_dir=request.cache_dir)


def _given(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v not in (None, False)}


def deployment_chain(request: DeploymentRequest, *, cache: ArtifactCache | None = None,
                     log: Log | None = print) -> Step:
    """The last step of the chain the request describes (module docstring); calling it opens the
    Pipeline. The source, backend, device, precision and options are checked here, before any work."""
    log = log or (lambda message: None)
    backend_options = _given(request.backend_options)
    servers = [b.name for b in BACKENDS.values() if b.pipeline_opener is not None]
    if request.url is not None and request.backend not in servers:
        raise InputError(f"--url is the address of a server: use it with --backend {' or '.join(servers)}")
    source = _source(request)
    if isinstance(source, ServerSource):
        backend = get_backend(request.backend)
        device = request.device or backend.devices[0]
        backend.check(device, request.precision or DEFAULT_PRECISION)
        fixed = {"tile_size": request.tile_size, "semantic_size": request.semantic_size,
                 **{k: v for k, v in backend_options.items() if k not in backend.options},
                 **_given(request.pipeline_options)}
        given = [("--tile" if k == "tile_size" else "--" + k.replace("_", "-")) for k, v in fixed.items()
                 if v not in (None, False)]
        if given:
            raise InputError(f"the {backend.name} backend tiles on the server (its repository fixed these); drop "
                             + ", ".join(given))
        log(f"backend: {backend.name} at {source.url} (asked for with --backend {backend.name})")
        return PipelineFromServer(source, backend, device=device, precision=request.precision or DEFAULT_PRECISION,
                                  options=backend_options)

    kinds = ("model", "onnx", "plans") if isinstance(source, ModelSource) else ("onnx", "plans")
    if isinstance(source, CardSource) and request.backend != AUTO and get_backend(request.backend).artifacts == "model":
        raise InputError(
            f"the {request.backend} backend runs a registered model's own modules; {source.describe()} is an ONNX "
            "graph: run it with " + ", ".join(b.name for b in BACKENDS.values() if b.artifacts in ("onnx", "plans"))
            + " (or --backend auto)"
        )
    choice = choose_backend(request.backend, device=request.device, precision=request.precision, source_kinds=kinds,
                            options=backend_options)
    backend, device, precision = choice.backend, choice.device, choice.precision
    if choice.measured:
        # --backend auto on the CPU with several candidates: measured on first use (deploy/selection.py).
        log(f"backend: {choice.reason}")
        cache = cache or ArtifactCache(request.cache_dir, log=log)
        cache.check_writable()
        graphs = GraphsFromSource(source, cache=cache, max_batch=request.max_batch, log=log)
        selection = MeasuredChoice(graphs, [Candidate(b, p) for b, p in choice.candidates],
                                   precision_given=request.precision is not None, cache=cache,
                                   threads=backend_options.get("threads"),
                                   batch=request.pipeline_options.get("batch"), log=log)
        engines = EnginesFromSelection(selection, cache=cache, options=backend_options)
        return PipelineFromEngines(engines, **request.pipeline_options)
    notes = {"backend": backend.name, "device": device, "precision": precision, "reason": choice.reason}
    log(f"backend: {backend.name} on {device}, {precision} ({choice.reason})")
    if backend.artifacts == "url":
        raise InputError(f"the {backend.name} backend runs on a server: give its address (--url HOST:PORT)")
    if backend.artifacts == "model":
        if not isinstance(source, ModelSource):
            raise InputError(
                f"the {backend.name} backend runs a registered model (--model NAME); an export directory runs on "
                + ", ".join(b.name for b in BACKENDS.values() if b.artifacts in ("onnx", "plans"))
            )
        engines = EnginesFromModel(source, backend, device=device, precision=precision, options=backend_options)
        return PipelineFromEngines(engines, notes=notes, **request.pipeline_options)

    needs_cache = isinstance(source, (ModelSource, CardSource)) or backend.prepare is not None
    if needs_cache:
        cache = cache or ArtifactCache(request.cache_dir, log=log)
        cache.check_writable()
    graphs = GraphsFromSource(source, cache=cache, max_batch=request.max_batch, log=log)
    variant = PrecisionFromGraphs(graphs, precision, cache=cache)
    artifacts = ArtifactsFromGraphs(variant, backend, device=device, precision=precision, cache=cache)
    engines = EnginesFromArtifacts(artifacts, backend, device=device, precision=precision, options=backend_options)
    return PipelineFromEngines(engines, notes=notes, **request.pipeline_options)


def open_pipeline(request: DeploymentRequest, *, cache: ArtifactCache | None = None, log: Log | None = print):
    """The Pipeline the request describes (for a server: its client-side stand-in)."""
    return deployment_chain(request, cache=cache, log=log)()


def model_pipeline(model, *, checkpoint=None, device: str = "cpu", precision: str = "fp32",
                   semantic_size: int | None = None, tile_size: int | None = None, channels_last: bool = False,
                   kernels: bool = False, threads: int | None = None, **pipeline_options) -> Pipeline:
    """The torch backend over a registered model or a MattingModel instance (no cache, no log)."""
    request = DeploymentRequest(model=model, checkpoint=checkpoint, backend="torch", device=device,
                                precision=precision, semantic_size=semantic_size, tile_size=tile_size,
                                backend_options=dict(channels_last=channels_last, kernels=kernels, threads=threads),
                                pipeline_options=pipeline_options)
    return open_pipeline(request, log=None)


def export_pipeline(directory: str | Path, *, backend: str = "onnxruntime", device: str = "cpu",
                    precision: str = "fp32", threads: int | None = None, tile_size: int | None = None,
                    **pipeline_options) -> Pipeline:
    """A backend that runs ONNX graphs (onnxruntime by default) over an export directory, read
    through its manifest alone (no log); tile_size, when given, must be the export's."""
    request = DeploymentRequest(artifacts=directory, backend=backend, device=device, precision=precision,
                                tile_size=tile_size, backend_options=dict(threads=threads),
                                pipeline_options=pipeline_options)
    return open_pipeline(request, log=None)


__all__ = ["DeploymentRequest", "deployment_chain", "export_pipeline", "model_pipeline", "open_pipeline"]
