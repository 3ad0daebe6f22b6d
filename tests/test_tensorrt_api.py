"""Every TensorRT name the tensorrt backend uses exists in the TensorRT installed here.

In CI that is TensorRT 11.4's lean runtime (the dev extra installs `tensorrt-lean-cu13-*`; its
bindings import without a GPU). It carries the runtime API and the builder's enums, so this
checks all of RUNTIME_API (the runtime's DLA core included) and the enum part of BUILDER_API;
Builder, IBuilderConfig, INetworkDefinition, ITensor, OnnxParser and EngineInspector (the class
behind ICudaEngine.create_engine_inspector, which is checked) are not in the lean bindings and stay
unchecked here (a machine with the full TensorRT checks them too). Also checked against the real bindings: the
logger keeps TensorRT's errors, and a runtime created without a usable CUDA driver is refused
with TensorRT's own message instead of crashing the process on first use.
"""

from __future__ import annotations

import ctypes.util
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.version import Version

from mattrt.availability import available, skip_reason, tensorrt_runtime_module
from mattrt.engines.tensorrt import build as tensorrt_build
from mattrt.engines.tensorrt import engine as tensorrt_engine
from mattrt.engines.tensorrt.build import BUILDER_API, FEATURE_DETECTED, capturing_logger, last_errors
from mattrt.engines.tensorrt.engine import RUNTIME_API, resolve, runtime_module

pytestmark = pytest.mark.skipif(not available("tensorrt_runtime"), reason=skip_reason("tensorrt_runtime"))

# Builder API TensorRT 11 removed (its "10.x to 11.x" migration guide): the backend must not use them.
REMOVED_IN_11 = ("BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.BF16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
                 "BuilderFlag.PREFER_PRECISION_CONSTRAINTS", "IInt8EntropyCalibrator2", "IInt8Calibrator")


def _exists(module, dotted: str) -> bool:
    try:
        resolve(module, dotted)
    except AttributeError:
        return False
    return True


def test_every_runtime_name_the_engine_uses_exists():
    module = runtime_module()
    missing = [name for name in RUNTIME_API if not _exists(module, name)]
    assert not missing, f"{module.__name__} {module.__version__} lacks {missing}"


def test_the_builder_names_this_tensorrt_carries_exist():
    module = runtime_module()
    carried = [name for name in BUILDER_API if hasattr(module, name.split(".")[0])]
    missing = [name for name in carried if not _exists(module, name)]
    assert not missing, f"{module.__name__} {module.__version__} lacks {missing}"
    unchecked = sorted({name.split(".")[0] for name in BUILDER_API} - {name.split(".")[0] for name in carried})
    if tensorrt_runtime_module() != "tensorrt":  # the lean bindings: enums yes, builder classes no
        assert {"MemoryPoolType", "BuilderFlag", "HardwareCompatibilityLevel", "DeviceType", "ILogger",
                "ProfilingVerbosity", "LayerInformationFormat", "ICudaEngine", "Runtime"} <= {
            name.split(".")[0] for name in carried}
        assert set(unchecked) <= {"Builder", "IBuilderConfig", "INetworkDefinition", "IOptimizationProfile",
                                  "OnnxParser", "ITensor", "EngineInspector"}


def test_the_backend_does_not_use_what_tensorrt_11_removed():
    module = runtime_module()
    if Version(module.__version__).major >= 11:
        assert [name for name in REMOVED_IN_11 if _exists(module, name)] == []
    sources = [Path(tensorrt_build.__file__).read_text(), Path(tensorrt_engine.__file__).read_text()]
    used = [name for name in REMOVED_IN_11 for text in sources if name in text]
    assert used == []
    # STRONGLY_TYPED is looked up before use (10.x opts in, 11.x has no creation flags in the lean bindings)
    assert all(f'hasattr(trt.{name.rsplit(".", 1)[0]}, "{name.rsplit(".", 1)[1]}")' in sources[0]
               for name in FEATURE_DETECTED)


def test_the_logger_keeps_errors_and_warnings():
    module = runtime_module()
    logger = capturing_logger(module)
    severity = module.Logger.Severity
    logger.log(severity.INFO, "building")
    logger.log(severity.WARNING, "slow tactic")
    logger.log(severity.ERROR, "Error Code 4: shape mismatch")
    assert logger.messages == [(False, "slow tactic"), (True, "Error Code 4: shape mismatch")]
    assert last_errors(logger) == "Error Code 4: shape mismatch"


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None,
                    reason="a CUDA driver (libcuda) is installed: TensorRT can create its runtime here")
def test_a_runtime_without_a_cuda_driver_is_refused_with_tensorrts_message():
    # In a child process: TensorRT's half-created runtime must never be touched by the test process.
    script = (
        "from mattrt.errors import MissingDependencyError\n"
        "from mattrt.engines.tensorrt.build import capturing_logger\n"
        "from mattrt.engines.tensorrt.engine import create_runtime, runtime_module\n"
        "module = runtime_module()\n"
        "try:\n"
        "    create_runtime(module, capturing_logger(module))\n"
        "except MissingDependencyError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("REFUSED TensorRT could not create a runtime: ")
    assert "CUDA" in result.stdout and "driver" in result.stdout
