"""Import mattrt from this checkout when it is not installed (e.g. on a lent GPU machine).

The distribution maps top-level folders onto subpackages (pyproject.toml's package-dir:
models/ -> mattrt.models, ...), which a plain PYTHONPATH cannot express, so the benchmark
scripts register the same mapping in sys.modules before they import mattrt.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Same mapping as [tool.setuptools.package-dir]; parents before children.
PACKAGE_DIRS = {
    "mattrt": "mattrt",
    "mattrt.models": "models",
    "mattrt.export": "export",
    "mattrt.runtime": "runtime",
    "mattrt.kernels": "kernels",
    "mattrt.calibration": "calibration",
    "mattrt.serving": "serving",
}


def ensure_mattrt_importable() -> None:
    """Use the installed mattrt, else load the checkout's packages under their mattrt names."""
    try:
        import mattrt.models  # noqa: F401
        return
    except ImportError:
        pass
    for name in list(sys.modules):
        if name == "mattrt" or name.startswith("mattrt."):
            del sys.modules[name]
    for name, folder in PACKAGE_DIRS.items():
        path = ROOT / folder
        spec = importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    for name in PACKAGE_DIRS:  # run the __init__ files once every package can be found
        sys.modules[name].__spec__.loader.exec_module(sys.modules[name])
