"""The backend registry: every way mattrt can run a model's stages, in one list.

Each engine family is one package under engines/ whose engine module defines its `Engine`
subclass, how it opens stage engines, and a `BACKEND = Backend(...)` entry (runtime/engine.py
says what an entry holds: probes, devices, precisions, the artifacts it runs, options, whether
its engines take device arrays, its build step). The CLI's `--backend` choices, the deployment
chain (deploy/), `--backend auto` (deploy/choice.py) and `mattrt doctor` all read this list, so
adding a backend is its package plus its line in `_ENTRIES` (and the import above it).

    backend = get_backend("onnxruntime")
    spec, engines = backend.open("exports/aim", device="cpu", precision="int8", threads=2)
"""

from __future__ import annotations

from mattrt.engines.onnxruntime import engine as onnxruntime_engine
from mattrt.engines.openvino import engine as openvino_engine
from mattrt.engines.tensorrt import engine as tensorrt_engine
from mattrt.engines.torch import engine as torch_engine
from mattrt.engines.triton import client as triton_client
from mattrt.errors import InputError
from mattrt.manifest import RUN_PRECISIONS
from mattrt.runtime.engine import Backend

_ENTRIES: tuple[Backend, ...] = (
    torch_engine.BACKEND,
    onnxruntime_engine.BACKEND,
    openvino_engine.BACKEND,
    tensorrt_engine.BACKEND,
    triton_client.BACKEND,
)
BACKENDS: dict[str, Backend] = {entry.name: entry for entry in _ENTRIES}

def backend_names() -> list[str]:
    return list(BACKENDS)


def run_precisions() -> list[str]:
    """Every precision some registered backend runs (the CLI's --precision choices), in
    mattrt.manifest.RUN_PRECISIONS order; whether a backend runs one is its own check."""
    offered = {p for backend in BACKENDS.values() for p in backend.precisions}
    return [p for p in RUN_PRECISIONS if p in offered]


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)} (or auto)") from None


def describe_backends() -> list[dict]:
    """One row per backend and device for `mattrt doctor`: usable here or what is missing."""
    rows = []
    for backend in BACKENDS.values():
        for device in backend.devices:
            missing = backend.missing(device)
            rows.append({
                "backend": backend.name,
                "device": device,
                "usable": not missing,
                "precisions": ", ".join(backend.precisions),
                "artifacts": backend.artifacts,
                "missing": "; ".join(f"{p.name}: {p.detail}" for p in missing),
            })
    return rows


__all__ = ["BACKENDS", "backend_names", "describe_backends", "get_backend", "run_precisions"]
