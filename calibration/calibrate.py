"""The calibration pass both INT8 graphs share: onnxruntime's quantize_static collects the
activation ranges of every tensor CALIBRATED_OPS read or write, once, into a ranges file
(onnxruntime's calibration cache format); each INT8 form is then built from that file alone.
Also the symmetric (zero point 0, per-channel weights) quantize call the TensorRT form is built
with, which with a feed reader is the calibration run itself."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mattrt.calibration.graphs import CPU_INT8_OPS, WEIGHTED_OPS, CalibrationError
from mattrt.errors import InputError
from mattrt.lazy import lazy_import

ort_quantization = lazy_import("onnxruntime.quantization", probe="onnxruntime")


CALIBRATION_METHODS = ("entropy", "percentile", "max")


DEFAULT_CALIBRATION_BATCH = 8


DEFAULT_PERCENTILE = 99.999


# Operator types whose inputs and outputs calibration records: both INT8 graphs' tensors.
CALIBRATED_OPS = tuple(dict.fromkeys((*WEIGHTED_OPS, *CPU_INT8_OPS)))


def calibration_method(method: str):

    table = {"entropy": ort_quantization.CalibrationMethod.Entropy, "percentile": ort_quantization.CalibrationMethod.Percentile,
             "max": ort_quantization.CalibrationMethod.MinMax}
    if method not in table:
        raise InputError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    return table[method]


def check_percentile(method: str, percentile: float | None) -> float | None:
    """The percentile a recipe asks for (None: DEFAULT_PERCENTILE with method "percentile")."""
    if percentile is None:
        return None
    if method != "percentile":
        raise InputError(f"a calibration percentile ({percentile!r}) applies to method 'percentile' only, "
                         f"not {method!r}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < float(percentile) <= 100:
        raise InputError(f"the calibration percentile must be a number in (0, 100], got {percentile!r}")
    return float(percentile)


def symmetric_quantize_options(method: str, percentile: float | None = None) -> dict:
    options = {
        "ActivationSymmetric": True,  # zero point 0: TensorRT's explicit quantization is symmetric
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT takes float biases; an int32 DequantizeLinear would not parse
        "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS),
    }
    if method == "percentile":
        options["CalibPercentile"] = DEFAULT_PERCENTILE if percentile is None else float(percentile)
    return options


class FeedReader:
    """onnxruntime CalibrationDataReader over single-sample feeds, with the range interface
    ort_quantization.quantize_static's strided collection (CalibStridedMinMax) uses."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]):
        self.feeds = list(feeds)
        self.position, self.end = 0, len(self.feeds)

    def get_next(self):
        if self.position >= self.end:
            return None
        feed = self.feeds[self.position]
        self.position += 1
        return dict(feed)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.end = start_index, end_index

    def rewind(self) -> None:
        self.position, self.end = 0, len(self.feeds)


def quiet_quantize(**kwargs) -> None:


    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ort_quantization.quantize_static warns about pre-processing on every call
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # and prints calibration progress
            ort_quantization.quantize_static(**kwargs)
    finally:
        root.setLevel(level)


def quantize_symmetric(fp32_path: Path, ranges: Path, method: str, exclude: Sequence[str], out: Path,
                      reader: FeedReader | None = None, batch: int = DEFAULT_CALIBRATION_BATCH,
                      op_types: Sequence[str] = WEIGHTED_OPS, percentile: float | None = None) -> None:
    """The TensorRT-form graph from a ranges file; with a reader, calibrate first and write the
    ranges of every tensor `op_types` read or write (ort_quantization.quantize_static calibrates the op types it
    quantises; the graph written then is scratch)."""

    options = symmetric_quantize_options(method, percentile)
    if reader is not None:
        options["CalibStridedMinMax"] = batch
    quiet_quantize(
        model_input=str(fp32_path), model_output=str(out), calibration_data_reader=reader,
        quant_format=ort_quantization.QuantFormat.QDQ, op_types_to_quantize=list(op_types), per_channel=True,
        reduce_range=False, activation_type=ort_quantization.QuantType.QInt8, weight_type=ort_quantization.QuantType.QInt8,
        calibrate_method=calibration_method(method), nodes_to_exclude=list(exclude),
        calibration_cache_path=str(ranges), extra_options=options,
    )


def check_ranges(path: Path, stage: str) -> int:

    data = ort_quantization.calibrate.load_tensors_data(path)
    bad = []
    for name, value in data.items():
        low, high = (float(np.asarray(v).ravel()[0]) if np.asarray(v).size else 0.0 for v in value.range_value)
        if not (np.isfinite(low) and np.isfinite(high)):
            bad.append(f"{name} [{low}, {high}]")
    if bad:
        raise CalibrationError(
            f"stage {stage!r}: calibration found NaN or infinite activations in {len(bad)} tensor(s): "
            + ", ".join(bad[:5]) + "; the FP32 graph overflows on these inputs, nothing was written"
        )
    return len(data.keys())


def calibrate_ranges(fp32_path: str | Path, feeds: Sequence[Mapping[str, np.ndarray]], ranges: str | Path, *,
                     method: str = "entropy", batch: int = DEFAULT_CALIBRATION_BATCH, stage: str = "graph",
                     percentile: float | None = None) -> int:
    """Calibrate on `feeds` (single samples, collected `batch` at a time) every tensor that
    CALIBRATED_OPS read or write (both INT8 graphs' tensors: the TensorRT form reads those of the
    weighted layers) and write the ranges file; returns the number of calibrated tensors.
    `percentile` (method "percentile" only) replaces DEFAULT_PERCENTILE."""
    feeds = list(feeds)
    percentile = check_percentile(method, percentile)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"the calibration batch must be a positive integer, got {batch!r}")
    if len(feeds) < batch:
        raise InputError(
            f"stage {stage!r}: {len(feeds)} calibration sample(s), fewer than the calibration batch of {batch}; "
            "give more calibration images or a smaller calibration batch"
        )
    usable = len(feeds) // batch * batch  # strided collection needs whole batches
    if usable < len(feeds):
        feeds = [feeds[i] for i in np.linspace(0, len(feeds) - 1, usable).round().astype(int)]
    ranges = Path(ranges)
    if ranges.exists():
        ranges.unlink()
    with tempfile.TemporaryDirectory(prefix="mattrt-calibration-") as scratch:
        try:
            quantize_symmetric(Path(fp32_path), ranges, method, (), Path(scratch) / "int8.onnx", FeedReader(feeds), batch,
                              op_types=CALIBRATED_OPS, percentile=percentile)
        except (ValueError, RuntimeError) as exc:
            ranges.unlink(missing_ok=True)
            raise CalibrationError(f"stage {stage!r}: onnxruntime calibration failed: {exc}") from exc
    try:
        count = check_ranges(ranges, stage)
    except CalibrationError:
        ranges.unlink(missing_ok=True)
        raise
    os.chmod(ranges, 0o644)
    return count


__all__ = ["CALIBRATED_OPS", "CALIBRATION_METHODS", "DEFAULT_CALIBRATION_BATCH", "DEFAULT_PERCENTILE", "FeedReader",
           "calibrate_ranges", "calibration_method", "check_percentile",
           "check_ranges", "quantize_symmetric", "quiet_quantize",
           "symmetric_quantize_options"]
