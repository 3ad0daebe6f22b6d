"""Compile every kernel source with NVRTC for the target GPUs and report per-kernel resources.

Runs without a GPU (NVRTC is a library): `python -m mattrt.kernels.compile` prints, for each
source, architecture and entry point, the registers per thread, the spill stores/loads and the
local memory (ptxas "stack frame") that ptxas reports with --ptxas-options=-v.
Targets: sm_75 (Turing), sm_87 (Jetson Orin), sm_90 (Hopper).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass
from typing import Sequence

from mattrt.availability import require
from mattrt.kernels.launch import COMPILE_OPTIONS, SOURCES, kernel_names, source_text
from mattrt.lazy import lazy_import

nvrtc = lazy_import("cuda.bindings.nvrtc")

ARCHITECTURES: tuple[str, ...] = ("sm_75", "sm_87", "sm_90")

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")
_LMEM = re.compile(r"(\d+) bytes lmem")


@dataclass(frozen=True)
class KernelResources:
    source: str
    arch: str
    kernel: str
    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    local_memory: int  # bytes per thread (stack frame, or lmem when ptxas reports it)


@dataclass(frozen=True)
class CompileResult:
    source: str
    arch: str
    cubin_bytes: int
    kernels: tuple[KernelResources, ...]
    log: str


class CompileError(RuntimeError):
    """NVRTC rejected a source; the message holds its log."""


def parse_ptxas_log(log: str, source: str, arch: str) -> list[KernelResources]:
    """Per-entry resources from a ptxas -v log (one block per 'Compiling entry function')."""
    found = []
    blocks = _ENTRY.split(log)
    # split gives [prefix, name, arch, body, name, arch, body, ...]
    for i in range(1, len(blocks) - 2, 3):
        name, block_arch, body = blocks[i], blocks[i + 1], blocks[i + 2]
        frame = _FRAME.search(body)
        registers = _REGISTERS.search(body)
        if frame is None or registers is None:
            raise ValueError(f"unrecognised ptxas report for {name} ({source}, {arch}):\n{body}")
        lmem = _LMEM.search(body)
        local = max(int(frame.group(1)), int(lmem.group(1)) if lmem else 0)
        found.append(KernelResources(source, block_arch, name, int(registers.group(1)), int(frame.group(2)),
                                     int(frame.group(3)), local))
    return found


def _check(result, what: str) -> None:
    err = result[0] if isinstance(result, tuple) else result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"NVRTC {what} failed: {err}")


def compile_source(source: str, arch: str, *, extra_options: Sequence[str] = ()) -> CompileResult:
    """Compile one source to a cubin for arch (e.g. "sm_90"); raises CompileError with the log."""
    require("nvrtc", "compiling the CUDA kernels")

    err, program = nvrtc.nvrtcCreateProgram(source_text(source).encode(), source.encode(), 0, [], [])
    _check(err, "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={arch}", *COMPILE_OPTIONS, "--ptxas-options=-v", *extra_options]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(options), [o.encode() for o in options])
        err, size = nvrtc.nvrtcGetProgramLogSize(program)
        _check(err, "nvrtcGetProgramLogSize")
        buffer = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(program, buffer), "nvrtcGetProgramLog")
        log = buffer.rstrip(b"\0 ").decode(errors="replace")
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"NVRTC could not compile {source} for {arch} ({status}):\n{log}")
        err, cubin_size = nvrtc.nvrtcGetCUBINSize(program)
        _check(err, "nvrtcGetCUBINSize")
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    kernels = parse_ptxas_log(log, source, arch)
    missing = set(kernel_names(source)) - {k.kernel for k in kernels}
    if missing:
        raise CompileError(f"{source} for {arch}: ptxas reported no resources for {', '.join(sorted(missing))}")
    return CompileResult(source, arch, int(cubin_size), tuple(sorted(kernels, key=lambda k: k.kernel)), log)


def compile_all(sources: Sequence[str] = SOURCES, architectures: Sequence[str] = ARCHITECTURES) -> list[CompileResult]:
    return [compile_source(source, arch) for source in sources for arch in architectures]


def format_table(results: Sequence[CompileResult]) -> str:
    header = ("arch", "source", "kernel", "registers", "spill stores (B)", "spill loads (B)", "local (B)")
    rows = [(k.arch, k.source, k.kernel, str(k.registers), str(k.spill_stores), str(k.spill_loads), str(k.local_memory))
            for r in results for k in r.kernels]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mattrt.kernels.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=ARCHITECTURES, help="architecture (repeatable; default: all)")
    parser.add_argument("--source", action="append", choices=SOURCES, help="kernel source (repeatable; default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        results = compile_all(args.source or SOURCES, args.arch or ARCHITECTURES)
    except CompileError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(k) for r in results for k in r.kernels], indent=2))
    else:
        print(format_table(results))
        spilled = [k for r in results for k in r.kernels if k.spill_stores or k.spill_loads]
        print(f"\n{sum(len(r.kernels) for r in results)} kernels, {len(results)} compilations, "
              f"{len(spilled)} with spills")
    return 0


if __name__ == "__main__":
    sys.exit(main())
