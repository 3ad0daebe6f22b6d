"""Which backend runs a deployment: the one asked for, or `--backend auto`'s choice, and why.

`choose_backend` is the only place a backend is picked:
- an explicit backend is always honoured: a device, precision or option it does not take, or a
  probe it needs that is missing here, is an error naming it, never a quiet switch to another
  backend, device or precision;
- `auto` takes the first candidate of AUTO_ORDER whose probes are found on that device and that
  can run the precision and the source (a registered model can become any artifact; an export
  directory cannot run under torch): tensorrt on CUDA, torch on CUDA, onnxruntime on CUDA, then
  onnxruntime on the CPU. It says what it chose and what it passed over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from mattrt.engines.backends import BACKENDS, get_backend
from mattrt.errors import MissingDependencyError
from mattrt.runtime.engine import Backend

AUTO = "auto"

# --backend auto, best first: (backend, device).
AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("tensorrt", "cuda"),
    ("torch", "cuda"),
    ("onnxruntime", "cuda"),
    ("onnxruntime", "cpu"),
)


@dataclass(frozen=True)
class BackendChoice:
    backend: Backend
    device: str
    reason: str  # why this one (and, for auto, why not the better ones)


def choose_auto(
    *, device: str | None = None, precision: str = "fp32", source_kinds: tuple[str, ...] = ("model", "onnx", "plans")
) -> BackendChoice:
    """The backend `--backend auto` runs here (module docstring). `device` restricts the choice to
    one device; `source_kinds` to backends whose artifacts can be made from what the user gave."""
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
        return BackendChoice(backend, candidate_device, why)
    raise MissingDependencyError(
        "--backend auto found no usable backend here"
        + (f" on device {device}" if device else "")
        + "; probed: "
        + "; ".join(passed_over)
        + ". Run `mattrt doctor` for details"
    )


def choose_backend(name: str, *, device: str | None, precision: str, source_kinds: tuple[str, ...],
                   options: Mapping[str, Any] | None = None) -> BackendChoice:
    """The backend that runs a deployment (module docstring); options (threads, kernels, ...)
    are checked against it before any work."""
    if name == AUTO:
        choice = choose_auto(device=device, precision=precision, source_kinds=source_kinds)
    else:
        backend = get_backend(name)
        choice = BackendChoice(backend, device or backend.devices[0], f"asked for with --backend {backend.name}")
    choice.backend.check(choice.device, precision)
    choice.backend.check_options(dict(options or {}))
    return choice


__all__ = ["AUTO", "AUTO_ORDER", "BackendChoice", "choose_auto", "choose_backend"]
