"""FP16 and INT8 variants of an export directory's stage graphs (TensorRT 11 is strongly typed:
precision lives in the ONNX graph: README.md, "TensorRT").

    add_precisions("exports/aim", ["fp16", "int8"], calibration="synthetic:32", method="entropy")

writes, beside each stage's FP32 graph `<stage>.onnx`:
- `<stage>.fp16.onnx`: mixed precision. Everything runs in FP16 except the nodes measurement
  says need FP32 (below); inputs and outputs stay FP32 (keep_io_types).
- `<stage>.int8.onnx`: explicit Q/DQ for TensorRT: symmetric int8 (zero point 0) activations per
  tensor, per-channel symmetric int8 weights, Q/DQ only on the inputs of weighted layers (Conv,
  ConvTranspose, Gemm, MatMul). Everything else reads the FP32 tensors: no Q/DQ before the final
  sigmoid, in the fusion graph or in the max-unpool index arithmetic (which compares pooled
  values with their windows; quantised copies would tie and move the unpooling positions).
  Weighted layers whose quantisation measurably hurts stay unquantised (below).
- `<stage>.int8_cpu.onnx`: the INT8 graph for onnxruntime's CPU provider (U8S8: uint8
  activations with zero points, int8 per-channel symmetric weights, Q/DQ on the inputs and
  outputs of the weighted layers and of the ops in CPU_INT8_OPS, so that the provider fuses them
  into integer kernels; the TensorRT form runs no faster than FP32 there). Built from the same
  ranges file, with the same weighted layers unquantised and the same FP32 index arithmetic.
  Not a TensorRT graph: TensorRT's explicit quantization needs zero point 0.
- `<stage>.int8.ranges.json`: the calibrated ranges (onnxruntime's calibration cache format) of
  every tensor either INT8 graph quantises (min/max per tensor, clipped by the calibration
  method); `rebuild_int8` (calibration/int8_tensorrt.py) / `rebuild_cpu_int8`
  (calibration/int8_cpu.py) turn the FP32 graph and this file back into the identical INT8
  graphs with no calibration data.
- `<stage>.int8.calib.npz`: the calibration inputs (a bounded, evenly spaced subset).
The manifest lists each new graph under its precision in the stage's `files` (what TensorRT and
the lint read), the CPU graph under `backend_files["onnxruntime"]["int8"]` (what the onnxruntime
backend runs for --precision int8 on either device: backend_files is keyed by backend only; on
a GPU the INT8 path is TensorRT with the symmetric graph, and onnxruntime's CUDA provider is
there for checking, where running the same graph as on the CPU keeps one onnxruntime INT8
result per export), and records per
precision (in the stage's `parity` dictionary, the manifest's free-form per-graph record; the CPU
graph under "int8_cpu") the error against FP32 on the calibration inputs, the FP32 nodes of the
FP16 graph and the calibration settings and files. The fusion graph stays FP32.

One algorithm per module: calibration/fp16.py (FP16 graphs and their FP32 nodes),
calibration/calibrate.py (the calibration pass both INT8 forms share), calibration/int8_tensorrt.py
and calibration/int8_cpu.py (the two INT8 forms), calibration/graphs.py (what they share).

Exclusions, measured per stage (`plan_fp16`, `plan_int8`): build the variant with nothing
excluded, measure the error of the stage outputs against FP32 on the calibration inputs, then
greedily exclude the candidate group that removes the most error (FP16: kept in FP32; INT8: its
weighted layers left unquantised) until the worst output's relative L2 error is at most the
target (FP16 1e-3, INT8 1e-2) or no group removes at least 20% of what is left.
Candidate groups:
- "pool<k> indices": a max-pool whose indices drive a max-unpool (ScatterElements), with the
  nodes that compute its input since the previous pool and its index arithmetic. FP16 rounding
  creates ties and near-ties in the pooling windows, the first-maximum rule then picks other
  positions and the unpooling puts decoder features on other pixels: full-size errors on a few
  pixels. Only exact FP32 pool inputs avoid this, so the group includes their producers.
- "output <name>": the chain from the last weighted layer to each graph output (head conv,
  sigmoid, normalisation).
- "reductions": Softmax, Sigmoid, Reduce*, Div, Exp, Log, Pow, Sqrt nodes (squeeze-and-
  excitation, spatial attention, probability normalisation).
onnxruntime's converter rounds the output of every blocked node to FP16 and back; mattrt
folds those Cast pairs, so consecutive FP32 nodes exchange exact FP32 values.

Calibration inputs come from `calibration.feeds` (the runtime's letterboxed canvases and
tiles of real images); a stage with fewer samples than the calibration batch calibrates them
as one smaller batch (logged, and recorded in the manifest). Failures (no images, non-finite
activations or ranges, a graph that fails the TensorRT lint) raise before anything is written
to the export directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mattrt.calibration import feeds as calibration_feeds
from mattrt.calibration.calibrate import (
    CALIBRATED_OPS,
    DEFAULT_CALIBRATION_BATCH,
    DEFAULT_PERCENTILE,
    calibrate_ranges,
    calibration_method,
    check_percentile,
)
from mattrt.calibration.fp16 import convert_fp16, plan_fp16
from mattrt.calibration.graphs import (
    PRECISIONS,
    WEIGHTED_OPS,
    CalibrationError,
    calib_file,
    cpu_session,
    describe_error,
    graph_file,
    output_errors,
    ranges_file,
    run_feeds,
    save_model_atomic,
    write_manifest_atomic,
)
from mattrt.calibration.int8_cpu import add_cpu_int8
from mattrt.calibration.int8_tensorrt import build_int8, check_qdq, plan_int8
from mattrt.engines.tensorrt import lint
from mattrt.errors import InputError
from mattrt.lazy import lazy_import
from mattrt.manifest import Manifest, check_graph_file, embed_manifest

onnx = lazy_import("onnx", probe="onnxruntime")


# Samples the greedy selections measure on (each trial runs them all).
MEASURE_SAMPLES = 32


DEFAULT_SAVED_SAMPLES = 32


# The rules that decide what a variant graph holds, numbered so that cached variants made under
# older rules are not reused (2: the INT8 plans leave the input layers unquantised).
VARIANT_RULES = 2


def _check_precisions(precisions: Sequence[str]) -> tuple[str, ...]:
    chosen = []
    for value in precisions:
        for item in str(value).split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item == "fp32":
                continue  # the export itself
            if item not in PRECISIONS:
                raise InputError(f"unknown precision {item!r}; choose from fp32, {', '.join(PRECISIONS)}")
            if item not in chosen:
                chosen.append(item)
    return tuple(chosen)


def add_precisions(directory: str | Path, precisions: Sequence[str], *, calibration: str | Path = "synthetic",
                   method: str = "entropy", max_samples: int = 128, batch: int = DEFAULT_CALIBRATION_BATCH,
                   saved_samples: int = DEFAULT_SAVED_SAMPLES, force: bool = False,
                   synthetic_size: tuple[int, int] | None = None, percentile: float | None = None,
                   keep_float: Sequence[str] = (), log: Callable[[str], None] | None = print):
    """Add FP16 and/or INT8 graphs of every stage to an export directory (module docstring);
    returns the updated manifest. Nothing in the directory changes unless every graph is made.
    INT8 only: `percentile` replaces DEFAULT_PERCENTILE (method "percentile"); `keep_float` names
    nodes left unquantised in both INT8 graphs, besides those the measurement leaves (an imported
    model's card: e.g. the output head, whose one-channel logits quantise badly)."""


    log = log or (lambda message: None)
    directory = Path(directory)
    if directory.is_file():
        raise InputError(f"{directory}: give the export directory, not a file")
    manifest = Manifest.load(directory)
    chosen = _check_precisions(precisions)
    if not chosen:
        return manifest
    if "int8" in chosen:
        calibration_method(method)
        percentile = check_percentile(method, percentile)
    keep_float = [str(name) for name in keep_float]
    for entry in manifest.stages:
        for precision in chosen:
            if precision in entry.files and not force:
                raise InputError(
                    f"{directory}: stage {entry.name!r} already has a {precision} graph ({entry.files[precision]}); "
                    "pass --force to replace it"
                )
        if "fp32" not in entry.files:
            raise InputError(f"{directory}: stage {entry.name!r} has no fp32 graph to convert")
    node_names: dict[str, set[str]] = {}
    for entry in manifest.graphs():  # every fp32 graph is rewritten at the end: check them before the work
        if "fp32" in entry.files:
            check_graph_file(entry, directory, entry.files["fp32"])
            if keep_float and entry in manifest.stages:
                graph = onnx.load(str(directory / entry.files["fp32"]), load_external_data=False)
                node_names[entry.name] = {node.name for node in graph.graph.node}
    unknown = [n for n in keep_float if not any(n in names for names in node_names.values())]
    if "int8" in chosen and unknown:
        raise InputError(f"{directory}: the nodes to keep in float {', '.join(map(repr, unknown))} are in none of the "
                         "stage graphs; name nodes of the FP32 graph (the card's calibration.keep_float)")

    source = calibration_feeds.parse_data_source(calibration, **({"size": tuple(synthetic_size)} if synthetic_size else {}))
    started = time.perf_counter()
    log(f"calibration data: {source.describe()}")
    feeds = calibration_feeds.collect_stage_feeds(directory, source, max_samples=max_samples)
    log(f"  recorded {', '.join(f'{s}: {f.recorded} samples' for s, f in feeds.items())} "
        f"({time.perf_counter() - started:.1f} s)")

    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.precision-", dir=directory.parent))
    try:
        written: list[tuple[str, str, object]] = []  # (stage, file, proto)
        cpu_written: list[tuple[str, object]] = []  # (file, proto): onnxruntime's CPU graphs, not for TensorRT
        for entry in manifest.stages:
            fp32_path = directory / entry.files["fp32"]
            stage_feeds = feeds[entry.name]
            samples = stage_feeds.samples
            fp32_model = onnx.load(str(fp32_path))
            names = [o.name for o in fp32_model.graph.output]
            reference = run_feeds(cpu_session(fp32_model), samples)
            measured = subsample_feeds(samples, MEASURE_SAMPLES)
            measured_on = f"{len(measured)} calibration samples spread evenly over the recorded ones"
            for precision in chosen:
                stage_started = time.perf_counter()
                record: dict = {"calibration_data": source.describe(), "samples": len(samples),
                                "samples_recorded": stage_feeds.recorded}
                log(f"  {entry.name} -> {precision}")
                if precision == "fp16":
                    plan = plan_fp16(fp32_model, measured, log=log)
                    proto = convert_fp16(fp32_model, plan.excluded)
                    record["fp16"] = plan.to_dict()
                    record["fp16"]["fp32_nodes"] = len(plan.excluded)
                    record["fp16"]["measured_on"] = measured_on
                else:
                    ranges = staging / ranges_file(entry.name)
                    stage_batch = min(batch, len(samples))  # fewer samples than a batch: one smaller batch
                    if stage_batch < batch:
                        log(f"    {len(samples)} calibration sample(s), fewer than the calibration batch of {batch}: "
                            f"calibrating in batches of {stage_batch}")
                    tensors = calibrate_ranges(fp32_path, samples, ranges, method=method, batch=stage_batch,
                                               stage=entry.name, percentile=percentile)
                    plan = plan_int8(fp32_path, ranges, measured, method=method, log=log)
                    kept = sorted(set(keep_float) & node_names.get(entry.name, set()))
                    excluded = sorted(set(plan.excluded) | set(kept))
                    if kept:
                        log(f"    kept in float as asked: {', '.join(kept)}")
                    proto = build_int8(fp32_path, ranges, staging / graph_file(entry.name, "int8"), method=method,
                                       exclude=excluded)
                    saved = subsample_feeds(samples, saved_samples)
                    stacked = {n: np.concatenate([s[n] for s in saved]) for n in saved[0]}
                    np.savez_compressed(staging / calib_file(entry.name), **stacked)
                    record["int8"] = {
                        "method": method,
                        "percentile": (percentile or DEFAULT_PERCENTILE) if method == "percentile" else None,
                        "kept_float": kept,
                        "calibration_batch": stage_batch,
                        "calibration_batch_requested": batch,
                        "calibrated_tensors": tensors,
                        "calibrated_ops": list(CALIBRATED_OPS),
                        "activations": "int8 symmetric per tensor (zero point 0)",
                        "weights": "int8 symmetric per output channel",
                        "placement": f"inputs of {', '.join(WEIGHTED_OPS)} only",
                        "ranges": ranges_file(entry.name),
                        "tensors": calib_file(entry.name),
                        "tensors_saved": len(saved),
                        "unquantised": plan.to_dict(),
                        "rebuild": "calibration.int8_tensorrt.build_int8(fp32 graph, ranges, out, method=method, "
                                   "exclude=unquantised.excluded_nodes + kept_float)",
                        "qdq": check_qdq(proto),
                    }
                    record["int8"]["unquantised"]["measured_on"] = measured_on
                errors = output_errors(reference, run_feeds(cpu_session(proto), samples), names)
                if not all(e["finite"] for e in errors.values()):
                    raise CalibrationError(f"stage {entry.name!r}: the {precision} graph produces NaN or infinite outputs")
                record["vs_fp32"] = errors
                record["seconds"] = round(time.perf_counter() - stage_started, 1)
                log(f"    {precision} vs fp32: " + ", ".join(describe_error(k, v) for k, v in errors.items()))
                entry.parity[precision] = record
                entry.files[precision] = graph_file(entry.name, precision)
                if precision == "int8":
                    entry.side_files["int8"] = [ranges_file(entry.name), calib_file(entry.name)]
                    cpu_written.append(add_cpu_int8(entry, fp32_path, ranges, staging, method, excluded,
                                                     reference, samples, record, log))
                written.append((entry.name, entry.files[precision], proto))

        report = lint.lint_models((name, proto) for _, name, proto in written)
        if not report.passed:
            raise CalibrationError(report.summary() + "\nnothing was written to " + str(directory))
        log(report.summary())
        for name, proto in [(name, proto) for _, name, proto in written] + cpu_written:
            embed_manifest(proto, manifest)
            onnx.save_model(proto, str(staging / name))
        # Publish: graphs and side files first, the manifest (which names them) last.
        for path in sorted(staging.iterdir()):
            os.replace(path, directory / path.name)
        for entry in manifest.graphs():
            fp32_file = directory / entry.files["fp32"]
            model = onnx.load(str(fp32_file))
            embed_manifest(model, manifest)
            save_model_atomic(model, fp32_file)
        write_manifest_atomic(manifest, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"added {', '.join(chosen)} to {directory} ({time.perf_counter() - started:.1f} s)")
    return manifest


def subsample_feeds(samples: Sequence, limit: int) -> list:
    return calibration_feeds.subsample(list(samples), max(1, limit))


__all__ = ["DEFAULT_SAVED_SAMPLES", "MEASURE_SAMPLES", "VARIANT_RULES", "add_precisions", "subsample_feeds"]
