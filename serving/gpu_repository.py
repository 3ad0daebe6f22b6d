"""What a GPU repository (TensorRT plans) needs from the server that runs it: every Triton
backend its models name (the nvidia-pytriton wheel's server has only the Python backend:
TensorRT models need NVIDIA's Triton container or another Triton with backends/tensorrt), a
TensorRT that runs the plans (read from the libnvinfer the server's TensorRT backend loads;
where that cannot be read, a plan the server refuses while loading gets the same advice from the
log), the TensorRT backend option version-compatible plans need, and a pinned host memory pool.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mattrt.engines.tensorrt.engine import version_refusal
from mattrt.errors import InputError, MissingDependencyError

# Triton's own default pinned pool (src/command_line_parser.h: 1 << 28), for GPU repositories.
GPU_PINNED_MEMORY_BYTES = 1 << 28


TRITON_CONTAINER = "nvcr.io/nvidia/tritonserver:<yy.mm>-py3"


# What TensorRT logs when a plan does not fit its version or GPU (seen in Triton logs: server#317,
# server#7613; TensorRT's "expecting compute X got compute Y").
PLAN_REFUSALS = ("not compatible with this version of TensorRT", "Version tag does not match", "expecting compute")


def check_backends(needed: dict[str, list[str]], binary: Path) -> None:
    """MissingDependencyError naming each backend the repository's models need that the server's
    install lacks (<install>/backends/<name>/libtriton_<name>.so)."""
    shipped = binary.parent.parent / "backends"
    missing = {name: models for name, models in needed.items()
               if not (shipped / name / f"libtriton_{name}.so").is_file()}
    if not missing:
        return
    what = "; ".join(f"the {name} backend (for {', '.join(models)}; {shipped / name / f'libtriton_{name}.so'} "
                     "is missing)" for name, models in missing.items())
    fix = ("serve TensorRT models with the tritonserver of NVIDIA's Triton container (run `mattrt serve` inside "
           f"{TRITON_CONTAINER}, one with the TensorRT the plans were built by) or pass --tritonserver PATH of a "
           "Triton install with backends/tensorrt; the nvidia-pytriton wheel's server has only the Python backend"
           if "tensorrt" in missing else "pass --tritonserver PATH of a Triton install that has it")
    raise MissingDependencyError(f"the tritonserver at {binary} lacks {what}: {fix}")


def tensorrt_of_server(binary: Path, env: dict[str, str]) -> tuple[str, str] | None:
    """(version, library) of the TensorRT the server's TensorRT backend loads, from `ldd` of
    backends/tensorrt/libtriton_tensorrt.so with the server's environment (`nvinfer_from_ldd`).
    None when it cannot be read: the load error tells instead (`tensorrt_load_advice`)."""
    backend = binary.parent.parent / "backends" / "tensorrt" / "libtriton_tensorrt.so"
    try:
        done = subprocess.run(["ldd", str(backend)], capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return nvinfer_from_ldd(done.stdout)


def nvinfer_from_ldd(listing: str) -> tuple[str, str] | None:
    """(version, file) of the libnvinfer an `ldd` listing resolves: TensorRT's packages link
    libnvinfer.so.<major> to libnvinfer.so.<version> (e.g. 10.3.0); where the file is
    libnvinfer.so.<major> itself, only the major is known. None when libnvinfer is not found."""
    for line in listing.splitlines():
        found = re.match(r"\s*libnvinfer\.so\.\d+\s+=>\s+(/\S+)", line)
        if found:
            library = Path(found.group(1)).resolve()
            version = re.fullmatch(r"libnvinfer\.so\.(\d+(?:\.\d+)*)", library.name)
            return (version.group(1), str(library)) if version else None
    return None


def check_tensorrt_version(plans: dict[str, dict], server: tuple[str, str] | None) -> None:
    """InputError when the server's TensorRT (`tensorrt_of_server`) cannot run the repository's
    plans by TensorRT's rules (engines/tensorrt/engine.py version_refusal)."""
    if not plans or server is None:
        return
    version, library = server
    for record in plans.values():
        refusal = version_refusal(record["tensorrt"], version, version_compatible=record["version_compatible"])
        if refusal:
            users = sorted(name for name, other in plans.items() if other == record)
            raise InputError(
                f"{', '.join(users)}: {refusal} (the server's TensorRT backend loads {library}): rebuild the plans "
                f"with the server's TensorRT {version} (e.g. in the same container): `{record['rebuild']}`, then "
                "regenerate the repository with `mattrt triton-repo ... --overwrite`")


def tensorrt_flags(plans: dict[str, dict]) -> list[str]:
    """Server flags for the repository's TensorRT models. A pinned host pool for their host<->GPU
    copies (none for a CPU repository); version-compatible plans need the TensorRT backend to
    allow the lean runtime they embed (tensorrt_backend src/tensorrt.cc reads the option,
    src/loader.cc then calls setEngineHostCodeAllowed)."""
    if not plans:
        return ["--pinned-memory-pool-byte-size=0"]
    flags = [f"--pinned-memory-pool-byte-size={GPU_PINNED_MEMORY_BYTES}"]
    if any(record["version_compatible"] for record in plans.values()):
        flags.append("--backend-config=tensorrt,version-compatible=true")
    return flags


def tensorrt_load_advice(log: str, plans: dict[str, dict]) -> str:
    """What to do when the server's TensorRT refused a plan while loading ("" otherwise)."""
    refused = next((line.strip() for line in log.splitlines() if any(text in line for text in PLAN_REFUSALS)), None)
    if not plans or refused is None:
        return ""
    record = next(iter(plans.values()))
    return (f"\nThe server's TensorRT refused the plans (built by TensorRT {record['tensorrt']} on {record['gpu']}, "
            f"sm_{record['compute_capability'].replace('.', '')}): {refused}\nRebuild them with the server's TensorRT "
            f"on its GPU: `{record['rebuild']}`, then regenerate the repository with "
            "`mattrt triton-repo ... --overwrite`")


__all__ = ["GPU_PINNED_MEMORY_BYTES", "PLAN_REFUSALS", "TRITON_CONTAINER", "check_backends", "check_tensorrt_version",
           "nvinfer_from_ldd", "tensorrt_flags", "tensorrt_load_advice", "tensorrt_of_server"]
