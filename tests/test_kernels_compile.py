"""Check 1 of the kernels: every source compiles with NVRTC for sm_75, sm_87 and sm_90."""

from __future__ import annotations

import re

import pytest

from mattrt.availability import skip_reason
from mattrt.kernels import compile as kernel_compile
from mattrt.kernels.launch import KERNEL_DIR, SOURCES, kernel_names, kernel_signatures, source_text

needs_nvrtc = pytest.mark.skipif(bool(skip_reason("nvrtc")), reason=skip_reason("nvrtc"))


@pytest.fixture(scope="module")
def compiled():
    return kernel_compile.compile_all()


@needs_nvrtc
def test_every_source_compiles_for_every_architecture(compiled):
    done = {(r.source, r.arch) for r in compiled}
    assert done == {(s, a) for s in SOURCES for a in ("sm_75", "sm_87", "sm_90")}
    for result in compiled:
        assert result.cubin_bytes > 0
        # every extern "C" entry point got its own ptxas report
        assert [k.kernel for k in result.kernels] == sorted(kernel_names(result.source))
        assert all(k.arch == result.arch for k in result.kernels)


@needs_nvrtc
def test_no_kernel_spills_or_uses_local_memory(compiled):
    for result in compiled:
        for k in result.kernels:
            assert (k.spill_stores, k.spill_loads, k.local_memory) == (0, 0, 0), k
            assert 0 < k.registers <= 128, k  # at most 128 keeps >= 50% occupancy for 128-thread blocks


@needs_nvrtc
def test_cli_prints_a_row_per_kernel(capsys):
    assert kernel_compile.main(["--arch", "sm_90", "--source", "stitch.cu"]) == 0
    printed = capsys.readouterr().out
    for name in kernel_names("stitch.cu"):
        assert re.search(rf"sm_90\s+stitch\.cu\s+{name}\s+\d+\s+0\s+0\s+0", printed), printed


def test_ptxas_log_parser():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'first' for 'sm_90'
ptxas info    : Function properties for first
ptxas         .     16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 16 bytes cumulative stack size
ptxas info    : Compile time = 1.0 ms
ptxas info    : Compiling entry function 'second' for 'sm_90'
ptxas info    : Function properties for second
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 372 bytes cmem[0]
"""
    parsed = kernel_compile.parse_ptxas_log(log, "x.cu", "sm_90")
    assert [(k.kernel, k.registers, k.spill_stores, k.spill_loads, k.local_memory) for k in parsed] == [
        ("first", 40, 8, 4, 16),
        ("second", 12, 0, 0, 0),
    ]
    with pytest.raises(ValueError, match="unrecognised"):
        kernel_compile.parse_ptxas_log("ptxas info    : Compiling entry function 'k' for 'sm_90'\nnothing", "x.cu", "sm_90")


@pytest.mark.parametrize("source", SOURCES)
def test_sources_keep_threads_independent(source):
    """The host emulation runs threads one after another; these constructs would break that."""
    text = source_text(source)
    code = re.sub(r"//[^\n]*", "", text)
    for construct in ("__shared__", "__syncthreads", "__shfl", "__syncwarp", "__ballot", "cooperative_groups"):
        assert construct not in code, f"{source} uses {construct}"
    assert text.count("MATTRT_KERNELS_COMMON_CUH") >= 1  # the shared header was expanded in place
    assert '#include "' not in code


def test_entry_point_signatures_parse():
    params = kernel_signatures("max_unpool.cu")["max_unpool_winner_i32"]
    assert [(p.name, p.ctype, p.pointer) for p in params] == [
        ("indices", "int", True), ("winner", "int", True), ("first_bad", "unsigned long long", True),
        ("planes", "long long", False), ("input_plane", "long long", False), ("output_plane", "long long", False),
    ]
    assert sorted(p.name for p in KERNEL_DIR.glob("*.cu")) == sorted(SOURCES)
