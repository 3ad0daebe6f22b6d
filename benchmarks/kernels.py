"""Benchmark of the mattrt CUDA kernels on a GPU (check 3 of kernels/: parity and speed).

For each op: parity of the CuPy kernel with its NumPy reference (on a moderate case with sizes
that are not multiples of the block), then timings with CUDA events (warmup, median of
repeats) of the kernel and of the PyTorch sequence it replaces, on a large case, and the
kernel's achieved bandwidth (the bytes the op must move, over its time) as a fraction of the
device-to-device copy bandwidth measured in the same run. Targets are reported, not asserted.

Needs: an NVIDIA GPU with its driver, CuPy (cupy-cuda12x or cupy-cuda13x), a CUDA build of
torch, NumPy. Run from the repository root:

    python benchmarks/kernels.py [--repeats 20] [--quick]

It prints a table and writes benchmarks/results/kernels-<gpu>-<date>.json. Each op is guarded:
a failure is recorded (with its traceback) and the other ops still run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from checkout import ROOT, ensure_mattrt_importable  # noqa: E402  (benchmarks/ is on sys.path)

RESULTS = ROOT / "benchmarks" / "results"

# Fractions of the measured copy bandwidth the kernels should reach (reported, not asserted).
BANDWIDTH_TARGETS = {
    "trimap_fusion": 0.8,
    "stitch_accumulate": 0.8,
    "stitch_finalize": 0.8,
    "preprocess_tiles": 0.8,
    "max_unpool2d": 0.5,
}


def fail(message: str) -> None:
    print(f"benchmarks/kernels.py: {message}", file=sys.stderr)
    sys.exit(2)


def check_environment():
    try:
        import numpy as np
    except ImportError:
        fail("needs NumPy")
    try:
        import cupy
    except Exception as exc:
        fail(f"needs CuPy with a working CUDA install (pip install cupy-cuda12x or cupy-cuda13x): {exc}")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        fail(f"needs an NVIDIA GPU: CuPy cannot reach a CUDA device ({exc})")
    if count < 1:
        fail("needs an NVIDIA GPU: CuPy sees none")
    try:
        import torch
    except ImportError:
        fail("needs torch (a CUDA build) for the PyTorch baselines")
    if not torch.cuda.is_available():
        fail(f"needs a CUDA build of torch that sees the GPU (torch {torch.__version__}, CUDA {torch.version.cuda})")
    return np, cupy, torch


# ---------------------------------------------------------------------------------------------


class Bench:
    # Timed problem sizes per preset (parity cases are fixed, moderate and deliberately odd).
    SIZES = {
        "full": {
            "copy_mib": 1024,
            "max_unpool": (8, 64, 512),  # N, C, output side
            "attention": (8, 64, 512),  # N, C, full-resolution side
            "fusion": (4, 2048, 512),  # N, detail side, trimap side
            "stitch": (4096, 1024, 768),  # image side, tile, tile stride (4 x 4 tiles)
            "preprocess": (4096, 1024, 1046),  # image side, tile, tile stride (4 x 4 tiles past every edge)
            "morphology": (4, 2048, 5),  # N, side, radius
            "guided_filter": (3840, 2160, 48),  # width, height, radius (4K: r = L/80)
            "refine": (1920, 1080),  # synthetic scene for refine_alpha, host vs device
        },
        "quick": {
            "copy_mib": 256,
            "max_unpool": (4, 32, 256),
            "attention": (4, 32, 256),
            "fusion": (2, 1024, 256),
            "stitch": (2048, 512, 384),
            "preprocess": (2048, 512, 534),
            "morphology": (2, 1024, 5),
            "guided_filter": (1920, 1080, 24),
            "refine": (960, 540),
        },
    }

    def __init__(self, np, cupy, torch, repeats: int, quick: bool):
        self.np, self.cupy, self.torch = np, cupy, torch
        self.repeats, self.quick = repeats, quick
        self.sizes = self.SIZES["quick" if quick else "full"]
        self.rows: list[dict] = []
        self.copy_bandwidth = None  # bytes per second

    # -- helpers ---------------------------------------------------------------------------

    def cp(self, tensor):
        """A CuPy view of a CUDA tensor (DLPack, no copy)."""
        return self.cupy.from_dlpack(tensor)

    def time_ms(self, fn) -> float:
        torch = self.torch
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    def time_torch_ms(self, fn) -> float | None:
        """Time a PyTorch baseline; None (and a message) if this torch build cannot run it."""
        try:
            return self.time_ms(fn)
        except Exception as exc:
            print(f"  (PyTorch baseline failed: {type(exc).__name__}: {exc})", flush=True)
            return None

    def compare(self, fn) -> dict:
        """A parity dict from fn(), or the error it raised (a failing baseline must not lose the row)."""
        try:
            return fn()
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def parity_row(self, op: str, case: str, parity: dict, ok: bool) -> None:
        """The kernel against its NumPy reference; raises (failing the op) when they disagree."""
        self.rows.append({"op": op, "case": f"parity: {case}", "parity": parity,
                          "error": None if ok else "differs from the NumPy reference"})
        print(f"  {op:20s} parity {case:40s} {'ok' if ok else 'MISMATCH'} {parity}", flush=True)
        if not ok:
            raise AssertionError(f"{op} ({case}) differs from the NumPy reference: {parity}")

    def record(self, op: str, case: str, *, parity: dict, kernel_ms: float, torch_ms: float | None, nbytes: int,
               baseline: str, note: str = "") -> None:
        bandwidth = nbytes / (kernel_ms * 1e-3)
        fraction = bandwidth / self.copy_bandwidth if self.copy_bandwidth else None
        target = BANDWIDTH_TARGETS.get(op)
        row = {
            "op": op, "case": case, "parity": parity, "kernel_ms": kernel_ms, "torch_ms": torch_ms,
            "speedup_vs_torch": (torch_ms / kernel_ms) if torch_ms else None, "torch_baseline": baseline,
            "bytes": nbytes, "bandwidth_GBps": bandwidth / 1e9, "fraction_of_copy": fraction,
            "bandwidth_target": target,
            "meets_bandwidth_target": (fraction >= target) if (target is not None and fraction is not None) else None,
            "faster_than_torch": (torch_ms > kernel_ms) if torch_ms else None, "note": note, "error": None,
        }
        self.rows.append(row)
        speed = f"{row['speedup_vs_torch']:.2f}x" if torch_ms else "-"
        print(f"  {op:20s} {case:44s} kernel {kernel_ms:8.3f} ms  torch {torch_ms or float('nan'):8.3f} ms  "
              f"speedup {speed:>7s}  {bandwidth / 1e9:7.0f} GB/s = {fraction or 0:.2f} of copy  parity {parity}",
              flush=True)

    def guarded(self, op: str, fn) -> None:
        print(f"[{op}]", flush=True)
        started = time.time()
        try:
            fn()
        except Exception as exc:
            print(f"  FAILED: {type(exc).__name__}: {exc}", flush=True)
            self.rows.append({"op": op, "case": "", "error": f"{type(exc).__name__}: {exc}",
                              "traceback": traceback.format_exc()})
        finally:
            try:  # after a device fault these raise too; the next ops then record their own failure
                self.torch.cuda.synchronize()
                self.cupy.get_default_memory_pool().free_all_blocks()
                self.torch.cuda.empty_cache()
            except Exception as exc:
                print(f"  cleanup failed: {type(exc).__name__}: {exc}", flush=True)
            print(f"  ({time.time() - started:.1f} s)", flush=True)

    def exact(self, got, want) -> dict:
        np = self.np
        got = self.cupy.asnumpy(got) if not isinstance(got, np.ndarray) else got
        return {"exact": bool(np.array_equal(got, want)), "shape": list(want.shape)}

    def close(self, got, want) -> dict:
        """Errors of got against want; max_rel_err is |got - want| / (|want| + 1), fit for fp16 rounding."""
        np = self.np
        got = self.cupy.asnumpy(got) if not isinstance(got, np.ndarray) else got
        want64 = want.astype(np.float64)
        diff = np.abs(got.astype(np.float64) - want64)
        return {"max_abs_err": float(diff.max()) if diff.size else 0.0,
                "max_rel_err": float((diff / (np.abs(want64) + 1)).max()) if diff.size else 0.0,
                "pixels_over_1e-5": int((diff > 1e-5).sum()), "shape": list(want.shape)}

    # -- copy bandwidth --------------------------------------------------------------------------

    def copy(self) -> None:
        cupy = self.cupy
        nbytes = self.sizes["copy_mib"] * 2**20
        src = cupy.ones(nbytes // 4, dtype=cupy.float32)
        dst = cupy.empty_like(src)

        def memcpy():
            dst.data.copy_from_device_async(src.data, nbytes)

        memcpy_ms = self.time_ms(memcpy)
        copyto_ms = self.time_ms(lambda: cupy.copyto(dst, src))
        # read + write; the faster of the two copies is the reference the kernels are measured against
        self.copy_bandwidth = 2 * nbytes / (min(memcpy_ms, copyto_ms) * 1e-3)
        self.copy_info = {"bytes": nbytes, "memcpy_ms": memcpy_ms, "memcpy_GBps": 2 * nbytes / (memcpy_ms * 1e-3) / 1e9,
                          "copyto_ms": copyto_ms, "copyto_GBps": 2 * nbytes / (copyto_ms * 1e-3) / 1e9,
                          "reference_GBps": self.copy_bandwidth / 1e9}
        print(f"  device copy of {nbytes / 2**20:.0f} MiB (read + write): cudaMemcpy D2D "
              f"{self.copy_info['memcpy_GBps']:.0f} GB/s, cupy.copyto {self.copy_info['copyto_GBps']:.0f} GB/s", flush=True)

    # -- ops -------------------------------------------------------------------------------------

    def max_unpool(self) -> None:
        torch, F = self.torch, self.torch.nn.functional
        from mattrt.errors import InputError
        from mattrt.kernels import max_unpool

        # parity: AIM's overlapping 3x3/s2 pools (repeated indices) and SHM's 2x2/s2, odd sizes
        gen = torch.Generator(device="cuda").manual_seed(0)
        for (k, s, p), value_dtype, index_dtype in (((3, 2, 1), torch.float32, torch.int64),
                                                    ((2, 2, 0), torch.float16, torch.int32)):
            features = torch.relu(torch.randn(2, 16, 67, 45, device="cuda", generator=gen))
            _, indices = F.max_pool2d(features, k, s, p, return_indices=True)
            decoder = torch.randn(indices.shape, device="cuda", generator=gen).to(value_dtype)
            idx = indices.to(index_dtype).contiguous()
            got = max_unpool.max_unpool2d(self.cp(decoder), self.cp(idx), (67, 45))
            want = max_unpool.max_unpool2d_reference(decoder.cpu().numpy(), idx.cpu().numpy(), (67, 45))
            parity = self.exact(got, want)
            self.parity_row("max_unpool2d", f"{k}x{k}/s{s} {value_dtype} {index_dtype} {tuple(decoder.shape)}",
                            parity, parity["exact"])
        bad = idx.clone()
        bad.view(-1)[123] = 67 * 45
        try:
            max_unpool.max_unpool2d(self.cp(decoder), self.cp(bad), (67, 45))
            reported = "not reported"
        except InputError as exc:
            reported = str(exc)
        self.parity_row("max_unpool2d", "out-of-range index is reported", {"message": reported},
                        "at input position" in reported)

        n, c, size = self.sizes["max_unpool"]
        for (k, s, p), value_dtype, index_dtype in (((3, 2, 1), torch.float32, torch.int64),
                                                    ((2, 2, 0), torch.float32, torch.int64),
                                                    ((2, 2, 0), torch.float16, torch.int32)):
            features = torch.randn(n, c, size, size, device="cuda", generator=gen)
            _, indices = F.max_pool2d(features, k, s, p, return_indices=True)
            decoder = torch.randn(indices.shape, device="cuda", generator=gen).to(value_dtype)
            idx = indices.to(index_dtype).contiguous()
            x_cp, idx_cp = self.cp(decoder), self.cp(idx)
            out = torch.empty(n, c, size, size, device="cuda", dtype=value_dtype)
            out_cp = self.cp(out)
            kernel_ms = self.time_ms(lambda: max_unpool.max_unpool2d(x_cp, idx_cp, (size, size), out=out_cp, check=False))
            checked_ms = self.time_ms(lambda: max_unpool.max_unpool2d(x_cp, idx_cp, (size, size), out=out_cp))
            indices64 = idx.long()
            torch_ms = self.time_torch_ms(lambda: F.max_unpool2d(decoder, indices64, k, s, p, output_size=(size, size)))

            def versus_torch():
                torch_out = F.max_unpool2d(decoder, indices64, k, s, p, output_size=(size, size))
                if (k, s) == (2, 2):  # no repeated indices: torch's CUDA scatter is deterministic here
                    return {"equal_to_torch_cuda": bool(torch.equal(out, torch_out))}
                return {"nonzero_positions_equal_to_torch_cuda": bool(torch.equal(out != 0, torch_out != 0))}

            parity = self.compare(versus_torch)
            nbytes = decoder.nbytes + idx.nbytes + out.nbytes
            self.record("max_unpool2d", f"{k}x{k}/s{s} {value_dtype} idx {index_dtype} {tuple(decoder.shape)}",
                        parity=parity, kernel_ms=kernel_ms, torch_ms=torch_ms, nbytes=nbytes,
                        baseline="F.max_unpool2d (CUDA, non-deterministic on repeated indices)",
                        note=f"check=False; with the bad-index check (one sync): {checked_ms:.3f} ms")

    def attention(self) -> None:
        torch = self.torch
        from mattrt.kernels import attention_pool, torch_ops

        gen = torch.Generator(device="cuda").manual_seed(1)
        for dtype in (torch.float32, torch.float16):
            x = torch.randn(2, 8, 34, 262, device="cuda", generator=gen).to(dtype)
            a = (3 * torch.randn(2, 1, 34, 262, device="cuda", generator=gen)).to(dtype)
            y = torch.randn(2, 8, 17, 131, device="cuda", generator=gen).to(dtype)
            pool_parity = self.close(attention_pool.attention_pool2d(self.cp(x), self.cp(a)),
                                     attention_pool.attention_pool2d_reference(x.cpu().numpy(), a.cpu().numpy()))
            unpool_parity = self.close(attention_pool.attention_unpool2d(self.cp(y), self.cp(a)),
                                       attention_pool.attention_unpool2d_reference(y.cpu().numpy(), a.cpu().numpy()))
            limit = 1e-5 if dtype == torch.float32 else 2e-3  # fp16: one rounding step
            self.parity_row("attention_pool2d", f"{dtype} {tuple(x.shape)}", pool_parity,
                            pool_parity["max_rel_err"] <= limit)
            self.parity_row("attention_unpool2d", f"{dtype} {tuple(y.shape)}", unpool_parity,
                            unpool_parity["max_rel_err"] <= limit)

        n, c, size = self.sizes["attention"]
        for dtype in (torch.float32, torch.float16):
            x = torch.randn(n, c, size, size, device="cuda", generator=gen).to(dtype)
            a = torch.randn(n, 1, size, size, device="cuda", generator=gen).to(dtype)
            pooled = torch.empty(n, c, size // 2, size // 2, device="cuda", dtype=dtype)
            x_cp, a_cp, pooled_cp = self.cp(x), self.cp(a), self.cp(pooled)
            kernel_ms = self.time_ms(lambda: attention_pool.attention_pool2d(x_cp, a_cp, out=pooled_cp))
            torch_ms = self.time_torch_ms(lambda: torch_ops.attention_pool2d_eager(x, a))
            parity = self.compare(lambda: {"max_abs_err_vs_torch": float(
                (pooled.float() - torch_ops.attention_pool2d_eager(x, a).float()).abs().max())})
            self.record("attention_pool2d", f"{dtype} {tuple(x.shape)}", parity=parity, kernel_ms=kernel_ms,
                        torch_ms=torch_ms, nbytes=x.nbytes + a.nbytes + pooled.nbytes,
                        baseline="sigmoid, window reshape, softmax, multiply, sum (torch eager)")
            unpooled = torch.empty_like(x)
            unpooled_cp = self.cp(unpooled)
            kernel_ms = self.time_ms(lambda: attention_pool.attention_unpool2d(pooled_cp, a_cp, out=unpooled_cp))
            torch_ms = self.time_torch_ms(lambda: torch_ops.attention_unpool2d_eager(pooled, a))
            parity = self.compare(lambda: {"max_abs_err_vs_torch": float(
                (unpooled.float() - torch_ops.attention_unpool2d_eager(pooled, a).float()).abs().max())})
            self.record("attention_unpool2d", f"{dtype} {tuple(x.shape)}", parity=parity, kernel_ms=kernel_ms,
                        torch_ms=torch_ms, nbytes=pooled.nbytes + a.nbytes + unpooled.nbytes,
                        baseline="sigmoid, nearest x2 upsampling, multiply (torch eager)")

    def torch_ops_cuda(self) -> None:
        """The torch.library ops' CUDA path (CuPy through DLPack) against their CPU path."""
        torch, F = self.torch, self.torch.nn.functional
        from mattrt.kernels import torch_ops  # noqa: F401

        gen = torch.Generator(device="cuda").manual_seed(2)
        features = torch.relu(torch.randn(2, 8, 38, 50, device="cuda", generator=gen))
        _, indices = F.max_pool2d(features, 3, 2, 1, return_indices=True)
        decoder = torch.randn(indices.shape, device="cuda", generator=gen)
        a = torch.randn(2, 1, 38, 50, device="cuda", generator=gen)
        checks = {
            "max_unpool2d": (torch.ops.mattrt.max_unpool2d(decoder, indices, 38, 50),
                             torch.ops.mattrt.max_unpool2d(decoder.cpu(), indices.cpu(), 38, 50)),
            "attention_pool2d": (torch.ops.mattrt.attention_pool2d(features, a),
                                 torch.ops.mattrt.attention_pool2d(features.cpu(), a.cpu())),
            "attention_unpool2d": (torch.ops.mattrt.attention_unpool2d(decoder, a),
                                   torch.ops.mattrt.attention_unpool2d(decoder.cpu(), a.cpu())),
        }
        view = self.cp(decoder)
        zero_copy = view.data.ptr == decoder.data_ptr()
        for name, (gpu, cpu) in checks.items():
            err = float((gpu.cpu().float() - cpu.float()).abs().max())
            ok = err <= (0.0 if name == "max_unpool2d" else 1e-5)
            self.rows.append({"op": f"torch.ops.mattrt.{name}", "case": "CUDA vs CPU", "parity": {"max_abs_err": err},
                              "dlpack_zero_copy": zero_copy, "error": None if ok else "CUDA and CPU paths differ"})
            print(f"  torch.ops.mattrt.{name}: CUDA vs CPU max abs err {err:.3g}; DLPack zero-copy {zero_copy}", flush=True)

    def fusion(self) -> None:
        torch, F = self.torch, self.torch.nn.functional
        from mattrt.fusion_kinds import FUSION_KINDS
        from mattrt.kernels import fusion
        from mattrt.models.fusion import FUSIONS

        gen = torch.Generator(device="cuda").manual_seed(3)
        low = 2 * torch.randn(2, 3, 61, 77, device="cuda", generator=gen)
        detail = torch.rand(2, 1, 250, 301, device="cuda", generator=gen) * 1.4 - 0.2
        for kind in FUSION_KINDS:
            for logits in (True, False):
                trimap = low if logits else torch.softmax(low, dim=1)
                got = fusion.trimap_fusion(self.cp(trimap), self.cp(detail), kind, logits=logits)
                parity = self.close(got, fusion.trimap_fusion_reference(trimap.cpu().numpy(), detail.cpu().numpy(),
                                                                        kind, logits=logits))
                # Without logits the kernel does the reference's float32 operations (no FMAs): exact.
                # The softmax of logits uses the hardware exp: where two classes are within an ulp
                # the argmax may pick the other one, so a handful of such pixels is accepted there.
                if logits:
                    ok = parity["pixels_over_1e-5"] <= (10 if kind == "argmax_trimap" else 0)
                else:
                    ok = parity["max_abs_err"] == 0.0
                self.parity_row("trimap_fusion", f"{kind} logits={logits} {tuple(detail.shape)}", parity, ok)
        # the pipeline's form: a band of rows of a taller image, clamped
        probabilities = torch.softmax(low, dim=1)[:1]
        band = detail[:1, :, 37:137].contiguous()
        for kind in FUSION_KINDS:
            got = fusion.trimap_fusion(self.cp(probabilities), self.cp(band), kind, band=(37, 250), clamp=True)
            parity = self.close(got, fusion.trimap_fusion_reference(probabilities.cpu().numpy(), band.cpu().numpy(), kind,
                                                                    band=(37, 250), clamp=True))
            self.parity_row("trimap_fusion", f"{kind} band rows 37..136 of 250, clamped", parity,
                            parity["max_abs_err"] == 0.0)

        n, size, low_size = self.sizes["fusion"]
        for kind in FUSION_KINDS:
            for detail_dtype in (torch.float32, torch.float16):
                trimap = torch.randn(n, 3, low_size, low_size, device="cuda", generator=gen)
                detail = torch.rand(n, 1, size, size, device="cuda", generator=gen).to(detail_dtype)
                out = torch.empty_like(detail)
                t_cp, d_cp, o_cp = self.cp(trimap), self.cp(detail), self.cp(out)
                kernel_ms = self.time_ms(lambda: fusion.trimap_fusion(t_cp, d_cp, kind, logits=True, out=o_cp))

                def torch_sequence():
                    up = F.interpolate(trimap, size=(size, size), mode="bilinear", align_corners=False)
                    return FUSIONS[kind](torch.softmax(up, dim=1), detail.float()).to(detail_dtype)

                torch_ms = self.time_torch_ms(torch_sequence)

                def versus_torch():
                    diff = (out.float() - torch_sequence().float()).abs()
                    return {"max_abs_err_vs_torch": float(diff.max()),
                            "pixels_over_1e-3": int((diff > 1e-3).sum())}  # argmax flips at near-ties

                parity = self.compare(versus_torch)
                self.record("trimap_fusion", f"{kind} logits {detail_dtype} {n}x{size}^2 <- {low_size}^2",
                            parity=parity, kernel_ms=kernel_ms, torch_ms=torch_ms,
                            nbytes=trimap.nbytes + detail.nbytes + out.nbytes,
                            baseline="F.interpolate bilinear + softmax + models.fusion formula")

    def stitch(self) -> None:
        np, torch = self.np, self.torch
        from mattrt.kernels import stitch

        rng = np.random.default_rng(4)
        height, width, tile = 301, 517, 64
        acc, weight = np.zeros((height, width), np.float32), np.zeros((height, width), np.float32)
        acc_gpu, weight_gpu = self.cupy.asarray(acc), self.cupy.asarray(weight)
        ramp = np.minimum(np.arange(tile) + 1, tile - np.arange(tile)).astype(np.float32)
        window = (np.outer(ramp, ramp) / ramp.max() ** 2).astype(np.float32)
        for tile_dtype in (np.float32, np.float16):
            offsets = np.array([[0, 0], [-20, 480], [250, 500], [40, 48], [280, -30], [100, 100]])
            tiles = rng.random((len(offsets), tile, tile)).astype(tile_dtype)
            stitch.stitch_accumulate_reference(acc, weight, tiles, window, offsets)
            stitch.stitch_accumulate(acc_gpu, weight_gpu, self.cupy.asarray(tiles), self.cupy.asarray(window), offsets)
        parity = {"acc": self.exact(acc_gpu, acc)["exact"], "weight_sum": self.exact(weight_gpu, weight)["exact"]}
        for dtype in (np.uint8, np.uint16, np.float32):
            parity[np.dtype(dtype).name] = self.exact(
                stitch.stitch_finalize(acc_gpu, weight_gpu, dtype, uncovered="zero"),
                stitch.stitch_finalize_reference(acc, weight, dtype, uncovered="zero"))["exact"]
        self.parity_row("stitch", f"accumulate + finalize {height}x{width}, tiles {tile}", parity, all(parity.values()))
        # the pipeline's form: a tiling plan's stack of (at most 9) windows and an index per tile,
        # then the unclamped ratio
        from mattrt.runtime.tiling import TilePlan

        plan = TilePlan.build(height, width, tile, 16, 8)
        stack, index = plan.window_stack()
        tiles = rng.uniform(-0.2, 1.2, (len(plan), tile, tile)).astype(np.float32)
        acc, weight = np.zeros((height, width), np.float32), np.zeros((height, width), np.float32)
        stitch.stitch_accumulate_reference(acc, weight, tiles, stack, plan.offsets(), index)
        acc_gpu, weight_gpu = self.cupy.zeros((height, width), np.float32), self.cupy.zeros((height, width), np.float32)
        stitch.stitch_accumulate(acc_gpu, weight_gpu, self.cupy.asarray(tiles), self.cupy.asarray(stack), plan.offsets(),
                                 index)
        ratio = stitch.stitch_finalize(acc_gpu, weight_gpu, np.float32, clamp=False)
        parity = {"acc": self.exact(acc_gpu, acc)["exact"], "weight_sum": self.exact(weight_gpu, weight)["exact"],
                  "ratio": self.exact(ratio, stitch.stitch_finalize_reference(acc, weight, np.float32, clamp=False))["exact"]}
        self.parity_row("stitch", f"plan of {len(plan)} tiles, {len(stack)} windows, unclamped ratio", parity,
                        all(parity.values()))
        parity = {"vs_torch": "not compared; see the parity row"}

        size, tile, stride = self.sizes["stitch"]
        grid = [(i * stride, j * stride) for i in range(4) for j in range(4)]  # one batch of 16 tiles
        offsets = np.array(grid)
        tiles = torch.rand(len(grid), tile, tile, device="cuda")
        window_t = torch.from_numpy(np.outer(np.hanning(tile), np.hanning(tile)).astype(np.float32) + 1e-3).cuda()
        acc_t = torch.zeros(size, size, device="cuda")
        weight_t = torch.zeros(size, size, device="cuda")
        acc_cp, weight_cp, tiles_cp, window_cp = self.cp(acc_t), self.cp(weight_t), self.cp(tiles), self.cp(window_t)
        kernel_ms = self.time_ms(lambda: stitch.stitch_accumulate(acc_cp, weight_cp, tiles_cp, window_cp, offsets))

        def torch_accumulate():
            for b, (top, left) in enumerate(grid):
                y1, x1 = min(top + tile, size), min(left + tile, size)
                acc_t[top:y1, left:x1] += tiles[b, : y1 - top, : x1 - left] * window_t[: y1 - top, : x1 - left]
                weight_t[top:y1, left:x1] += window_t[: y1 - top, : x1 - left]

        torch_ms = self.time_torch_ms(torch_accumulate)
        covered = min(3 * stride + tile, size) ** 2
        self.record("stitch_accumulate", f"16 tiles {tile}^2 (overlap {tile - stride}) on {size}^2",
                    parity=parity, kernel_ms=kernel_ms, torch_ms=torch_ms,
                    nbytes=covered * 16 + tiles.nbytes + window_t.nbytes,
                    baseline="per-tile slice += tile * window (torch, 32 launches)")
        weight_t.clamp_(min=1e-3)
        for dtype, torch_dtype, scale in ((np.uint8, torch.uint8, 255.0), (np.uint16, torch.uint16, 65535.0),
                                          (np.float32, torch.float32, None)):
            out = self.cupy.empty((size, size), dtype=dtype)
            kernel_ms = self.time_ms(lambda: stitch.stitch_finalize(acc_cp, weight_cp, dtype, uncovered="zero", out=out))
            checked_ms = self.time_ms(lambda: stitch.stitch_finalize(acc_cp, weight_cp, dtype, out=out))

            def torch_finalize():
                alpha = (acc_t / weight_t).clamp_(0, 1)
                return alpha if scale is None else alpha.mul_(scale).add_(0.5).floor_().to(torch_dtype)

            torch_ms = self.time_torch_ms(torch_finalize)
            self.record("stitch_finalize", f"{np.dtype(dtype).name} {size}^2", parity=parity, kernel_ms=kernel_ms,
                        torch_ms=torch_ms, nbytes=acc_t.nbytes + weight_t.nbytes + out.nbytes,
                        baseline="divide, clamp, scale, round, cast (torch)",
                        note=f"uncovered='zero'; with the uncovered-pixel check (one sync): {checked_ms:.3f} ms")

    def preprocess(self) -> None:
        np, torch = self.np, self.torch
        from mattrt.kernels import preprocess

        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        rng = np.random.default_rng(5)
        image = rng.integers(0, 256, (201, 333, 3), dtype=np.uint8)
        offsets = np.array([[-40, -50], [0, 0], [150, 300], [-300, 500], [90, 120]])
        for dtype in (np.float32, np.float16):
            parity = self.exact(preprocess.preprocess_tiles(self.cupy.asarray(image), offsets, 128, mean, std, dtype),
                                preprocess.preprocess_tiles_reference(image, offsets, 128, mean, std, dtype))
            self.parity_row("preprocess_tiles", f"{np.dtype(dtype).name} {image.shape}, 5 tiles of 128", parity,
                            parity["exact"])
        for image_other in (image.astype(np.uint16) * 257, image.astype(np.float32) / 255):
            parity = self.exact(preprocess.preprocess_tiles(self.cupy.asarray(image_other), offsets, 128, mean, std),
                                preprocess.preprocess_tiles_reference(image_other, offsets, 128, mean, std))
            self.parity_row("preprocess_tiles", f"{image_other.dtype} image -> float32, 5 tiles of 128", parity,
                            parity["exact"])

        size, tile, stride = self.sizes["preprocess"]
        starts = [-32 + i * stride for i in range(4)]  # the outer tiles reach past every edge
        offsets = np.array([(t, l) for t in starts for l in starts])
        image_t = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, device="cuda")
        image_cp = self.cp(image_t)

        def reflect(i, n):
            period = 2 * (n - 1)
            m = np.mod(i, period)
            return np.where(m < n, m, period - m)

        rows = torch.from_numpy(reflect(offsets[:, :1] + np.arange(tile), size)).cuda()
        cols = torch.from_numpy(reflect(offsets[:, 1:] + np.arange(tile), size)).cuda()
        mean_t = torch.tensor(mean, device="cuda")[:, None, None]
        std_t = torch.tensor(std, device="cuda")[:, None, None]
        for dtype, torch_dtype in ((np.float32, torch.float32), (np.float16, torch.float16)):
            out = self.cupy.empty((len(offsets), 3, tile, tile), dtype=dtype)
            kernel_ms = self.time_ms(lambda: preprocess.preprocess_tiles(image_cp, offsets, tile, mean, std, dtype, out=out))

            def torch_sequence():
                crops = image_t[rows[:, :, None], cols[:, None, :]]  # B x T x T x 3 gather
                x = crops.permute(0, 3, 1, 2).float() / 255
                return ((x - mean_t) / std_t).to(torch_dtype).contiguous()

            torch_ms = self.time_torch_ms(torch_sequence)
            parity = self.compare(lambda: {"max_abs_err_vs_torch": float(
                (torch.from_dlpack(out).float() - torch_sequence().float()).abs().max())})
            self.record("preprocess_tiles", f"16 tiles {tile}^2 from {size}^2 -> {np.dtype(dtype).name}",
                        parity=parity, kernel_ms=kernel_ms, torch_ms=torch_ms,
                        nbytes=len(offsets) * tile * tile * 3 + out.nbytes,
                        baseline="reflect-index gather, permute, /255, normalise, cast (torch)")

    def morphology(self) -> None:
        np, torch, F = self.np, self.torch, self.torch.nn.functional
        from mattrt.kernels import morphology

        rng = np.random.default_rng(6)
        for dtype in (np.float32, np.uint8):
            mask = (rng.random((2, 1, 100, 130)) * 255).astype(dtype)
            for fn, ref in ((morphology.erode, morphology.erode_reference), (morphology.dilate, morphology.dilate_reference)):
                parity = self.exact(fn(self.cupy.asarray(mask), 3), ref(mask, 3))
                self.parity_row(fn.__name__, f"r=3 {np.dtype(dtype).name} {mask.shape}", parity, parity["exact"])

        n, size, radius = self.sizes["morphology"]
        mask_t = torch.rand(n, 1, size, size, device="cuda")
        k = 2 * radius + 1
        for dtype in (np.float32, np.uint8):
            source = mask_t if dtype == np.float32 else (mask_t * 255).to(torch.uint8)
            src_cp = self.cp(source)
            out = self.cupy.empty(src_cp.shape, dtype=dtype)
            kernel_ms = self.time_ms(lambda: morphology.erode(src_cp, radius, out=out))
            as_float = source.float()
            torch_ms = self.time_torch_ms(lambda: -F.max_pool2d(-as_float, k, 1, radius))
            parity = self.compare(lambda: {"equal_to_torch_max_pool": bool(
                torch.equal(torch.from_dlpack(out).float(), -F.max_pool2d(-as_float, k, 1, radius)))})
            self.record("erode", f"r={radius} {np.dtype(dtype).name} {tuple(source.shape)}", parity=parity,
                        kernel_ms=kernel_ms, torch_ms=torch_ms, nbytes=2 * source.nbytes,
                        baseline="-max_pool2d(-x) on float32 (torch)",
                        note="two separable passes; bytes count one read and one write")

    def guided_filter(self) -> None:
        """The refinement's kernels (guided_filter.cu): parity on odd sizes, then the guided
        filter on a 4K tile with its halo and on a whole image, against the same filter in torch
        (float64 cumsum box means, torch.linalg.solve), and refine_alpha on the device vs the host."""
        np, torch, cupy = self.np, self.torch, self.cupy
        from mattrt.kernels import guided_filter as gf

        rng = np.random.default_rng(7)
        planes = rng.random((13, 77, 131), dtype=np.float32)
        for radius in (0, 5, 48):
            parity = self.exact(gf.box_mean(cupy.asarray(planes), radius), gf.box_mean_reference(planes, radius))
            self.parity_row("box_mean", f"r={radius} {planes.shape}", parity, parity["exact"])
        alpha = rng.random((77, 131), dtype=np.float32)
        alpha[alpha < 0.4], alpha[alpha > 0.7] = 0.0, 1.0
        parity = self.exact(gf.band_seed(cupy.asarray(alpha), 0.02, 0.98), gf.band_seed_reference(alpha, 0.02, 0.98))
        self.parity_row("band_seed", f"{alpha.shape}", parity, parity["exact"])
        guide = rng.random((77, 131, 3), dtype=np.float32)
        window, band = alpha[9:60, 20:120].copy(), (rng.random((51, 100)) > 0.3).astype(np.uint8)
        for radius in (1, 12):
            parity = self.exact(
                gf.guided_filter_band(cupy.asarray(guide), cupy.asarray(alpha), cupy.asarray(window), cupy.asarray(band),
                                      (9, 20), radius, 1e-5),
                gf.guided_filter_band_reference(guide, alpha, window, band, (9, 20), radius, 1e-5))
            self.parity_row("guided_filter_band", f"r={radius} window {window.shape} of {alpha.shape}", parity,
                            parity["exact"])

        width, height, radius = self.sizes["guided_filter"]

        def torch_guided(g, p, r, eps):
            """He et al.'s colour guided filter in torch (float32 statistics of float64 box sums)."""
            def box(x):  # P x H x W window means, clipped windows
                for dim in (2, 1):
                    n = x.shape[dim]
                    prefix = torch.cumsum(x.double(), dim)
                    index = torch.arange(n, device=x.device)
                    hi = prefix.index_select(dim, (index + r).clamp(max=n - 1))
                    lo = prefix.index_select(dim, (index - r - 1).clamp(min=0))
                    keep = (index - r - 1 >= 0).to(prefix.dtype).reshape([-1 if d == dim else 1 for d in range(3)])
                    x = (hi - lo * keep).float()
                ones = torch.ones((1, *x.shape[1:]), device=x.device)
                count = ones
                for dim in (2, 1):
                    n = count.shape[dim]
                    index = torch.arange(n, device=x.device)
                    length = ((index + r).clamp(max=n - 1) - (index - r).clamp(min=0) + 1).float()
                    count = count * length.reshape([-1 if d == dim else 1 for d in range(3)])
                return x / count

            i = g.permute(2, 0, 1) - 0.5
            prods = torch.stack([i[0], i[1], i[2], p, i[0] * p, i[1] * p, i[2] * p] +
                                [i[a] * i[b] for a, b in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))])
            m = box(prods)
            mean_i, mean_p = m[:3], m[3]
            cov = m[4:7] - mean_i * mean_p
            sigma = torch.empty((*p.shape, 3, 3), device=p.device)
            for k, (a, b) in enumerate(((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))):
                value = m[7 + k] - mean_i[a] * mean_i[b] + (eps if a == b else 0.0)
                sigma[..., a, b] = value
                sigma[..., b, a] = value
            a = torch.linalg.solve(sigma, cov.permute(1, 2, 0)[..., None])[..., 0].permute(2, 0, 1)
            b = mean_p - (a * mean_i).sum(0)
            mab = box(torch.cat([a, b[None]]))
            return ((mab[:3] * i).sum(0) + mab[3]).clamp(0, 1)

        for label, (h, w, top, left, oh, ow) in (
                ("4K tile: core 512 + halo 2r", (512 + 4 * radius, 512 + 4 * radius, 2 * radius, 2 * radius, 512, 512)),
                (f"whole {width}x{height}", (height, width, 0, 0, height, width))):
            g_t = torch.rand(h, w, 3, device="cuda")
            p_t = (torch.rand(h, w, device="cuda") > 0.5).float()
            a_t = p_t[top:top + oh, left:left + ow].contiguous()
            band_t = torch.ones(oh, ow, dtype=torch.uint8, device="cuda")
            g_c, p_c, a_c, band_c = self.cp(g_t), self.cp(p_t), self.cp(a_t), self.cp(band_t)
            out = cupy.empty((oh, ow), np.float32)
            kernel_ms = self.time_ms(lambda: gf.guided_filter_band(g_c, p_c, a_c, band_c, (top, left), radius, 1e-5,
                                                                   out=out))
            torch_ms = self.time_torch_ms(lambda: torch_guided(g_t, p_t, radius, 1e-5))
            parity = self.compare(lambda: {"max_abs_err_vs_torch": float(
                (torch.from_dlpack(out) - torch_guided(g_t, p_t, radius, 1e-5)[top:top + oh, left:left + ow]).abs().max())})
            self.record("guided_filter_band", f"{label}, region {w}x{h}, r={radius}", parity=parity, kernel_ms=kernel_ms,
                        torch_ms=torch_ms, nbytes=h * w * 16 + oh * ow * 9,
                        baseline="cumsum box means + torch.linalg.solve (torch)",
                        note="bytes: guide and p read once, alpha and band read and the output written once; "
                             "the 17 box-filtered planes move about 20x more")

        from mattrt.data.synthetic import generate_sample, sample_rng
        from mattrt.metrics import sad
        from mattrt.runtime import ops
        from mattrt.runtime.refine import refine_alpha, warm_up

        warm_up()
        width, height = self.sizes["refine"]
        sample = generate_sample("salient_opaque", (width, height), sample_rng(0, 0))
        low = ops.resize_image(sample.alpha[..., None], height // 4, width // 4)
        from mattrt.kernels.fusion import upsample_region

        alpha = np.clip(upsample_region(low[..., 0], height, width, np.arange(height), np.arange(width)), 0, 1)
        alpha = alpha.astype(np.float32)
        timings = {}
        results = {}
        for where in ("host", "device", "host", "device"):  # interleaved; the second of each is kept
            stats = {}
            started = time.perf_counter()
            results[where] = refine_alpha(sample.image, alpha, None, where, stats=stats)
            timings[where] = (time.perf_counter() - started) * 1e3, stats["seconds"]
        parity = {"exact": bool(np.array_equal(results["device"], results["host"])),
                  "max_abs_err": float(np.abs(results["device"] - results["host"]).max()),
                  "sad_bilinear": sad(alpha, sample.alpha), "sad_refined": sad(results["device"], sample.alpha),
                  "device_stage_s": timings["device"][1], "host_stage_s": timings["host"][1]}
        self.record("refine_alpha", f"{width}x{height} synthetic, device vs host (wall, coarse solve on the CPU)",
                    parity=parity, kernel_ms=timings["device"][0], torch_ms=timings["host"][0],
                    nbytes=height * width * 3 + 2 * height * width * 4,
                    baseline="refine_alpha on the host (NumPy references)",
                    note="wall time of the whole call, not CUDA events; 'torch' columns hold the host path")


# ---------------------------------------------------------------------------------------------


def environment(np, cupy, torch) -> dict:
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except Exception:
        pass
    return {
        "gpu": name,
        "compute_capability": f"{props['major']}.{props['minor']}",
        "multiprocessors": int(props["multiProcessorCount"]),
        "memory_GiB": round(props["totalGlobalMem"] / 2**30, 1),
        "driver_version": driver,
        "driver_cuda_version": cupy.cuda.runtime.driverGetVersion(),
        "cupy_cuda_runtime_version": cupy.cuda.runtime.runtimeGetVersion(),
        "cupy": cupy.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def print_table(rows: list[dict]) -> None:
    header = ("op", "case", "kernel ms", "torch ms", "speedup", "GB/s", "of copy", "target", "parity")
    lines = []
    for row in rows:
        if row.get("error") and "kernel_ms" not in row:
            lines.append((row["op"], row.get("case", ""), "FAILED", "", "", "", "", "", row["error"][:60]))
            continue
        if "kernel_ms" not in row:
            lines.append((row["op"], row["case"], "", "", "", "", "", "", json.dumps(row["parity"])))
            continue
        target = row["bandwidth_target"]
        lines.append((
            row["op"], row["case"], f"{row['kernel_ms']:.3f}",
            f"{row['torch_ms']:.3f}" if row["torch_ms"] else "-",
            f"{row['speedup_vs_torch']:.2f}x" if row["speedup_vs_torch"] else "-",
            f"{row['bandwidth_GBps']:.0f}", f"{row['fraction_of_copy']:.2f}" if row["fraction_of_copy"] else "-",
            "-" if target is None else (f">={target:.2f} " + ("met" if row["meets_bandwidth_target"] else "MISSED")),
            json.dumps(row["parity"])[:70],
        ))
    widths = [max(len(h), *(len(str(line[i])) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the mattrt CUDA kernels (needs a GPU and CuPy).")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per measurement (median reported)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/kernels-<gpu>-<date>.json)")
    args = parser.parse_args(argv)

    np, cupy, torch = check_environment()
    ensure_mattrt_importable()
    env = environment(np, cupy, torch)
    print(f"{env['gpu']} (sm_{env['compute_capability'].replace('.', '')}), driver {env['driver_version']}, "
          f"CuPy {env['cupy']}, torch {env['torch']} (CUDA {env['torch_cuda']})", flush=True)

    bench = Bench(np, cupy, torch, args.repeats, args.quick)
    started = time.time()
    # One stream for everything: CuPy launches on torch's current stream, so events time both.
    stream_ptr = torch.cuda.current_stream().cuda_stream
    stream = cupy.cuda.Stream.null if stream_ptr == 0 else cupy.cuda.ExternalStream(stream_ptr)
    with cupy.cuda.Device(0), stream:
        bench.guarded("copy bandwidth", bench.copy)
        for name in ("max_unpool", "attention", "torch_ops_cuda", "fusion", "stitch", "preprocess", "morphology",
                     "guided_filter"):
            bench.guarded(name, getattr(bench, name))

    print()
    print_table(bench.rows)
    timed = [r for r in bench.rows if "kernel_ms" in r]
    summary = {
        "copy": getattr(bench, "copy_info", None),
        "failed_ops": sorted({r["op"] for r in bench.rows if r.get("error")}),
        "bandwidth_targets_missed": [f"{r['op']} {r['case']}" for r in timed if r["meets_bandwidth_target"] is False],
        "slower_than_torch": [f"{r['op']} {r['case']}" for r in timed if r["faster_than_torch"] is False],
        "wall_s": round(time.time() - started, 1),
    }
    print(f"\nbandwidth targets missed: {summary['bandwidth_targets_missed'] or 'none'}")
    print(f"slower than the PyTorch sequence: {summary['slower_than_torch'] or 'none'}")
    print(f"failed: {summary['failed_ops'] or 'none'}")

    gpu_slug = re.sub(r"[^A-Za-z0-9]+", "-", env["gpu"]).strip("-").lower()
    path = args.out or RESULTS / f"kernels-{gpu_slug}-{env['date'][:10]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env, "settings": {"repeats": args.repeats, "quick": args.quick,
                                                "timing": "CUDA events, 3 warmup calls, median of repeats"},
               "summary": summary, "results": bench.rows}
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {path}")
    return 1 if summary["failed_ops"] else 0


if __name__ == "__main__":
    sys.exit(main())
