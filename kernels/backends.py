"""Where the kernels run, by name: "cupy" (the GPU, kernels/launch.py's CupyBackend) or
"emulate" (the g++ host emulation of the same sources, kernels/emulate.py: exact, sequential,
slow; for tests and debugging). Kept apart from both so that neither imports the other.
"""

from __future__ import annotations

from mattrt.errors import InputError, MissingDependencyError
from mattrt.kernels import emulate
from mattrt.kernels.launch import Backend, cupy_backend

BACKEND_NAMES: tuple[str, ...] = ("cupy", "emulate")


def get_backend(name: str) -> Backend:
    """The backend called `name`; MissingDependencyError names what it lacks here."""
    if name == "cupy":
        return cupy_backend()
    if name == "emulate":
        reason = emulate.skip_reason()
        if reason:
            raise MissingDependencyError(f"the kernels' host emulation {reason}")
        return emulate.host_backend()
    raise InputError(f"unknown kernel backend {name!r}; choose one of: {', '.join(BACKEND_NAMES)}")


__all__ = ["BACKEND_NAMES", "get_backend"]
