"""`mattrt infer`: alpha mattes, cutouts and composites for image files (jobs/infer.py), with a
model, an export or a server, through the deployment chain (deploy/)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mattrt.commands.arguments import (
    add_deployment_arguments,
    add_server_arguments,
    command_log,
    deployment_request,
    non_negative_int,
    positive_float,
    positive_int,
    server_options,
)
from mattrt.commands.command import Command
from mattrt.deploy.plan import DeploymentRequest, open_pipeline
from mattrt.errors import InputError
from mattrt.jobs.infer import InferOptions, SummaryNotWritten, run_inference
from mattrt.runtime.pipeline import DEFAULT_MAX_PIXELS
from mattrt.runtime.refine import REFINE_METHODS

DESCRIPTION = (
    "Compute alpha mattes with the tiled pipeline: semantic pass on a fixed canvas, detail stage on "
    "overlapping tiles at full resolution, fusion. Writes OUT/<stem>_<output>.png and OUT/summary.json."
)


def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    add_deployment_arguments(p, source_required=False)
    add_server_arguments(p)
    add_pipeline_arguments(p)
    add_image_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs and summary")
    p.add_argument("--skip-existing", action="store_true",
                   help="resume: keep outputs that the earlier summary records from the same settings (listed as "
                        "skipped) and process the rest")
    p.add_argument("--summary", type=Path, metavar="FILE", help="JSON summary path (default: OUT/summary.json)")
    progress = p.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_const", const=True, help="always show progress bars")
    progress.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="never show progress bars")
    p.set_defaults(progress=None)


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """How the pipeline runs: tiling, scales, pixel work, the image size limit (infer, batch)."""
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
    p.add_argument("--refine", choices=REFINE_METHODS,
                   help="imported networks whose output is alpha (e.g. ISNet): the full-resolution refinement of their "
                        "alpha where it is uncertain (default: the model card's); none keeps the network's own "
                        "upsampled alpha")
    p.add_argument("--max-pixels", type=positive_int, metavar="N",
                   help="refuse images with more pixels (decompression-bomb guard; default: 200 megapixels)")


def add_image_arguments(p: argparse.ArgumentParser) -> None:
    """What is written per image: alpha, cutout or composite, bit depth, an input's own alpha (infer, batch)."""
    p.add_argument("--output", choices=("alpha", "rgba", "composite"), default="alpha",
                   help="alpha matte (default), RGBA cutout with estimated foreground colours, or composite")
    p.add_argument("--background", metavar="COLOR|IMAGE",
                   help="composite background: white (default), black, #RRGGBB, R,G,B, or an image file")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), help="output bit depth (default: the input's)")
    p.add_argument("--input-alpha", choices=("ignore", "flatten", "multiply", "error"), default="ignore",
                   help="an input's own alpha channel: ignore it (default), flatten the image over white before "
                        "matting, multiply it into the predicted alpha, or treat such inputs as errors")


def pipeline_request(args: argparse.Namespace, *, threads: int | None, **fields) -> DeploymentRequest:
    """The DeploymentRequest of add_deployment_arguments', add_server_arguments' and
    add_pipeline_arguments' options (infer, batch); `fields` override request fields."""
    pipeline_options = dict(margin=args.margin, semantic_scale=args.semantic_scale, max_pixels=args.max_pixels,
                            refine=args.refine,
                            detail_scale=None if args.detail_scale == 1.0 else args.detail_scale,
                            pixel_ops=None if args.pixel_ops == "auto" else args.pixel_ops)
    backend_options = dict(threads=threads, channels_last=args.channels_last, kernels=args.kernels)
    tiling = dict(overlap=args.overlap, batch=args.batch)
    if args.url is not None:
        # The server tiles: overlap and batch travel as request parameters; what its repository
        # fixed is refused by the chain (deploy/plan.py), never ignored.
        backend_options.update(server_options(args), **tiling)
    else:
        if args.model is None and args.artifacts is None:
            raise InputError("give a registered model (--model NAME), an export directory (--artifacts DIR), or a "
                             "server (--backend triton --url HOST:PORT)")
        pipeline_options.update(tiling, detail_scale=args.detail_scale, pixel_ops=args.pixel_ops,
                                max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    return deployment_request(args, tile_size=args.tile, backend_options=backend_options,
                              pipeline_options=pipeline_options, **fields)


def build_pipeline(args: argparse.Namespace):
    """The Pipeline the arguments describe (errors name what is missing or inconsistent)."""
    return open_pipeline(pipeline_request(args, threads=args.threads), log=command_log(args))


def run_infer(args: argparse.Namespace) -> int:
    pipeline = build_pipeline(args)
    options = InferOptions(
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
        summary = run_inference(pipeline, args.inputs, args.out, options, summary_path=args.summary)
    except SummaryNotWritten as exc:
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


COMMANDS = {"infer": Command(add_infer_arguments, run_infer, DESCRIPTION)}
