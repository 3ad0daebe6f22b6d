"""What this machine's CPU is: its model name and ISA flags.

Recorded beside every measurement (bench, the measured `--backend auto` choice) and part of the
key of anything measured or compiled for this CPU: OpenVINO's kernels, its bf16 support and the
speed ratio between backends follow the ISA flags, and two machines reporting the same model
name ("AMD EPYC") can differ in them (AVX-512 with VNNI and BF16 on one, AVX2 only on another).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Flags that decide which kernels the CPU libraries use (x86 SIMD widths, VNNI, BF16/FP16, AMX;
# ARM's SVE/dot-product/bf16); the full list is kept too, for the record.
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni_int8", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "sve", "asimddp",
             "bf16", "i8mm")


def _cpuinfo_field(*names: str) -> str | None:
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in names:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    return _cpuinfo_field("model name", "Model") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """Every flag /proc/cpuinfo lists for the first CPU, sorted ([] where there is no such file)."""
    text = _cpuinfo_field("flags", "Features")
    return sorted(set(text.split())) if text else []


def isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU has, in ISA_FLAGS order."""
    have = set(cpu_flags())
    return [flag for flag in ISA_FLAGS if flag in have]


def cpu_identity() -> dict:
    """Model, ISA flags, all flags, architecture and logical CPU count (the cores this process may
    use are runtime/threads.py's available_cores: callers add them where they matter)."""
    return {"cpu": cpu_model(), "isa": isa_flags(), "flags": cpu_flags(), "machine": platform.machine(),
            "os_cpus": os.cpu_count()}


__all__ = ["ISA_FLAGS", "cpu_flags", "cpu_identity", "cpu_model", "isa_flags"]
