"""The one way mattrt loads heavy or optional libraries: a module proxy bound at module top.

    torch = lazy_import("torch")
    ort = lazy_import("onnxruntime", probe="onnxruntime")

The name is bound where every other import is (so a module's dependencies are visible at its
top, as in Polygraphy), but the library is imported on first attribute access. `mattrt --help`
therefore never imports torch, and a module that only sometimes needs TensorRT or CuPy imports
cleanly where they are missing. When the library is absent, the first use raises
MissingDependencyError with the availability probe's advice (mattrt.availability), never a bare
ImportError.
"""

from __future__ import annotations

import importlib
import types
from typing import Any, Callable

from mattrt import availability
from mattrt.errors import MissingDependencyError


class LazyModule(types.ModuleType):
    """Stands in for a module until an attribute is read; then it is that module's attribute."""

    def __init__(self, name: str, probe: str | None = None, importer: Callable[[], types.ModuleType] | None = None):
        super().__init__(name)
        self.__dict__["_lazy_name"] = name
        self.__dict__["_lazy_probe"] = probe
        self.__dict__["_lazy_importer"] = importer
        self.__dict__["_lazy_module"] = None

    def _load(self) -> types.ModuleType:
        module = self.__dict__["_lazy_module"]
        if module is None:
            name = self.__dict__["_lazy_name"]
            importer = self.__dict__["_lazy_importer"]
            try:
                module = importer() if importer is not None else importlib.import_module(name)
            except ImportError as exc:
                probe = self.__dict__["_lazy_probe"]
                advice = ""
                if probe is not None:
                    advice = f": {availability.probe(probe).detail}"
                raise MissingDependencyError(f"{name} could not be imported ({exc}){advice}") from None
            self.__dict__["_lazy_module"] = module
        return module

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._load(), attribute)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_lazy_module"] is not None else "not loaded yet"
        return f"<lazy module {self.__dict__['_lazy_name']!r} ({state})>"


def lazy_import(name: str, probe: str | None = None, importer: Callable[[], types.ModuleType] | None = None) -> Any:
    """A proxy for module `name`, imported on first attribute access (see the module docstring).
    `probe` names the mattrt.availability probe whose advice a failed import shows; `importer`
    imports it where a plain import would do more than load it (openvino: its telemetry)."""
    return LazyModule(name, probe, importer)


def is_loaded(module: Any) -> bool:
    """Whether a lazy proxy (or a real module) has been imported."""
    if isinstance(module, LazyModule):
        return module.__dict__["_lazy_module"] is not None
    return isinstance(module, types.ModuleType)


__all__ = ["LazyModule", "is_loaded", "lazy_import"]
