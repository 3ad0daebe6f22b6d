"""`mattrt infer`: alpha mattes, cutouts and composites for image files.

The model/backend/device/precision/threads/cache options are shared with the other commands that
run a model (`add_deployment_arguments`, `deployment_from_args`); export/deploy.py does the work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mattrt.arguments import non_negative_int, positive_float, positive_int
from mattrt.errors import InputError
from mattrt.lazy import lazy_import
from mattrt.manifest import PRECISIONS
from mattrt.runtime import backends

# Bound lazily: they import torch, and registering the command must stay cheap (`mattrt --help`).
checkpoints = lazy_import("mattrt.models.checkpoints")
deploy = lazy_import("mattrt.export.deploy")
cache = lazy_import("mattrt.export.cache")
infer = lazy_import("mattrt.runtime.infer")
pipeline_module = lazy_import("mattrt.runtime.pipeline")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "infer",
        help="matte images (files, folders, globs) with a model or an export directory",
        description=(
            "Compute alpha mattes with the tiled pipeline: semantic pass on a fixed canvas, detail stage on "
            "overlapping tiles at full resolution, fusion. Writes OUT/<stem>_<output>.png and OUT/summary.json."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    add_deployment_arguments(p, source_required=False)
    add_server_arguments(p)
    p.add_argument("--channels-last", action="store_true", help="torch: channels_last memory format")
    p.add_argument("--kernels", action="store_true",
                   help="torch: run max-unpooling and attention pooling with mattrt's custom ops (CuPy kernels on cuda)")
    p.add_argument("--pixel-ops", choices=("auto", "host", "device", "emulate"), default="auto",
                   help="where tile preprocessing, stitching and fusion run: host (NumPy), device (CUDA kernels via "
                        "CuPy), emulate (the kernels' g++ host emulation, slow); auto: device for torch CUDA engines "
                        "when CuPy has a device (default)")
    p.add_argument("--tile", type=positive_int, metavar="T", help="detail tile side (default: the model's; fixed by an export)")
    p.add_argument("--overlap", type=non_negative_int, metavar="O", help="tile overlap in pixels (default: the model's)")
    p.add_argument("--margin", type=non_negative_int, metavar="M",
                   help="pixels at inner tile edges given zero blending weight (default: overlap // 4)")
    p.add_argument("--batch", type=positive_int, metavar="B",
                   help="tiles per detail call (default: the batch a TensorRT plan was tuned for, else 4)")
    p.add_argument("--semantic-scale", type=positive_float, metavar="G",
                   help="global factor: image scale on the semantic canvas (default: fit the canvas)")
    p.add_argument("--detail-scale", type=positive_float, default=1.0, metavar="L",
                   help="local factor: image scale of the detail pass, alpha resampled back (default: 1)")
    p.add_argument("--max-pixels", type=positive_int, metavar="N",
                   help="refuse images with more pixels (decompression-bomb guard; default: 200 megapixels)")
    p.add_argument("--output", choices=("alpha", "rgba", "composite"), default="alpha",
                   help="alpha matte (default), RGBA cutout with estimated foreground colours, or composite")
    p.add_argument("--background", metavar="COLOR|IMAGE",
                   help="composite background: white (default), black, #RRGGBB, R,G,B, or an image file")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), help="output bit depth (default: the input's)")
    p.add_argument("--input-alpha", choices=("ignore", "flatten", "multiply", "error"), default="ignore",
                   help="an input's own alpha channel: ignore it (default), flatten the image over white before "
                        "matting, multiply it into the predicted alpha, or treat such inputs as errors")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs and summary")
    p.add_argument("--skip-existing", action="store_true",
                   help="resume: keep outputs that the earlier summary records from the same settings (listed as "
                        "skipped) and process the rest")
    p.add_argument("--summary", type=Path, metavar="FILE", help="JSON summary path (default: OUT/summary.json)")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_const", const=True, help="always show progress bars")
    progress.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="never show progress bars")
    p.set_defaults(run=run_infer, progress=None)


def add_deployment_arguments(p: argparse.ArgumentParser, *, several: bool = False, source_required: bool = True,
                             help_overrides: dict[str, str] | None = None) -> None:
    """--model/--artifacts, --checkpoint, --backend, --device, --precision, --threads, --cache-dir.
    several: --backend, --device, --precision and --threads take one or more values and default
    to None (`mattrt bench` runs every value given); source_required: --model or --artifacts must
    be given; help_overrides: option dest -> help text."""
    helps = {
        "backend": "auto (default): tensorrt where a GPU and TensorRT exist, torch on CUDA where a GPU exists "
                   "without TensorRT, onnxruntime on the CPU; it prints which it chose and why",
        "device": "default: what --backend auto chooses, else the backend's first device (cpu for torch and "
                  "onnxruntime)",
        "precision": "fp32 (default); fp16 (torch, or FP16 graphs); int8 (INT8 graphs: for --model, calibrated on "
                     "synthetic samples in the cache)",
        "threads": "torch and onnxruntime intra-op threads (default: the cores this process may use)",
        **(help_overrides or {}),
    }
    many = {"nargs": "+", "default": None} if several else {}
    source = p.add_mutually_exclusive_group(required=source_required)
    source.add_argument("--model", metavar="NAME",
                        help="registered model (see `mattrt models --all`); backends that run ONNX graphs or "
                             "engines get them from the artifact cache (exported once, then reused)")
    source.add_argument("--artifacts", type=Path, metavar="DIR", help="export directory written by `mattrt export`")
    p.add_argument(
        "--checkpoint", action="append", metavar="PATH|PART=PATH",
        help="weights for --model: one file, or PART=PATH once per part of models shipped in several files",
    )
    p.add_argument("--backend", choices=(backends.AUTO, *backends.backend_names()), help=helps["backend"],
                   **({"default": backends.AUTO} | many))
    p.add_argument("--device", choices=("cpu", "cuda"), help=helps["device"], **many)
    p.add_argument("--precision", choices=PRECISIONS, help=helps["precision"], **({"default": "fp32"} | many))
    p.add_argument("--threads", type=positive_int, help=helps["threads"], **many)
    p.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="artifact cache (default: $MATTRT_CACHE, else ~/.cache/mattrt)")


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """--url and the Triton client's transfer options (--backend triton)."""
    group = p.add_argument_group("a Triton server (--backend triton; `mattrt serve` starts one)")
    group.add_argument("--url", metavar="HOST:PORT", help="the server's HTTP or gRPC address")
    group.add_argument("--protocol", choices=("http", "grpc"), default="http", help="default: http")
    group.add_argument("--transfer", choices=("raw", "encoded"), default="raw",
                       help="raw pixels, or the file's bytes in and a PNG back (fewer bytes on the wire)")
    group.add_argument("--shm", choices=("none", "system"), default="none",
                       help="system: inputs and mattes through shared memory (same machine; needs the server key "
                            "in $MATTRT_TRITON_KEY)")


def deployment_from_args(args: argparse.Namespace, log=None, tile_size: int | None = None, backend_options=None):
    """The Deployment (export/deploy.py) the shared arguments describe; tile_size: the detail
    tile an export made for --model is fixed at (default: the model's)."""
    log = log or (lambda message: print(f"mattrt {args.command}: {message}", file=sys.stderr))
    return deploy.plan_deployment(
        model=args.model,
        artifacts=args.artifacts,
        url=getattr(args, "url", None),
        checkpoint=checkpoints.parse_checkpoint(args.checkpoint),
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        cache=cache.ArtifactCache(args.cache_dir, log=log),
        export_options={"tile_size": tile_size},
        backend_options=backend_options,
        log=log,
    )


def build_pipeline(args: argparse.Namespace):
    """The Pipeline the arguments describe (errors name what is missing or inconsistent)."""
    options = dict(
        tile_size=args.tile,
        overlap=args.overlap,
        margin=args.margin,
        batch=args.batch,
        semantic_scale=args.semantic_scale,
        detail_scale=args.detail_scale,
        max_pixels=args.max_pixels or pipeline_module.DEFAULT_MAX_PIXELS,
        pixel_ops=getattr(args, "pixel_ops", "auto"),
    )
    if args.url is not None:
        deployment = deployment_from_args(args)
        client = dict(protocol=args.protocol, transfer=args.transfer, shm=args.shm,
                      api_key=os.environ.get("MATTRT_TRITON_KEY"), overlap=args.overlap, batch=args.batch)
        # Options the server decides (its repository fixed them) are refused, not ignored.
        server_side = {"--tile": args.tile, "--margin": args.margin, "--semantic-scale": args.semantic_scale,
                       "--detail-scale": None if args.detail_scale == 1.0 else args.detail_scale,
                       "--threads": args.threads, "--kernels": args.kernels, "--channels-last": args.channels_last,
                       "--pixel-ops": None if args.pixel_ops == "auto" else args.pixel_ops}
        given = [flag for flag, value in server_side.items() if value not in (None, False)]
        if given:
            raise InputError(f"the triton backend tiles on the server (its repository fixed these); drop {', '.join(given)}")
        return deploy.open_pipeline(deployment, client)
    if args.model is None and args.artifacts is None:
        raise InputError("give a registered model (--model NAME), an export directory (--artifacts DIR), or a "
                         "server (--backend triton --url HOST:PORT)")
    backend_options = dict(threads=args.threads, channels_last=args.channels_last,
                           kernels=bool(getattr(args, "kernels", False)))
    deployment = deployment_from_args(args, tile_size=args.tile, backend_options=backend_options)
    return deploy.open_pipeline(deployment, backend_options, **options)


def run_infer(args: argparse.Namespace) -> int:
    pipeline = build_pipeline(args)
    options = infer.InferOptions(
        output=args.output,
        background=args.background,
        overwrite=args.overwrite,
        skip_existing=args.skip_existing,
        bit_depth=args.bit_depth,
        input_alpha=args.input_alpha,
        max_pixels=args.max_pixels,
        progress=args.progress,
    )
    try:
        summary = infer.run_inference(pipeline, args.inputs, args.out, options, summary_path=args.summary)
    except infer.SummaryNotWritten as exc:
        summary, summary_error = exc.summary, str(exc)
    else:
        summary_error = None
    for failure in summary["failures"]:
        error = failure["error"]
        where = "" if error.startswith(failure["input"]) else f"{failure['input']}: "
        print(f"mattrt infer: failed: {where}{error}", file=sys.stderr)
    totals = {}
    for record in summary["images"]:
        for key, seconds in record["timings"].items():
            totals[key] = totals.get(key, 0.0) + seconds
    print(json.dumps({
        "processed": summary["processed"],
        "skipped": len(summary["skipped"]),
        "failed": summary["failed"],
        "seconds": summary["seconds"],
        "seconds_by_step": {k: round(v, 3) for k, v in totals.items()},
        "summary": summary["summary_file"],
    }))
    if summary_error is not None:
        print(f"mattrt infer: error: {summary_error}", file=sys.stderr)
        return 1
    return 1 if summary["failed"] or not (summary["processed"] or summary["skipped"]) else 0
