"""The backend registry: every way mattrt can run a model's stages, in one list.

Each backend is one module that defines its `Engine` subclass, how it opens stage engines, and a
`BACKEND = Backend(...)` entry (runtime/engine.py says what an entry holds: probes, devices,
precisions, the artifacts it runs, options, whether its engines take device arrays). The CLI's
`--backend` choices, `Pipeline.open`, the pixel-ops choice, `--backend auto` and `mattrt doctor`
all read this list, so adding a backend is its module plus one line in `_ENTRIES`.

    backend = get_backend("onnxruntime")
    spec, engines = backend.open("exports/aim", device="cpu", precision="int8", threads=2)

`choose_auto` is `--backend auto`: tensorrt where a GPU and TensorRT exist, torch on CUDA where
a GPU exists without TensorRT, onnxruntime on the CPU; it says why, and lists what it probed.
"""

from __future__ import annotations

from dataclasses import dataclass

from mattrt.errors import InputError, MissingDependencyError
from mattrt.runtime import onnx_engine, tensorrt_engine, torch_engine, triton_client
from mattrt.runtime.engine import Backend

AUTO = "auto"

_ENTRIES: tuple[Backend, ...] = (
    torch_engine.BACKEND,
    onnx_engine.BACKEND,
    tensorrt_engine.BACKEND,
    triton_client.BACKEND,
)
BACKENDS: dict[str, Backend] = {entry.name: entry for entry in _ENTRIES}

# --backend auto, best first: (backend, device). A candidate is taken when every probe it needs
# on that device is found and it can run the requested precision and source.
AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("tensorrt", "cuda"),
    ("torch", "cuda"),
    ("onnxruntime", "cuda"),
    ("onnxruntime", "cpu"),
)


def backend_names() -> list[str]:
    return list(BACKENDS)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)} (or {AUTO})") from None


@dataclass(frozen=True)
class AutoChoice:
    backend: Backend
    device: str
    reason: str  # why this one, and why not the better ones


def choose_auto(
    *, device: str | None = None, precision: str = "fp32", source_kinds: tuple[str, ...] = ("model", "onnx", "plans")
) -> AutoChoice:
    """The backend `--backend auto` runs here (module docstring). `device` restricts the choice to
    one device; `source_kinds` to backends whose artifacts can be made from what the user gave
    (a registered model can become any of them; an export directory cannot run under torch)."""
    passed_over: list[str] = []
    for name, candidate_device in AUTO_ORDER:
        backend = BACKENDS.get(name)
        label = f"{name} on {candidate_device}"
        if backend is None:
            passed_over.append(f"{label}: not in this mattrt's registry")
            continue
        if device is not None and candidate_device != device:
            continue
        if backend.artifacts not in source_kinds:
            passed_over.append(f"{label}: cannot run this source")
            continue
        if precision not in backend.precisions:
            passed_over.append(f"{label}: no {precision}")
            continue
        missing = backend.missing(candidate_device)
        if missing:
            passed_over.append(f"{label}: needs {', '.join(p.name for p in missing)}")
            continue
        why = f"auto chose {label}"
        if passed_over:
            why += " (passed over: " + "; ".join(passed_over) + ")"
        return AutoChoice(backend, candidate_device, why)
    raise MissingDependencyError(
        "--backend auto found no usable backend here"
        + (f" on device {device}" if device else "")
        + "; probed: "
        + "; ".join(passed_over)
        + ". Run `mattrt doctor` for details"
    )


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


__all__ = ["AUTO", "AUTO_ORDER", "AutoChoice", "BACKENDS", "backend_names", "choose_auto", "describe_backends",
           "get_backend"]
