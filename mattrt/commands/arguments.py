"""What several commands share: the value types of options (each refuses a bad value with an
argparse error that says what was expected: argparse turns it into `--option: message`), the
options that name a deployment (a model or export, the backend to run it on, a server) and turn
into a DeploymentRequest, and the options that make precision variants."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from mattrt.calibration.calibrate import CALIBRATION_METHODS, DEFAULT_CALIBRATION_BATCH
from mattrt.calibration.variants import add_precisions
from mattrt.deploy.choice import AUTO
from mattrt.deploy.plan import DeploymentRequest
from mattrt.deploy.steps import CALIBRATION_RECIPE, calibration_recipe
from mattrt.engines.backends import backend_names, run_precisions
from mattrt.manifest import MANIFEST_FILE, Manifest
from mattrt.models.checkpoints import parse_checkpoint


def whole_number(minimum: int, what: str | None = None, unit: str = "") -> Callable[[str], int]:
    """A type accepting whole numbers >= minimum. With `what` (and `unit`) the messages name them:
    "tile batch must be at least 1, got 0"; without, they say what was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            prefix = f"{what}: " if what else ""
            raise argparse.ArgumentTypeError(f"{prefix}expected a whole number, got {text!r}") from None
        if value < minimum:
            if what:
                message = f"{what} must be at least {minimum}{' ' + unit if unit else ''}, got {value}"
            else:
                message = f"expected {'a positive number' if minimum == 1 else f'at least {minimum}'}, got {value}"
                message = message if minimum != 0 else f"expected zero or more, got {value}"
            raise argparse.ArgumentTypeError(message)
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


positive_int = whole_number(1)
non_negative_int = whole_number(0)


# -- a deployment -----------------------------------------------------------------------------------
def add_deployment_arguments(p: argparse.ArgumentParser, *, several: bool = False, source_required: bool = True,
                             help_overrides: dict[str, str] | None = None) -> None:
    """--model/--artifacts, --checkpoint, --backend, --device, --precision, --threads, --cache-dir.
    several: --backend, --device, --precision and --threads take one or more values and default
    to None (`mattrt bench` runs every value given); source_required: --model or --artifacts must
    be given; help_overrides: option dest -> help text."""
    helps = {
        "backend": "auto (default): tensorrt where a GPU and TensorRT exist, torch on CUDA where a GPU exists "
                   "without TensorRT; on the CPU onnxruntime or openvino, and without --precision also the precision "
                   "(fp32, bf16, or int8 where the graphs have it), measured on first use within fidelity bounds "
                   "and kept in the artifact cache; it prints which it chose and why",
        "device": "default: what --backend auto chooses, else the backend's first device (cpu for torch and "
                  "onnxruntime)",
        "precision": "fp32 (the default of an explicit --backend; --backend auto on the CPU may pick another "
                     "when none is given); fp16 (torch, or FP16 graphs); bf16 (openvino: the fp32 graphs in bfloat16, "
                     "CPUs with native bf16); int8 (INT8 graphs: for --model, calibrated in the cache on synthetic "
                     "samples, or for an imported model as its card says: photographs by default)",
        "threads": "torch and onnxruntime intra-op threads (default: the cores this process may use)",
        **(help_overrides or {}),
    }
    many = {"nargs": "+", "default": None} if several else {}
    source = p.add_mutually_exclusive_group(required=source_required)
    source.add_argument("--model", metavar="NAME",
                        help="registered or imported model (see `mattrt models --all`); backends that run ONNX "
                             "graphs or engines get them from the artifact cache (exported or normalised once, then "
                             "reused)")
    source.add_argument("--artifacts", type=Path, metavar="DIR", help="export directory written by `mattrt export`")
    p.add_argument(
        "--checkpoint", action="append", metavar="PATH|PART=PATH",
        help="weights for --model: one file, or PART=PATH once per part of models shipped in several files",
    )
    p.add_argument("--backend", choices=(AUTO, *backend_names()), help=helps["backend"],
                   **({"default": AUTO} | many))
    p.add_argument("--device", choices=("cpu", "cuda"), help=helps["device"], **many)
    p.add_argument("--precision", choices=run_precisions(), help=helps["precision"], **({"default": None} | many))
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


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Triton client's options from add_server_arguments' (the key from $MATTRT_TRITON_KEY)."""
    return dict(protocol=args.protocol, transfer=args.transfer, shm=args.shm,
                api_key=os.environ.get("MATTRT_TRITON_KEY"))


def command_log(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress messages of a command, on stderr, prefixed with its name."""
    return lambda message: print(f"mattrt {args.command}: {message}", file=sys.stderr)


def deployment_request(args: argparse.Namespace, *, backend_options: Mapping[str, Any] | None = None,
                       pipeline_options: Mapping[str, Any] | None = None, **fields) -> DeploymentRequest:
    """The DeploymentRequest add_deployment_arguments' (and add_server_arguments') options name;
    `fields` set or override request fields (tile_size, backend, ...)."""
    values = dict(
        model=args.model, artifacts=args.artifacts, url=getattr(args, "url", None),
        checkpoint=parse_checkpoint(args.checkpoint), backend=args.backend, device=args.device,
        precision=args.precision, cache_dir=args.cache_dir,
        backend_options=dict(backend_options or {}), pipeline_options=dict(pipeline_options or {}),
    )
    values.update(fields)
    return DeploymentRequest(**values)


# -- precision variants -------------------------------------------------------------------------------
def add_precision_arguments(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """--precision, --calibration, --calibration-method and friends (`mattrt export`, `mattrt precision`)."""
    group = parser.add_argument_group("precision variants (FP16 / INT8 Q/DQ graphs)")
    group.add_argument("--precision", action="append", default=None, required=required, metavar="fp16|int8",
                       help="also write this precision's graphs (repeat or comma-separate: --precision fp16,int8)")
    group.add_argument("--calibration", default=None, metavar="DIR|synthetic[:N]|photographs",
                       help="INT8 calibration / FP16 measurement images: a folder, N generated samples, or the "
                            "photographs scikit-image bundles (default: the model's recipe: synthetic = 16 samples of "
                            "data.synthetic seed 1 for registered models, an imported model's card [calibration], "
                            "photographs when it has none)")
    group.add_argument("--calibration-method", default=None, choices=CALIBRATION_METHODS,
                       help="INT8 activation ranges: entropy (KL divergence), percentile (99.999, or the card's) or "
                            "max (default: the model's recipe: entropy unless an imported model's card says otherwise)")
    group.add_argument("--calibration-samples", type=int, default=128,
                       help="most samples (tiles / canvases) per stage used for calibration (default 128)")
    group.add_argument("--calibration-batch", type=int, default=DEFAULT_CALIBRATION_BATCH,
                       help="samples per calibration step; a stage with fewer samples calibrates them as one "
                            "smaller batch, noted in the log and the manifest (default 8)")


def apply_precision_arguments(args: argparse.Namespace, directory: str | Path) -> None:
    """Add the precision variants add_precision_arguments' options ask for to an export directory
    (nothing without --precision)."""
    if not getattr(args, "precision", None):
        return
    has_manifest = (Path(directory) / MANIFEST_FILE).is_file()  # else add_precisions says what is wrong
    # the model's recipe: registered models synthetic/entropy, an imported model its card's
    recipe = calibration_recipe(Manifest.load(directory)) if has_manifest else dict(CALIBRATION_RECIPE)
    method = args.calibration_method or recipe["method"]
    add_precisions(directory, args.precision, calibration=args.calibration or recipe["calibration"], method=method,
                   max_samples=args.calibration_samples, batch=args.calibration_batch,
                   force=getattr(args, "force", False),
                   percentile=recipe.get("percentile") if method == recipe["method"] else None,
                   keep_float=recipe.get("keep_float", ()))


__all__ = ["add_deployment_arguments", "add_precision_arguments", "add_server_arguments", "apply_precision_arguments",
           "command_log", "deployment_request", "non_negative_int", "positive_float", "positive_int", "server_options",
           "whole_number"]
