"""From what the user named to a running Pipeline: backend choice, artifact cache, threads.

`mattrt infer` (and `bench`, `demo`, `serve`) take a registered model (`--model NAME
[--checkpoint P]`) or an export directory (`--artifacts DIR`), a backend (`--backend auto` by
default) and a precision. `plan_deployment` turns that into what the backend opens:

- `auto` picks tensorrt where a GPU and TensorRT exist, torch on CUDA where a GPU exists
  without TensorRT, onnxruntime on the CPU (runtime/backends.py `choose_auto`), and says why;
- an explicit backend is always honoured: a missing one is an error naming its probe, never a
  quiet switch to another backend, device or precision;
- a backend that runs built artifacts gets them from the artifact cache (export/cache.py): a
  registered model is exported (and made FP16/INT8, and built by the backend) once and reused.

    deployment = plan_deployment(model="aim_synthetic", backend="auto", precision="fp32")
    with open_pipeline(deployment, threads=2, batch=4) as pipeline: ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from mattrt.errors import InputError
from mattrt.export.cache import ArtifactCache
from mattrt.runtime import backends
from mattrt.runtime.engine import Backend
from mattrt.runtime.pipeline import Pipeline


@dataclass
class Deployment:
    backend: Backend
    device: str
    precision: str
    source: Any  # what backend.open takes: a model name, an export or prepared directory, a server URL
    checkpoint: Any = None  # weights for a backend that runs the model itself (torch)
    notes: dict[str, Any] = field(default_factory=dict)  # why this backend, cache use: recorded in summaries


def plan_deployment(
    *,
    model: str | None = None,
    artifacts: str | Path | None = None,
    url: str | None = None,
    checkpoint: Any = None,
    backend: str = backends.AUTO,
    device: str | None = None,
    precision: str = "fp32",
    cache: ArtifactCache | None = None,
    export_options: Mapping[str, Any] | None = None,
    prepare_options: Mapping[str, Any] | None = None,
    backend_options: Mapping[str, Any] | None = None,
    log: Callable[[str], None] | None = print,
) -> Deployment:
    """Choose the backend and device, and make (or reuse) what it runs. See the module docstring.
    backend_options (threads, kernels, ...) are checked against the chosen backend before any work."""
    log = log or (lambda message: None)
    if url is not None:
        return _server_deployment(url, backend, device, precision, model, artifacts, checkpoint, log)
    if (model is None) == (artifacts is None):
        raise InputError("give either a registered model (--model NAME) or an export directory (--artifacts DIR)")
    if artifacts is not None and checkpoint is not None:
        raise InputError("--checkpoint applies to --model; an export directory carries its weights")

    if backend == backends.AUTO:
        kinds = ("model", "onnx", "plans") if model is not None else ("onnx", "plans")
        choice = backends.choose_auto(device=device, precision=precision, source_kinds=kinds)
        chosen, device, reason = choice.backend, choice.device, choice.reason
    else:
        chosen = backends.get_backend(backend)
        device = device or chosen.devices[0]
        reason = f"asked for with --backend {chosen.name}"
    chosen.check(device, precision)
    chosen.check_options(dict(backend_options or {}))
    notes: dict[str, Any] = {"backend": chosen.name, "device": device, "precision": precision, "reason": reason}
    log(f"backend: {chosen.name} on {device}, {precision} ({reason})")

    if chosen.artifacts == "model":
        if model is None:
            raise InputError(
                f"the {chosen.name} backend runs a registered model (--model NAME); an export directory runs on "
                + ", ".join(b.name for b in backends.BACKENDS.values() if b.artifacts in ("onnx", "plans"))
            )
        return Deployment(chosen, device, precision, model, checkpoint=checkpoint, notes=notes)
    if chosen.artifacts == "url":
        raise InputError(f"the {chosen.name} backend runs on a server: give its address (--url HOST:PORT)")

    needs_cache = model is not None or chosen.prepare is not None
    if not needs_cache:
        return Deployment(chosen, device, precision, Path(artifacts), notes=notes)
    cache = cache or ArtifactCache(log=log)
    if model is not None:
        entry = cache.model_artifacts(model, chosen, device=device, precision=precision, checkpoint=checkpoint,
                                      prepare_options=prepare_options, **dict(export_options or {}))
    else:
        entry = cache.prepared_artifacts(artifacts, chosen, device=device, precision=precision,
                                         prepare_options=prepare_options)
    notes["cache"] = entry.describe()
    return Deployment(chosen, device, precision, entry.path, notes=notes)


def _server_deployment(url, backend, device, precision, model, artifacts, checkpoint, log) -> Deployment:
    """A backend whose server runs the whole pipeline (Backend.pipeline_opener): the model, its
    weights and precision were fixed when the server's repository was made."""
    servers = [b.name for b in backends.BACKENDS.values() if b.pipeline_opener is not None]
    if backend not in servers:
        raise InputError(f"--url is the address of a server: use it with --backend {' or '.join(servers)}")
    if model is not None or artifacts is not None or checkpoint is not None:
        raise InputError("with --url the server runs the model its repository holds: drop --model, --artifacts "
                         "and --checkpoint")
    chosen = backends.get_backend(backend)
    device = device or chosen.devices[0]
    chosen.check(device, precision)
    log(f"backend: {chosen.name} at {url} (asked for with --backend {chosen.name})")
    return Deployment(chosen, device, precision, url,
                      notes={"backend": chosen.name, "url": url, "reason": f"asked for with --backend {chosen.name}"})


def open_pipeline(deployment: Deployment, backend_options: Mapping[str, Any] | None = None, **pipeline_options):
    """The Pipeline over the deployment's backend (backend_options: threads, kernels, ...), or, for
    a backend whose server runs the pipeline, its client-side stand-in (same run/describe)."""
    options = dict(backend_options or {})
    if deployment.backend.pipeline_opener is not None:
        given = sorted(k for k, v in pipeline_options.items() if v is not None)
        if given:
            raise InputError(f"the {deployment.backend.name} backend tiles on the server; it takes no "
                             + ", ".join("--" + k.replace("_", "-") for k in given))
        return deployment.backend.pipeline_opener(deployment.source, device=deployment.device,
                                                  precision=deployment.precision, **options)
    if deployment.checkpoint is not None:
        options["checkpoint"] = deployment.checkpoint
    pipeline = Pipeline.open(deployment.backend.name, deployment.source, device=deployment.device,
                             precision=deployment.precision, backend_options=options, **pipeline_options)
    pipeline.notes.update(deployment.notes)
    return pipeline


__all__ = ["Deployment", "open_pipeline", "plan_deployment"]
