"""Fidelity of an export's precision variants: the full pipeline per precision, against ground
truth and against FP32.

    report = fidelity_report("exports/aim_synthetic", data="synthetic:24")
    write_figure(report_images, "fidelity.png")

For every graph variant the manifest lists for all stages (fp32 first), the runtime's
`Pipeline` over onnxruntime sessions of that variant's stage graphs (letterboxed semantic
pass, tiled detail pass, stitching, fusion) produces each image's alpha. Variants: "fp32",
"fp16", "int8" (the TensorRT-form Q/DQ graph, `files["int8"]`, run by onnxruntime: what TensorRT
computes, up to its kernels' rounding) and "int8_cpu" (onnxruntime's CPU INT8 graph,
`backend_files["onnxruntime"]["int8"]`, opened exactly as `mattrt infer --precision int8` opens
it). Figures:
- against the ground truth (calibration.metrics.evaluate: SAD, MSE, gradient, connectivity on
  the whole image, and over the unknown band of a trimap from the ground truth);
- against FP32: delta SAD % = 100 (SAD_p - SAD_fp32) / SAD_fp32 of the set's summed SAD against
  the ground truth (signed; the targets compare its absolute value), the stricter
  "SAD to FP32 %" = 100 sum|alpha_p - alpha_fp32| / sum|alpha_fp32 - gt| (an upper bound of
  |delta SAD %|), max abs difference and PSNR of alpha_p against alpha_fp32.
Ground truth: synthetic data carries it; a folder needs `images/` and `alpha/` sub-folders with
the same file stems (the layout `mattrt synth` writes); a folder of images alone gets the FP32
comparison only.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mattrt.calibration.feeds import DEFAULT_SYNTHETIC_SIZE, FIDELITY_SEED, iter_samples, parse_data_source
from mattrt.calibration.int8_cpu import CPU_INT8_BACKEND
from mattrt.data.synthetic import default_trimap_radius, make_trimap
from mattrt.engines.onnxruntime.engine import OnnxRuntimeEngine, SessionLoader, open_artifacts
from mattrt.errors import InputError
from mattrt.figures import grey, heat_map, image_grid
from mattrt.imageio import list_images, read_alpha, read_image
from mattrt.manifest import Manifest
from mattrt.metrics import evaluate, mean_metrics
from mattrt.runtime.artifacts import ModelSpec
from mattrt.runtime.pipeline import Pipeline

TARGETS = {"fp16": 0.5, "int8": 3.0, "int8_cpu": 3.0}  # |delta SAD %| vs FP32 the project aims for
VARIANTS = ("fp32", "fp16", "int8", "int8_cpu")
CPU_INT8 = "int8_cpu"
FIGURE_ROWS = 4


@dataclass
class EvalImage:
    name: str
    image: np.ndarray  # H x W x 3 uint8/uint16
    alpha: np.ndarray | None  # H x W float32 ground truth


def data_source(data: str | Path, *, seed: int | None = None, size: tuple[int, int] | None = None):
    return parse_data_source(data, seed=FIDELITY_SEED if seed is None else seed,
                             size=DEFAULT_SYNTHETIC_SIZE if size is None else size)


def evaluation_images(data: str | Path, *, seed: int | None = None, size: tuple[int, int] | None = None) -> list[EvalImage]:
    """Images (with ground truth where there is some) of 'synthetic[:N]' or a folder."""

    source = data_source(data, seed=seed, size=size)
    if source.kind == "synthetic":
        return [EvalImage(f"synthetic-{source.seed}-{i:04d}-{s.kind}-{s.variant}", s.image, s.alpha)
                for i, s in enumerate(iter_samples(source))]

    folder = source.folder
    image_folder, alpha_folder = folder / "images", folder / "alpha"
    if image_folder.is_dir():
        images = list_images(image_folder)
        alphas = {p.stem: p for p in list_images(alpha_folder)} if alpha_folder.is_dir() else {}
    else:
        images, alphas = list_images(folder), {}
    if not images:
        raise InputError(f"{folder} holds no images (directly, or under images/)")
    result = []
    for path in images:
        try:
            rgb = read_image(path).rgb
            alpha = read_alpha(alphas[path.stem]) if path.stem in alphas else None
        except OSError as exc:
            raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
        if alpha is not None and alpha.shape != rgb.shape[:2]:
            raise InputError(f"{alphas[path.stem]}: alpha is {alpha.shape[1]}x{alpha.shape[0]}, "
                             f"the image {rgb.shape[1]}x{rgb.shape[0]}")
        result.append(EvalImage(path.stem, rgb, alpha))
    return result


def variant_graphs(manifest, variant: str) -> dict[str, str] | None:
    """stage -> graph file of a variant (see the module docstring), None unless every stage has one."""
    if variant == CPU_INT8:
        files = {e.name: e.backend_files.get(CPU_INT8_BACKEND, {}).get("int8") for e in manifest.stages}
    else:
        files = {e.name: e.files.get(variant) for e in manifest.stages}
    return files if all(files.values()) else None


def available_precisions(directory: str | Path) -> list[str]:
    """The variants (VARIANTS) whose graphs every stage of the export has."""
    manifest = Manifest.load(directory)
    found = [variant for variant in VARIANTS if variant_graphs(manifest, variant) is not None]
    if "fp32" not in found:
        raise InputError(f"{directory}: the export has no fp32 graphs for every stage; fidelity compares against them")
    return found


def open_variant(directory: str | Path, variant: str, *, batch: int = 4, threads: int | None = None) -> Pipeline:
    """A Pipeline over a variant's graphs. "int8_cpu" (and fp32, fp16) through the onnxruntime
    backend as `mattrt infer` opens it; "int8" over `files["int8"]` even where the backend runs
    the CPU graph instead."""
    directory = Path(directory)
    manifest = Manifest.load(directory)
    graphs = variant_graphs(manifest, variant)
    if graphs is None:
        raise InputError(f"{directory} has no {variant} graph for every stage")
    precision = "int8" if variant == CPU_INT8 else variant
    if variant == CPU_INT8 or all(e.file_for(variant, CPU_INT8_BACKEND) == graphs[e.name] for e in manifest.stages):
        spec, engines = open_artifacts(directory, precision=precision, threads=threads)
        pipeline = Pipeline(spec, engines, batch=batch)
        opened = {name: engine.loader.path.name for name, engine in pipeline.engines.items()}
        if opened != graphs:
            raise InputError(f"{directory}: onnxruntime opened {opened} for {variant}, the manifest names {graphs}")
        return pipeline
    spec = ModelSpec.from_manifest(manifest, source=str(directory))
    engines = {
        entry.name: OnnxRuntimeEngine(SessionLoader(directory / graphs[entry.name], threads=threads), name=entry.name,
                                      precision=precision, max_batch=int(manifest.max_batch),
                                      inputs=tuple(t.meta() for t in entry.inputs),
                                      outputs=tuple(t.meta() for t in entry.outputs))
        for entry in manifest.stages
    }
    return Pipeline(spec, engines, batch=batch)


def run_precision(directory: str | Path, precision: str, images: Sequence[EvalImage], *, batch: int = 4,
                  threads: int | None = None) -> tuple[list[np.ndarray], float]:
    """Alphas of every image through the full pipeline over a variant's graphs, and the seconds spent."""
    started = time.perf_counter()
    alphas = []
    with open_variant(directory, precision, batch=batch, threads=threads) as pipeline:
        for item in images:
            alphas.append(pipeline.run(item.image).alpha)
    return alphas, time.perf_counter() - started


def _variant_summary(entry) -> dict:
    """How each reduced-precision graph of a stage was made (from the manifest's records)."""
    summary = {}
    for precision in ("fp16", "int8", CPU_INT8):
        record = entry.parity.get(precision) if isinstance(entry.parity, dict) else None
        if not isinstance(record, dict):
            continue
        details = record.get(precision, {})
        if precision == CPU_INT8:
            summary[precision] = {"calibration_data": record.get("calibration_data"), "method": details.get("method"),
                                  "ranges": details.get("ranges"), "quantised_ops": details.get("quantised_ops"),
                                  "excluded_nodes": len(details.get("unquantised", [])), "qdq": details.get("qdq"),
                                  "stage_error_vs_fp32": record.get("vs_fp32")}
            continue
        plan = details.get("unquantised", details) if precision == "int8" else details
        item = {"calibration_data": record.get("calibration_data"),
                "excluded_groups": plan.get("excluded_groups"),
                "excluded_nodes": len(plan.get("excluded_nodes", [])),
                "stage_error_vs_fp32": record.get("vs_fp32")}
        if precision == "int8":
            item.update(method=details.get("method"), qdq=details.get("qdq"))
        summary[precision] = item
    return summary


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_number(v) for v in value]
    return value


def fidelity_report(directory: str | Path, data: str | Path = "synthetic:24", *, precisions: Sequence[str] | None = None,
                    batch: int = 4, threads: int | None = None, seed: int | None = None,
                    log: Callable[[str], None] = lambda m: None) -> tuple[dict, list[EvalImage], dict[str, list[np.ndarray]]]:
    """(report dict, the images, {precision: alphas}); see the module docstring."""

    directory = Path(directory)
    manifest = Manifest.load(directory)
    found = available_precisions(directory)
    chosen = found if precisions is None else ["fp32", *[p for p in precisions if p != "fp32"]]
    unknown = [p for p in chosen if p not in VARIANTS]
    if unknown:
        raise InputError(f"unknown precision {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    missing = [p for p in chosen if p not in found]
    if missing:
        raise InputError(f"{directory} has no {', '.join(missing)} graphs (it has {', '.join(found)}); "
                         "add them with `mattrt precision` or `mattrt export --precision`")
    images = evaluation_images(data, seed=seed)
    has_truth = all(item.alpha is not None for item in images)
    alphas: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    for precision in chosen:
        log(f"  {precision}: {len(images)} image(s) through the pipeline")
        alphas[precision], seconds[precision] = run_precision(directory, precision, images, batch=batch, threads=threads)

    reference = alphas["fp32"]
    per_precision: dict[str, dict] = {}
    for precision in chosen:
        rows = []
        for index, item in enumerate(images):
            alpha = alphas[precision][index]
            row: dict = {"name": item.name}
            if item.alpha is not None:
                trimap = make_trimap(item.alpha, default_trimap_radius(item.alpha.shape[::-1]))
                row["vs_gt"] = evaluate(alpha, item.alpha, trimap)
            if precision != "fp32":
                difference = np.abs(alpha.astype(np.float64) - reference[index])
                row["vs_fp32"] = {"sad": float(difference.sum() / 1000.0), "max_abs": float(difference.max()),
                                  "psnr": _psnr(alpha, reference[index]),
                                  "pixels_over_0.1": int((difference > 0.1).sum()), "pixels": int(difference.size)}
            rows.append(row)
        entry: dict = {"seconds": round(seconds[precision], 2), "graphs": variant_graphs(manifest, precision)}
        if has_truth:
            entry["vs_gt_mean"] = mean_metrics([r["vs_gt"] for r in rows])
        if precision != "fp32":
            to_fp32 = [r["vs_fp32"] for r in rows]
            entry["vs_fp32"] = {
                "max_abs": max(r["max_abs"] for r in to_fp32),
                "psnr_mean": float(np.mean([min(r["psnr"], 200.0) for r in to_fp32])),
                "psnr_min": min(r["psnr"] for r in to_fp32),
                "pixels_over_0.1_percent": 100.0 * sum(r["pixels_over_0.1"] for r in to_fp32)
                                           / max(1, sum(r["pixels"] for r in to_fp32)),
            }
            if has_truth:
                sad_p = sum(r["vs_gt"]["sad"] for r in rows)
                sad_ref = sum(r["vs_gt"]["sad"] for r in per_precision["fp32"]["images"])
                sad_to_fp32 = sum(r["sad"] for r in to_fp32)
                entry["vs_fp32"]["delta_sad_percent"] = 100.0 * (sad_p - sad_ref) / sad_ref if sad_ref else math.nan
                entry["vs_fp32"]["sad_to_fp32_percent"] = 100.0 * sad_to_fp32 / sad_ref if sad_ref else math.nan
                target = TARGETS.get(precision)
                if target is not None:
                    entry["target"] = {"abs_delta_sad_percent_at_most": target,
                                       "met": bool(abs(entry["vs_fp32"]["delta_sad_percent"]) <= target)}
        entry["images"] = rows
        per_precision[precision] = entry

    report = {
        "kind": "mattrt fidelity report",
        "model": manifest.model,
        "directory": str(directory),
        "checkpoint_sha256": manifest.checkpoint_sha256,
        "data": data_source(data, seed=seed).describe(),
        "images": len(images),
        "ground_truth": has_truth,
        "pipeline": {"backend": "onnxruntime CPUExecutionProvider", "tile_size": manifest.tile_size,
                     "tile_overlap": manifest.tile_overlap, "semantic_size": manifest.semantic_size,
                     "fusion": manifest.fusion, "batch": batch},
        "graphs": {entry.name: dict(entry.files) for entry in manifest.stages},
        "variants": {entry.name: _variant_summary(entry) for entry in manifest.stages},
        "conventions": "sad, grad, conn divided by 1000 (Deep Image Matting); *_trimap over the unknown band "
                       "of a trimap from the ground truth (radius 1% of the shorter side); delta_sad_percent = "
                       "100 (SAD_p - SAD_fp32) / SAD_fp32 over the set; sad_to_fp32_percent = 100 "
                       "sum|alpha_p - alpha_fp32| / sum|alpha_fp32 - gt|; pixels_over_0.1_percent: pixels whose "
                       "alpha moved by more than 0.1 from FP32 (with the argmax fusion, mostly trimap class "
                       "changes); PSNR in dB for peak 1, null when exact",
        "precisions": per_precision,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
    }
    return _json_number(report), images, alphas


def write_figure(report: dict, images: Sequence[EvalImage], alphas: dict[str, list[np.ndarray]], path: str | Path,
                 rows: int = FIGURE_ROWS) -> Path:
    """A PNG grid: per image (up to `rows`, one per data kind first) the image, the ground truth,
    the FP32 alpha and heat maps of |alpha_p - alpha_fp32| for the other precisions (each map
    scaled to its own maximum, which is printed under it)."""

    if not images:
        raise InputError("no images to draw")
    chosen = _spread_rows(images, rows)
    others = [p for p in alphas if p != "fp32"]
    grid = []
    for index in chosen:
        item = images[index]
        rgb = _as_uint8(item.image)
        fp32 = alphas["fp32"][index]
        differences = {p: np.abs(alphas[p][index].astype(np.float64) - fp32) for p in others}
        row = [(_short(item.name), rgb)]
        if item.alpha is not None:
            row.append(("ground truth", grey(item.alpha)))
        sad_fp32 = report["precisions"]["fp32"]["images"][index].get("vs_gt", {}).get("sad")
        label = "FP32 alpha" + (f"\nSAD {sad_fp32:.3f}" if sad_fp32 is not None else "")
        row.append((label, grey(fp32)))
        for precision in others:
            entry = report["precisions"][precision]["images"][index]
            text = f"|{precision.upper()}-FP32| max {differences[precision].max():.3g}"
            if "vs_gt" in entry:
                text += f"\nSAD {entry['vs_gt']['sad']:.3f}"
            row.append((text, heat_map(differences[precision], max(float(differences[precision].max()), 1e-6))))
        grid.append(row)
    notes = []
    for precision in others:
        summary = report["precisions"][precision].get("vs_fp32", {})
        if "delta_sad_percent" in summary:
            notes.append(f"{precision.upper()}: delta SAD {summary['delta_sad_percent']:+.3f}% vs FP32, "
                         f"SAD to FP32 {summary['sad_to_fp32_percent']:.3f}%, max |diff| {summary['max_abs']:.3g}, "
                         f"mean PSNR {summary['psnr_mean']:.1f} dB over {report['images']} images")
    notes.append("heat maps: black = 0 -> pale yellow = that map's largest |difference| (printed under it)")
    title = f"{report['model']}: precision fidelity (onnxruntime, full tiled pipeline)"
    return image_grid(grid, path, title=title, panel=192, notes=notes)


def _as_uint8(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    scale = 255.0 / 65535.0 if rgb.dtype == np.uint16 else 255.0
    return np.clip(np.rint(rgb.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _short(name: str) -> str:
    parts = name.split("-")
    return "\n".join([" ".join(parts[:3]), " ".join(parts[3:])]) if len(parts) > 3 else name


def _spread_rows(images: Sequence[EvalImage], rows: int) -> list[int]:
    """Indices of up to `rows` images, picking distinct synthetic kinds first."""
    seen, chosen = set(), []
    for index, item in enumerate(images):
        parts = item.name.split("-")
        kind = "-".join(parts[3:]) if len(parts) > 3 else item.name
        if kind not in seen:
            seen.add(kind)
            chosen.append(index)
        if len(chosen) == rows:
            return chosen
    for index in range(len(images)):
        if len(chosen) == rows:
            break
        if index not in chosen:
            chosen.append(index)
    return sorted(chosen)


__all__ = ["EvalImage", "TARGETS", "available_precisions", "evaluation_images", "fidelity_report", "run_precision",
           "write_figure"]
