"""What this machine has: one probe per optional dependency.

The runtime calls `require(...)` before it uses a backend or device, and the tests skip with
`skip_reason(...)`: both read the same probes, so a test is skipped exactly when the runtime
would refuse to run. `mattrt doctor` prints them all.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mattrt.errors import MissingDependencyError


@dataclass(frozen=True)
class Probe:
    name: str
    found: bool
    version: str | None = None
    detail: str = ""  # where it was found, or why it is missing and how to get it


def _dist_version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _python() -> Probe:
    import platform
    import sys

    return Probe("python", True, platform.python_version(), sys.executable)


def _torch() -> Probe:
    try:
        import torch
    except ImportError as exc:
        return Probe("torch", False, None, f"import failed ({exc}); `pip install torch==2.13.0`")
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    return Probe("torch", True, torch.__version__, build)


def _torch_cuda() -> Probe:
    try:
        import torch
    except ImportError:
        return Probe("torch_cuda", False, None, "torch is not installed")
    if not torch.version.cuda:
        return Probe("torch_cuda", False, None, "torch is a CPU build; install a CUDA build of torch")
    if not torch.cuda.is_available():
        return Probe("torch_cuda", False, None, "torch found no CUDA device (no GPU or no driver)")
    return Probe("torch_cuda", True, torch.version.cuda, torch.cuda.get_device_name(0))


def _onnxruntime() -> Probe:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return Probe("onnxruntime", False, None, f"import failed ({exc}); `pip install onnxruntime`")
    return Probe("onnxruntime", True, ort.__version__, "providers: " + ", ".join(ort.get_available_providers()))


def _onnxruntime_cuda() -> Probe:
    try:
        import onnxruntime as ort
    except ImportError:
        return Probe("onnxruntime_cuda", False, None, "onnxruntime is not installed")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return Probe("onnxruntime_cuda", False, None,
                     "onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu on a CUDA machine")
    return Probe("onnxruntime_cuda", True, ort.__version__, "CUDAExecutionProvider")


def _cupy() -> Probe:
    if importlib.util.find_spec("cupy") is None:
        return Probe("cupy", False, None, "not installed; `pip install 'mattrt[cuda]'` on a CUDA machine")
    try:
        import cupy
    except Exception as exc:  # a broken CUDA install raises more than ImportError
        return Probe("cupy", False, None, f"import failed: {exc}")
    return Probe("cupy", True, cupy.__version__, "imports (launching kernels also needs a device)")


def _cupy_device() -> Probe:
    base = _cupy()
    if not base.found:
        return Probe("cupy_device", False, None, base.detail)
    import cupy

    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return Probe("cupy_device", False, base.version, f"no CUDA device usable by CuPy ({type(exc).__name__}: {exc})")
    if count == 0:
        return Probe("cupy_device", False, base.version, "CuPy sees no CUDA device")
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return Probe("cupy_device", True, base.version, f"{count} device(s), 0: {name} (sm_{props['major']}{props['minor']})")


def _nvrtc() -> Probe:
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        return Probe("nvrtc", False, None,
                     f"import failed ({exc}); `pip install cuda-bindings nvidia-cuda-nvrtc` (the dev extra)")
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the bindings import but libnvrtc is missing
        return Probe("nvrtc", False, None, f"libnvrtc not loadable ({exc}); `pip install nvidia-cuda-nvrtc`")
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return Probe("nvrtc", False, None, f"nvrtcVersion failed: {err}")
    return Probe("nvrtc", True, f"{major}.{minor}", "compiles CUDA C without a GPU")


def _tensorrt() -> Probe:
    if importlib.util.find_spec("tensorrt") is None:
        return Probe("tensorrt", False, None,
                     "not installed; `pip install 'mattrt[tensorrt]'` on a machine with an NVIDIA GPU")
    try:
        import tensorrt
    except Exception as exc:
        return Probe("tensorrt", False, None, f"import failed: {exc}")
    if not hasattr(tensorrt, "Builder"):
        return Probe("tensorrt", False, getattr(tensorrt, "__version__", None),
                     "the bindings import but the TensorRT libraries are missing")
    return Probe("tensorrt", True, tensorrt.__version__, "builder available")


def tritonserver_binary() -> Path | None:
    """The tritonserver executable: $MATTRT_TRITONSERVER, PATH, or the nvidia-pytriton wheel."""
    env = os.environ.get("MATTRT_TRITONSERVER")
    if env:
        return Path(env) if Path(env).is_file() else None
    found = shutil.which("tritonserver")
    if found:
        return Path(found)
    spec = importlib.util.find_spec("pytriton")
    if spec and spec.submodule_search_locations:
        candidate = Path(list(spec.submodule_search_locations)[0]) / "tritonserver" / "bin" / "tritonserver"
        if candidate.is_file():
            return candidate
    return None


def _tritonserver() -> Probe:
    binary = tritonserver_binary()
    if binary is None:
        return Probe("tritonserver", False, None,
                     "no tritonserver on PATH, in $MATTRT_TRITONSERVER or in the nvidia-pytriton wheel")
    return Probe("tritonserver", True, _dist_version("nvidia-pytriton"), str(binary))


def _tritonclient() -> Probe:
    version = _dist_version("tritonclient")
    if version is None:
        return Probe("tritonclient", False, None, "not installed; `pip install 'tritonclient[all]'`")
    return Probe("tritonclient", True, version, "")


_PROBES: dict[str, Callable[[], Probe]] = {
    "python": _python,
    "torch": _torch,
    "torch_cuda": _torch_cuda,
    "onnxruntime": _onnxruntime,
    "onnxruntime_cuda": _onnxruntime_cuda,
    "cupy": _cupy,
    "cupy_device": _cupy_device,
    "nvrtc": _nvrtc,
    "tensorrt": _tensorrt,
    "tritonserver": _tritonserver,
    "tritonclient": _tritonclient,
}


def probe_names() -> list[str]:
    return list(_PROBES)


@functools.cache
def probe(name: str) -> Probe:
    """Run (once per process) the named probe."""
    try:
        check = _PROBES[name]
    except KeyError:
        raise KeyError(f"unknown probe {name!r}; known: {', '.join(_PROBES)}") from None
    return check()


def available(name: str) -> bool:
    return probe(name).found


def skip_reason(name: str) -> str:
    """The reason a test that needs `name` is skipped here (empty when it is available)."""
    result = probe(name)
    return "" if result.found else f"needs {name}: {result.detail}"


def require(name: str, purpose: str) -> Probe:
    """Return the probe, or raise MissingDependencyError naming what is missing and for what."""
    result = probe(name)
    if not result.found:
        raise MissingDependencyError(f"{purpose} needs {name}, which is missing here: {result.detail}")
    return result
