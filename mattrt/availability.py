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


# OpenVINO's `import openvino` imports its model converter (openvino.tools.ovc), which sends a usage
# event (openvino_telemetry, Google Analytics) from a forked subprocess unless the process runs in CI
# or ~/intel/openvino_telemetry says "0". mattrt declines it without writing into the user's home:
# CI=true for the duration of the import only (openvino_telemetry decides consent once, at that import).
OPENVINO_ADVICE = "`pip install 'mattrt[openvino]'` (OpenVINO runs mattrt's graphs on x86 and ARM CPUs)"


def import_openvino():
    """`import openvino` with its usage telemetry declined (see above); the user's own CI value is kept."""
    previous = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        return importlib.import_module("openvino")
    finally:
        if previous is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = previous


def _openvino() -> Probe:
    if importlib.util.find_spec("openvino") is None:
        return Probe("openvino", False, None, f"not installed; {OPENVINO_ADVICE}")
    try:
        openvino = import_openvino()
        devices = openvino.Core().available_devices
    except Exception as exc:  # a broken install raises more than ImportError
        return Probe("openvino", False, None, f"import failed ({exc}); {OPENVINO_ADVICE}")
    if "CPU" not in devices:
        return Probe("openvino", False, openvino.get_version(), f"OpenVINO lists no CPU device (devices: {devices})")
    return Probe("openvino", True, openvino.get_version().split("-")[0], "CPU device")


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


# What "found" means for the two TensorRT probes: the library imports and has the API the step
# needs. Neither checks for a GPU: building and running plans also need a CUDA device, which the
# `cupy_device` probe reports (CuPy holds the engines' memory and streams). The tensorrt backend
# and `mattrt build` require both, so a machine with TensorRT but no GPU names `cupy_device` as
# what is missing.
TENSORRT_ADVICE = "`pip install 'mattrt[tensorrt]'` on a machine with an NVIDIA GPU (JetPack ships it on Jetson)"
# Modules that can run plans, preferred first: the full TensorRT, then the lean runtime's package
# and its bare bindings (PyPI: tensorrt-lean-cu13-libs + tensorrt-lean-cu13-bindings).
TENSORRT_RUNTIME_MODULES = ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings")
LEAN_RUNTIME_NOTE = "lean runtime: runs version-compatible plans only (mattrt build --version-compatible)"


def _import_quietly(name: str):
    """The module, or the reason it cannot be used (a string)."""
    if importlib.util.find_spec(name) is None:
        return "not installed"
    try:
        return importlib.import_module(name)
    except Exception as exc:  # a broken TensorRT install raises more than ImportError
        return f"import failed: {exc}"


def _tensorrt() -> Probe:
    """The TensorRT builder: full TensorRT with Builder and OnnxParser (`mattrt build`)."""
    module = _import_quietly("tensorrt")
    if isinstance(module, str):
        return Probe("tensorrt", False, None, f"{module}; {TENSORRT_ADVICE}")
    version = getattr(module, "__version__", None)
    lacking = [name for name in ("Builder", "OnnxParser") if not hasattr(module, name)]
    if lacking:
        return Probe("tensorrt", False, version,
                     f"the tensorrt module has no {', '.join(lacking)} (bindings without the TensorRT libraries); "
                     + TENSORRT_ADVICE)
    return Probe("tensorrt", True, version, "builder and ONNX parser import (building also needs cupy_device)")


@functools.cache
def tensorrt_runtime_module() -> str | None:
    """Name of the module the tensorrt backend runs plans with (TENSORRT_RUNTIME_MODULES order)."""
    for name in TENSORRT_RUNTIME_MODULES:
        module = _import_quietly(name)
        if not isinstance(module, str) and hasattr(module, "Runtime"):
            return name
    return None


def _tensorrt_runtime() -> Probe:
    """A TensorRT runtime that deserializes and runs plans: full TensorRT or the lean runtime."""
    name = tensorrt_runtime_module()
    if name is None:
        return Probe("tensorrt_runtime", False, None,
                     f"none of {', '.join(TENSORRT_RUNTIME_MODULES)} imports with a Runtime; {TENSORRT_ADVICE}")
    module = importlib.import_module(name)
    kind = "full runtime" if name == "tensorrt" else LEAN_RUNTIME_NOTE
    return Probe("tensorrt_runtime", True, getattr(module, "__version__", None),
                 f"{name} ({kind}; running plans also needs cupy_device)")


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


# `mattrt batch` runs on Ray Data, an optional extra (about 0.5 GB with pyarrow and pandas).
RAY_ADVICE = "`pip install 'mattrt[batch]'` (Ray Data, for `mattrt batch`)"


def _ray() -> Probe:
    """Ray with what Ray Data needs (pyarrow, pandas), found without importing them (importing
    ray.data takes seconds: the batch job does that itself)."""
    version = _dist_version("ray")
    if version is None or importlib.util.find_spec("ray") is None:
        return Probe("ray", False, None, f"not installed; {RAY_ADVICE}")
    lacking = [name for name in ("pyarrow", "pandas") if importlib.util.find_spec(name) is None]
    if lacking:
        return Probe("ray", False, version, f"Ray Data needs {', '.join(lacking)}, which is missing; {RAY_ADVICE}")
    return Probe("ray", True, version, "Ray Data (mattrt batch)")


_PROBES: dict[str, Callable[[], Probe]] = {
    "python": _python,
    "torch": _torch,
    "torch_cuda": _torch_cuda,
    "onnxruntime": _onnxruntime,
    "onnxruntime_cuda": _onnxruntime_cuda,
    "openvino": _openvino,
    "cupy": _cupy,
    "cupy_device": _cupy_device,
    "nvrtc": _nvrtc,
    "tensorrt": _tensorrt,
    "tensorrt_runtime": _tensorrt_runtime,
    "tritonserver": _tritonserver,
    "tritonclient": _tritonclient,
    "ray": _ray,
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
