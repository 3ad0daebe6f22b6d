"""mattrt.export: torch -> ONNX per stage, TensorRT-compatible rewrites, parity checks, the
artifact cache. (The TensorRT lint the exporter runs is mattrt.runtime.lint: calibration and the
TensorRT build run it too.)

    from mattrt.export import export_model

Attributes load lazily so that `mattrt --help` never imports torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "export_model": "mattrt.export.exporter",
    "export_graph": "mattrt.export.exporter",
    "load_model": "mattrt.export.exporter",
    "ExportError": "mattrt.export.exporter",
    "ParityError": "mattrt.export.parity",
    "RewriteError": "mattrt.export.rewrites",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mattrt.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
