"""mattrt.export: torch -> ONNX per stage, TensorRT-compatible rewrites, parity checks, lint.

    from mattrt.export import export_model, lint_directory

Attributes load lazily so that `mattrt --help` never imports torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "export_model": "mattrt.export.exporter",
    "export_graph": "mattrt.export.exporter",
    "load_model": "mattrt.export.exporter",
    "ExportError": "mattrt.export.exporter",
    "lint_directory": "mattrt.export.lint",
    "lint_model": "mattrt.export.lint",
    "LintReport": "mattrt.export.lint",
    "ParityError": "mattrt.export.parity",
    "RewriteError": "mattrt.export.rewrites",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mattrt.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
