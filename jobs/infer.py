"""Batch inference over image files: what `mattrt infer` runs.

Inputs are files, folders (their image files, not recursive) and glob patterns. Each image is
read with mattrt.imageio (PNG, JPEG, WebP, TIFF; 8/16 bit; EXIF orientation applied; greyscale,
palette and CMYK converted to RGB; the decompression-bomb guard), matted by the Pipeline and
written to OUT as

    <stem>_alpha.png       alpha matte, 8 or 16 bit greyscale         (--output alpha)
    <stem>_rgba.png        cutout: foreground colours estimated by blur fusion + alpha (rgba)
    <stem>_composite.png   foreground over a colour or an image        (composite)

Rules: inputs are never written (an OUT that would place an output on an input is refused);
existing outputs are replaced only with overwrite; a failing image is recorded and the others
go on. The summary (also written as JSON) lists per-image timings and every failure.

Output work beside the matting (`InferOptions.overlap_io`, on by default): while image i is read
and matted on the main thread, one helper thread finishes image i-1 (foreground, composite, PNG
encode, write). Measured with benchmarks/host_overlap.py (the figures are in README.md, "Measured
figures"). Reading stays on the main thread: a read that blocks (a FIFO, a slow network file) is
then interrupted by Ctrl-C or SIGTERM as before, and never holds up the previous image's write.
Outputs, records, their order and failures are the same as one image at a time: an image's
record is settled before anything about the next is recorded, and on an interrupt the image
already matted is written and recorded before the summary. Images over OVERLAP_MAX_PIXELS are
finished on the main thread (overlap holds one more image's output in memory).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from mattrt.errors import InputError, MattrtError
from mattrt.imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, LoadedImage, list_images, read_image
from mattrt.imagewrite import alpha_file_bytes, rgb_file_bytes, rgba_file_bytes, write_bytes
from mattrt.runtime.foreground import composite, estimate_foreground
from mattrt.runtime.ops import resize_image

OUTPUT_KINDS = ("alpha", "rgba", "composite")
INPUT_ALPHA_MODES = ("ignore", "flatten", "multiply", "error")
NAMED_COLOURS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}
_GLOB_CHARACTERS = set("*?[")
# What one image's failure may raise: recorded for that image, and the run goes on.
IMAGE_ERRORS = (MattrtError, OSError, ValueError, MemoryError)
OVERLAP_MAX_PIXELS = 50_000_000  # larger images: output work on the main thread (module docstring)


@dataclass
class InferOptions:
    output: str = "alpha"
    background: str | None = None  # colour or image path (composite)
    overwrite: bool = False
    skip_existing: bool = False  # outputs a previous run recorded with the same settings count as done
    bit_depth: int | None = None  # None: the input's bit depth
    input_alpha: str = "ignore"
    max_pixels: int | None = None  # None: imageio's default guard
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    overlap_io: bool = True  # finish the previous image beside the matting of the next (module docstring)


@dataclass
class Failure:
    input: str
    error: str


# -- inputs ---------------------------------------------------------------------------------------
def collect_inputs(specs: Sequence[str]) -> tuple[list[Path], list[Failure]]:
    """Image paths named by files, folders and globs (in the order given, without duplicates),
    and a failure for each spec that names nothing readable."""

    found: list[Path] = []
    failures: list[Failure] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = real_path(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            images = list_images(path)
            if not images:
                failures.append(Failure(spec, f"folder {spec} holds no {', '.join(IMAGE_SUFFIXES)} files"))
            for image in images:
                add(image)
        elif path.exists() or path.is_symlink():
            add(path)
        elif _GLOB_CHARACTERS & set(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            # Links that lead nowhere (a missing target, a loop) are kept: reading them reports why.
            images = [m for m in matches if (m.is_file() or m.is_symlink()) and m.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                failures.append(Failure(spec, f"pattern {spec!r} matches no image files"))
            for image in images:
                add(image)
        else:
            failures.append(Failure(spec, f"{spec}: no such file or folder"))
    return found, failures


def real_path(path: Path) -> Path:
    """The path with links followed as far as they lead (a link loop gives a path, not an error)."""
    return Path(os.path.realpath(path))


def output_path(out_dir: Path, source: Path, kind: str) -> Path:
    return out_dir / f"{source.stem}_{kind}.png"


def plan_outputs(inputs: Sequence[Path], out_dir: Path, kind: str) -> dict[Path, Path]:
    """input -> output path; refuses outputs that land on an input or on each other."""
    resolved_inputs = {real_path(p): p for p in inputs}
    outputs: dict[Path, Path] = {}
    claimed: dict[Path, Path] = {}
    for source in inputs:
        target = output_path(out_dir, source, kind)
        key = real_path(target)
        if key in resolved_inputs:
            raise InputError(
                f"--out {out_dir} would write {target.name} over the input {resolved_inputs[key]}; "
                "choose another --out (inputs are never overwritten)"
            )
        if key in claimed:
            raise InputError(
                f"inputs {claimed[key]} and {source} would both be written to {target}; "
                "run them separately or rename one"
            )
        claimed[key] = source
        outputs[source] = target
    return outputs


# -- background ---------------------------------------------------------------------------------
def parse_background(value: str | None) -> tuple[float, float, float] | Path:
    """A colour (name, #RGB, #RRGGBB or R,G,B in 0..255) as floats in [0, 1], or an image path."""
    if value is None:
        return (1.0, 1.0, 1.0)
    text = value.strip().lower()
    rgb: tuple[int, ...] | None = None
    if text in NAMED_COLOURS:
        rgb = NAMED_COLOURS[text]
    elif text.startswith("#") and len(text) in (4, 7) and all(c in "0123456789abcdef" for c in text[1:]):
        digits = text[1:]
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        rgb = tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))
    elif text.count(",") == 2 and not Path(value).exists():
        try:
            rgb = tuple(int(v) for v in text.split(","))
        except ValueError:
            rgb = None
        if rgb is None or any(not 0 <= v <= 255 for v in rgb):
            raise InputError(f"background {value!r}: R,G,B values must be whole numbers in 0..255")
    if rgb is not None:
        return tuple(v / 255.0 for v in rgb)  # type: ignore[return-value]
    path = Path(value)
    if path.is_file():
        return path
    raise InputError(
        f"background {value!r} is neither a colour ({', '.join(sorted(NAMED_COLOURS))}, #RRGGBB, R,G,B) "
        "nor an existing image file"
    )


def fit_background(background: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale an RGB background to cover height x width (keeping its aspect) and centre-crop it;
    float32 in [0, 1]."""

    bh, bw = background.shape[:2]
    scale = max(height / bh, width / bw)
    scaled_h, scaled_w = max(height, int(round(bh * scale))), max(width, int(round(bw * scale)))
    resized = resize_image(background, scaled_h, scaled_w)
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


# -- one image ------------------------------------------------------------------------------------
def _flatten_over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    top = np.float32(255 if rgb.dtype == np.uint8 else 65535)
    a = alpha.astype(np.float32)[..., None] / top
    mixed = rgb.astype(np.float32) * a + top * (1.0 - a)
    return np.rint(mixed).astype(rgb.dtype)


@dataclass
class LoadedInput:
    """One input read for matting (read_input), on its way to matte_input and encode_output."""

    source: Any  # a path, or what batch's reader takes
    target: Path
    loaded: LoadedImage
    rgb: np.ndarray
    existing_alpha: np.ndarray | None
    timings: dict[str, float]
    started: float


@dataclass
class MattedImage:
    """One image matted and encoded, not yet written: what `mattrt infer` and `mattrt batch` share
    (they differ only in how the bytes reach the file)."""

    record: dict  # the summary record, without the write's time and the total
    data: bytes  # the output file's bytes
    started: float  # perf_counter() when the image was started


def read_input(source, target: Path, options: InferOptions, *, read: Callable[..., LoadedImage] = read_image,
               started: float | None = None) -> LoadedInput:
    """Read `source` (with `read`: a path by default) and apply --input-alpha flatten/error."""
    timings: dict[str, float] = {}
    started = time.perf_counter() if started is None else started
    max_pixels = options.max_pixels if options.max_pixels is not None else DEFAULT_MAX_PIXELS
    loaded = read(source, max_pixels=max_pixels)
    rgb = loaded.rgb
    existing_alpha = loaded.alpha
    if existing_alpha is not None:
        if options.input_alpha == "error":
            raise InputError(
                f"{source}: has an alpha channel; choose how to treat it with --input-alpha ignore, flatten or multiply"
            )
        if options.input_alpha == "flatten":
            rgb = _flatten_over_white(rgb, existing_alpha)
    timings["read"] = time.perf_counter() - started
    return LoadedInput(source, target, loaded, rgb, existing_alpha, timings, started)


def matte_input(pipeline, item: LoadedInput, options: InferOptions, tile_progress=None):
    """The pipeline's alpha of a read input (--input-alpha multiply applied) and its MattingResult."""
    result = pipeline.run(item.rgb, progress=tile_progress)
    for key, seconds in result.timings.items():
        item.timings[key] = seconds
    alpha = result.alpha
    existing_alpha = item.existing_alpha
    if existing_alpha is not None and options.input_alpha == "multiply":
        alpha = alpha * (existing_alpha.astype(np.float32) / np.float32(255 if existing_alpha.dtype == np.uint8 else 65535))
    return alpha, result


def encode_output(item: LoadedInput, alpha: np.ndarray, result, options: InferOptions, background) -> MattedImage:
    """Foreground or composite where asked and the output file's bytes; the "write" timing holds
    the encoding so far."""
    timings, loaded, rgb, target = item.timings, item.loaded, item.rgb, item.target
    max_pixels = options.max_pixels if options.max_pixels is not None else DEFAULT_MAX_PIXELS
    bit_depth = options.bit_depth or loaded.bit_depth
    out_dtype = np.uint8 if bit_depth == 8 else np.uint16
    step = time.perf_counter()
    if options.output == "alpha":
        pixels = alpha
    else:
        foreground = estimate_foreground(rgb, alpha, out_dtype=out_dtype)
        if options.output == "composite":
            if isinstance(background, Path):
                back = fit_background(read_image(background, max_pixels=max_pixels).rgb, *rgb.shape[:2])
            else:
                back = background
            pixels = composite(foreground, alpha, back, out_dtype=out_dtype)
        else:
            pixels = foreground
    timings["foreground"] = time.perf_counter() - step

    step = time.perf_counter()
    if options.output == "alpha":
        data = alpha_file_bytes(target, pixels, bit_depth=bit_depth)
    elif options.output == "rgba":
        data = rgba_file_bytes(target, pixels, alpha, bit_depth=bit_depth)
    else:
        data = rgb_file_bytes(target, pixels, bit_depth=bit_depth)
    timings["write"] = time.perf_counter() - step
    record = {
        "input": str(item.source),
        "output": str(target),
        "width": loaded.width,
        "height": loaded.height,
        "bit_depth": loaded.bit_depth,
        "format": loaded.format,
        "mode": loaded.mode,
        "orientation": loaded.orientation,
        "input_alpha": None if item.existing_alpha is None else options.input_alpha,
        "tiles": result.plan["tiles"],
        "timings": timings,
    }
    return MattedImage(record, data, item.started)


def compute_image(pipeline, source, target: Path, options: InferOptions, background, tile_progress=None, *,
                  read: Callable[..., LoadedImage] = read_image, started: float | None = None) -> MattedImage:
    """Read `source`, matte it and encode the output for `target`; raises on failure."""
    item = read_input(source, target, options, read=read, started=started)
    alpha, result = matte_input(pipeline, item, options, tile_progress)
    return encode_output(item, alpha, result, options, background)


def finish_record(matted: MattedImage, write_seconds: float) -> dict:
    """The summary record of a written image: the write's time added, the total, rounded timings."""
    timings = dict(matted.record["timings"])
    timings["write"] = timings.get("write", 0.0) + write_seconds
    timings["total"] = time.perf_counter() - matted.started
    return {**matted.record, "timings": {k: round(v, 4) for k, v in timings.items()}}


def write_output(item: LoadedInput, alpha: np.ndarray, result, options: InferOptions, background) -> dict:
    """`mattrt infer`'s end of one image: encode_output, write the file, the summary record."""
    matted = encode_output(item, alpha, result, options, background)
    step = time.perf_counter()
    write_bytes(item.target, matted.data, overwrite=options.overwrite)
    return finish_record(matted, time.perf_counter() - step)


def refuse_existing(target: Path, options: InferOptions) -> None:
    if not options.overwrite and (target.exists() or target.is_symlink()):
        raise InputError(f"{target} already exists; pass --overwrite to replace it")


def check_options(options: InferOptions):
    """Refuse inconsistent options; returns the composite background (None for other outputs)."""
    if options.output not in OUTPUT_KINDS:
        raise InputError(f"unknown output {options.output!r}; choose one of {', '.join(OUTPUT_KINDS)}")
    if options.input_alpha not in INPUT_ALPHA_MODES:
        raise InputError(f"unknown --input-alpha {options.input_alpha!r}; choose one of {', '.join(INPUT_ALPHA_MODES)}")
    if options.bit_depth not in (None, 8, 16):
        raise InputError(f"bit depth must be 8 or 16, got {options.bit_depth!r}")
    if options.background is not None and options.output != "composite":
        raise InputError("--background applies to --output composite only")
    if options.overwrite and options.skip_existing:
        raise InputError("--overwrite redoes every image and --skip-existing keeps finished ones; choose one")
    return parse_background(options.background) if options.output == "composite" else None


# -- the run ---------------------------------------------------------------------------------------
def run_inference(
    pipeline,
    input_specs: Sequence[str],
    out_dir: str | Path,
    options: InferOptions,
    summary_path: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Process every input; returns the summary (also written to summary_path as JSON).

    Everything that can be checked before the first image is: the options, the inputs, that
    OUT and the summary's folder can be written (a file is created there and removed) and that
    an earlier summary may be replaced. An interrupt (Ctrl-C, SIGTERM through the CLI) stops
    after the current image, writes the summary of what finished (marked "interrupted") and
    re-raises. When the summary itself cannot be written (a full disk), the returned summary
    raises SummaryNotWritten, which carries the summary with the per-image results.
    """

    log = log or (lambda message: print(message, file=sys.stderr))
    background = check_options(options)

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} exists and is not a folder")
    inputs, failures = collect_inputs(input_specs)
    targets = plan_outputs(inputs, out_dir, options.output)
    summary_file = Path(summary_path) if summary_path is not None else out_dir / "summary.json"
    if summary_file.is_dir():
        raise InputError(f"--summary {summary_file} is a folder; give a file name")
    if real_path(summary_file) in {real_path(p) for p in inputs}:
        raise InputError(f"the summary {summary_file} would overwrite an input; choose another --summary")
    settings = run_settings(pipeline, options)
    done = _finished_outputs(summary_file, settings, options)
    created: list[Path] = []
    try:
        check_writable(out_dir, "--out", created)
        check_writable(summary_file.parent, "--summary", created)
    except InputError:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise

    if not pipeline.spec.trained:
        log(f"warning: model {pipeline.spec.name!r} runs with untrained weights (no checkpoint): the mattes are not meaningful")


    disable = None if options.progress is None else not options.progress
    records: list[dict] = []
    skipped: list[dict] = []
    interrupted = False
    started = time.perf_counter()
    with pipeline, tqdm(total=len(inputs), desc="images", unit="img", disable=disable, file=sys.stderr) as bar:
        try:
            _process_inputs(pipeline, inputs, targets, options, background, done, records, skipped, failures, bar,
                            disable)
        except KeyboardInterrupt:
            interrupted = True
    elapsed = time.perf_counter() - started

    summary = {
        "pipeline": pipeline.describe(),
        "options": {
            "output": options.output,
            "background": options.background,
            "bit_depth": options.bit_depth,
            "input_alpha": options.input_alpha,
            "overwrite": options.overwrite,
            "skip_existing": options.skip_existing,
            "max_pixels": options.max_pixels,
        },
        "settings": settings,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "images": records,
        "skipped": skipped,
        "failures": [{"input": f.input, "error": f.error} for f in failures],
        "processed": len(records),
        "failed": len(failures),
        "interrupted": interrupted,
        "seconds": round(elapsed, 3),
        "summary_file": str(summary_file),
    }
    try:
        # Replacing the earlier summary was settled above (--overwrite, --skip-existing, or an empty one).
        write_bytes(summary_file, (json.dumps(summary, indent=2) + "\n").encode(), overwrite=True)
    except InputError as exc:
        summary["summary_file"] = None
        if not interrupted:
            raise SummaryNotWritten(f"the summary was not written: {exc}", summary) from exc
        log(f"the summary was not written: {exc}")
    if interrupted:
        log(f"interrupted: {len(records)} image(s) finished"
            + (f", recorded in {summary_file}" if summary["summary_file"] else ""))
        raise KeyboardInterrupt
    return summary


def _process_inputs(pipeline, inputs, targets, options, background, done, records, skipped, failures, bar,
                    disable) -> None:
    """Every input in order, output work beside the matting where options.overlap_io (module docstring)."""
    actions = []  # (source, target, skipped record | Failure | None: to process), decided as one at a time would
    for source in inputs:
        target = targets[source]
        action = None
        if options.skip_existing and (target.exists() or target.is_symlink()):
            record = done.get(str(target))
            action = record if record is not None and record.get("input") == str(source) else Failure(
                str(source), f"{target} already exists and the earlier summary does not record it from these "
                "settings; pass --overwrite to replace it")
        actions.append((source, target, action))
    helper = (concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mattrt-outputs")
              if options.overlap_io else None)
    writes: list = []  # (source, future) of the previous image's write, not recorded yet

    def settle() -> None:
        while writes:
            source, future = writes.pop(0)
            try:
                records.append(future.result())
            except IMAGE_ERRORS as exc:
                failures.append(Failure(str(source), failure_message(exc)))
            bar.update(1)

    def fail(source, exc) -> None:
        settle()
        failures.append(Failure(str(source), failure_message(exc)))
        bar.update(1)

    try:
        for source, target, action in actions:
            bar.set_postfix_str(source.name, refresh=False)
            if action is not None:
                settle()
                (skipped if isinstance(action, dict) else failures).append(action)
                bar.update(1)
                continue
            try:
                started = time.perf_counter()
                refuse_existing(target, options)
                item = read_input(source, target, options, started=started)
            except IMAGE_ERRORS as exc:
                fail(source, exc)
                continue
            tiles_bar = tqdm(desc="tiles", unit="tile", leave=False, disable=disable, file=sys.stderr)

            def on_tiles(done_tiles: int, total: int, tiles_bar=tiles_bar) -> None:
                tiles_bar.total = total
                tiles_bar.update(done_tiles - tiles_bar.n)

            try:
                alpha, result = matte_input(pipeline, item, options, on_tiles)
            except IMAGE_ERRORS as exc:
                fail(source, exc)
                continue
            finally:
                tiles_bar.close()
            settle()  # the previous image's record comes before this one's
            if helper is not None and item.rgb.shape[0] * item.rgb.shape[1] <= OVERLAP_MAX_PIXELS:
                writes.append((source, helper.submit(write_output, item, alpha, result, options, background)))
                continue
            try:
                records.append(write_output(item, alpha, result, options, background))
            except IMAGE_ERRORS as exc:
                failures.append(Failure(str(source), failure_message(exc)))
            bar.update(1)
        settle()
    except KeyboardInterrupt:
        settle()  # the image already matted is written and recorded, as it would have been before the next began
        raise
    finally:
        if helper is not None:
            helper.shutdown(wait=True)


class SummaryNotWritten(InputError):
    """The images were processed but the summary could not be written (a full disk); `summary`
    holds what it would have said, so the per-image results are not lost."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


# Pipeline facts that do not change an output's pixels: how many tiles go per call, threads, and
# the reasons recorded for automatic choices.
_NOT_OUTPUT_SETTINGS = ("batch", "threads", "selection", "pixel_ops_reason")


def run_settings(pipeline, options: InferOptions) -> dict:
    """What decides an output's pixels: a rerun with equal settings may keep earlier outputs."""
    described = {k: v for k, v in pipeline.describe().items() if k not in _NOT_OUTPUT_SETTINGS}
    chosen = {k: getattr(options, k) for k in ("output", "background", "bit_depth", "input_alpha")}
    return json.loads(json.dumps({"pipeline": described, "options": chosen}))


def _finished_outputs(summary_file: Path, settings: dict, options: InferOptions) -> dict[str, dict]:
    """Output path -> record of the earlier summary that --skip-existing may keep; also refuses to
    replace an earlier summary without --overwrite or --skip-existing, unless it recorded nothing."""
    if not (summary_file.exists() or summary_file.is_symlink()) or options.overwrite:
        return {}
    try:
        previous = json.loads(summary_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        previous = None
    if not isinstance(previous, dict) or not isinstance(previous.get("images"), list):
        raise InputError(f"{summary_file} already exists and is not a summary of `mattrt infer`; "
                         "choose another --summary (or --overwrite to replace it)")
    kept = [r for r in [*previous["images"], *previous.get("skipped", [])] if isinstance(r, dict) and "output" in r]
    if not kept:
        return {}  # an earlier run that finished nothing blocks nothing
    if not options.skip_existing:
        raise InputError(f"{summary_file} already exists; pass --skip-existing to keep the images it finished "
                         "(same settings), --overwrite to redo everything, or choose another --summary")
    earlier = previous.get("settings")
    if earlier != settings:
        changed = setting_differences(earlier if isinstance(earlier, dict) else {}, settings)
        raise InputError(f"--skip-existing: {summary_file} was written with other settings ({changed}); "
                         "pass --overwrite to redo everything, or choose another --out")
    return {str(r["output"]): r for r in kept}


def setting_differences(earlier: dict, now: dict) -> str:
    """The settings that changed, "name old -> new", comma-separated (run_settings' layout)."""
    changes = []
    for group in ("pipeline", "options", *sorted((set(earlier) | set(now)) - {"pipeline", "options"})):
        old, new = earlier.get(group) or {}, now.get(group) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changes.append(f"{key} {old.get(key, 'unrecorded')} -> {new.get(key)}")
    return ", ".join(changes) or "unrecorded settings"


def check_writable(folder: Path, flag: str, created: list[Path]) -> None:
    """Create `folder` if needed (listing what was created) and prove a file can be made in it."""
    missing = [f for f in [folder, *folder.parents] if not f.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {flag} {folder}: {exc.strerror or exc}") from None
    created.extend(reversed(missing))
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".mattrt-probe-")
    except OSError as exc:
        raise InputError(f"{flag} {folder} is not writable ({exc.strerror or exc}); nothing was processed") from None
    os.close(handle)
    os.unlink(probe)


def failure_message(exc: BaseException) -> str:
    """What a failed image's record says (the message of one of IMAGE_ERRORS)."""
    if isinstance(exc, MattrtError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory (try a smaller --batch or --tile, or a --detail-scale below 1)"
    return f"{type(exc).__name__}: {exc}"


__all__ = [
    "IMAGE_ERRORS",
    "INPUT_ALPHA_MODES",
    "Failure",
    "InferOptions",
    "LoadedInput",
    "MattedImage",
    "OUTPUT_KINDS",
    "OVERLAP_MAX_PIXELS",
    "SummaryNotWritten",
    "check_options",
    "check_writable",
    "collect_inputs",
    "compute_image",
    "encode_output",
    "failure_message",
    "finish_record",
    "fit_background",
    "matte_input",
    "output_path",
    "parse_background",
    "plan_outputs",
    "read_input",
    "real_path",
    "refuse_existing",
    "run_inference",
    "run_settings",
    "setting_differences",
    "write_output",
]
