"""Which backend runs a deployment: the one asked for, or `--backend auto`'s choice, and why.

`choose_backend` is the only place a backend is picked:
- an explicit backend is always honoured: a device, precision or option it does not take, or a
  probe it needs that is missing here, is an error naming it, never a quiet switch to another
  backend, device or precision; without --precision it runs fp32;
- `auto` takes the first candidate of AUTO_ORDER whose probes are found on that device and that
  can run the precision and the source (a registered model can become any artifact; an export
  directory cannot run under torch): tensorrt on CUDA, torch on CUDA, onnxruntime on CUDA. On the
  CPU it lists every usable CPU entry (onnxruntime, openvino) at each precision it may run: the
  precision asked for, or, when none was asked for, each of AUTO_PRECISIONS the backend runs on
  this CPU (bf16 only with native bf16; int8 only where the graphs already hold INT8 variants).
  One candidate is taken as it is; several are measured on first use (deploy/selection.py), the
  choice kept in the artifact cache. Without --precision a GPU backend runs fp32. It says what it
  chose and what it passed over.
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
    ("openvino", "cpu"),
)
# Precisions --backend auto may pick on the CPU when none was asked for, in order of preference
# (each must keep deploy/selection.py's fidelity bounds against fp32).
AUTO_PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_PRECISION = "fp32"


@dataclass(frozen=True)
class BackendChoice:
    backend: Backend
    device: str
    reason: str  # why this one (and, for auto, why not the better ones)
    precision: str = DEFAULT_PRECISION
    # (backend, precision) pairs --backend auto measures on the CPU, in order of preference (the
    # first is `backend` and `precision`); empty when nothing is left to measure.
    candidates: tuple[tuple[Backend, str], ...] = ()

    @property
    def measured(self) -> bool:
        return len(self.candidates) > 1


def _cpu_candidates(backends: list[Backend], precision: str | None,
                    passed_over: list[str]) -> list[tuple[Backend, str]]:
    """(backend, precision) pairs auto may run on the CPU (module docstring), in preference order:
    by precision first, then by AUTO_ORDER."""
    wanted = (precision,) if precision is not None else AUTO_PRECISIONS
    found = []
    for run in wanted:
        for backend in backends:
            if run not in backend.precisions:
                continue
            refused = backend.unavailable("cpu", run)
            if refused:
                passed_over.append(f"{backend.name} {run} on cpu: {refused}")
                continue
            found.append((backend, run))
    return found


def choose_auto(
    *, device: str | None = None, precision: str | None = None,
    source_kinds: tuple[str, ...] = ("model", "onnx", "plans"),
) -> BackendChoice:
    """The backend `--backend auto` runs here (module docstring). `device` restricts the choice to
    one device; `source_kinds` to backends whose artifacts can be made from what the user gave;
    `precision` None: not asked for."""
    passed_over: list[str] = []
    cpu: list[Backend] = []
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
        if precision is not None and precision not in backend.precisions:
            passed_over.append(f"{label}: no {precision}")
            continue
        missing = backend.missing(candidate_device)
        if missing:
            passed_over.append(f"{label}: needs {', '.join(p.name for p in missing)}")
            continue
        if candidate_device == "cpu":
            cpu.append(backend)
            continue
        why = f"auto chose {label}"
        if passed_over:
            why += " (passed over: " + "; ".join(passed_over) + ")"
        return BackendChoice(backend, candidate_device, why, precision or DEFAULT_PRECISION)
    candidates = _cpu_candidates(cpu, precision, passed_over)
    over = " (passed over: " + "; ".join(passed_over) + ")" if passed_over else ""
    if len(candidates) == 1:
        backend, run = candidates[0]
        return BackendChoice(backend, "cpu", f"auto chose {backend.name} on cpu{over}", run, tuple(candidates))
    if candidates:
        labels = ", ".join(f"{b.name} {p}" for b, p in candidates)
        held = "" if precision is not None else (" (int8 where the graphs hold INT8 variants)"
                                                  if any(p == "int8" for _, p in candidates) else "")
        why = (f"auto measures {labels} on cpu{held} on first use and keeps the fastest within the fidelity "
               f"bounds{over}")
        return BackendChoice(candidates[0][0], "cpu", why, candidates[0][1], tuple(candidates))
    raise MissingDependencyError(
        "--backend auto found no usable backend here"
        + (f" on device {device}" if device else "")
        + "; probed: "
        + "; ".join(passed_over)
        + ". Run `mattrt doctor` for details"
    )


def choose_backend(name: str, *, device: str | None, precision: str | None, source_kinds: tuple[str, ...],
                   options: Mapping[str, Any] | None = None) -> BackendChoice:
    """The backend that runs a deployment (module docstring); options (threads, kernels, ...)
    are checked against it (every candidate, for a measured auto choice) before any work.
    `precision` None: not asked for."""
    if name == AUTO:
        choice = choose_auto(device=device, precision=precision, source_kinds=source_kinds)
    else:
        backend = get_backend(name)
        choice = BackendChoice(backend, device or backend.devices[0], f"asked for with --backend {backend.name}",
                               precision or DEFAULT_PRECISION)
    choice.backend.check(choice.device, choice.precision)
    for backend in {b.name: b for b, _ in choice.candidates or ((choice.backend, choice.precision),)}.values():
        backend.check_options(dict(options or {}))
    return choice


__all__ = ["AUTO", "AUTO_ORDER", "AUTO_PRECISIONS", "BackendChoice", "DEFAULT_PRECISION", "choose_auto",
           "choose_backend"]
