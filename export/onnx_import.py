"""An imported ONNX network (a model card and its graph) -> an export directory the runtime runs.

    manifest = write_imported_export(model, "exports/isnet")   # model: models/imported.py ImportedModel

The directory is an ordinary mattrt export (manifest.json + semantic.onnx) whose one stage,
"semantic", reads `image` [batch, 3, S, S] float32 (NCHW, normalised as the manifest says) and
returns `alpha` [batch, 1, S, S] float32 in [0, 1]; the manifest's `network` says it is an
alpha network (output "alpha", the card's fit, refine and the card itself). The graph as given
is normalised with onnx/onnxslim tools, never by hand-written graph walks:

1. onnx_graphsurgeon (onnxslim's copy): keep only the card's alpha output (side outputs and the
   nodes only they need are pruned) and sort the nodes topologically (float16 converters append
   their Casts after their consumers, which onnx.checker rejects);
2. onnx.tools.update_model_dims: the batch becomes the dynamic dimension "batch" (where the graph
   allows it: checked below) and a graph of dynamic size gets the canvas size S;
3. onnxslim.slim: constant folding and onnxslim's fusions; for a graph with FP16 weights or
   compute, dtype="fp32" turns FP16 initializers into FP32 and erases the float<->float Casts;
4. onnx_graphsurgeon again: the input is renamed `image` (an NHWC graph gets a Transpose in
   front), the output `alpha` (a Sigmoid after it when the card says the output is logits; a
   Transpose or Unsqueeze when it is [N, H, W, 1] or [N, H, W]).

Parity is measured, not assumed, with onnxruntime on the original file: bundled photographs
(data/photographs.py) and one noise image, fitted to the canvas as the pipeline fits them.
Recorded in the stage's `parity` (and printed): the graph as given through mattrt's onnxruntime
session against a plain session (target 0 within 1e-6), the normalised graph against the
original (target max |diff| <= 1e-3; a graph that computes in FP16 differs from itself by a
similar amount between onnxruntime's optimisation levels, recorded beside it), the mask IoU
at 0.5, and batch 2 against two batch-1 runs. A dynamic batch that onnxruntime cannot run or
that changes the result falls back to batch 1 (max_batch 1), with a note. A normalised graph
more than REFUSE_MAX_ABS from the original is refused: the normalisation broke it.

The TensorRT lint runs on the normalised graph and is recorded in the manifest; a graph
TensorRT's parser cannot take (ConvInteger, com.microsoft operators, ...) still imports and runs
on onnxruntime, and `mattrt build` refuses it naming the nodes and operators.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from mattrt import __version__
from mattrt.data.photographs import photograph
from mattrt.engines.onnxruntime.engine import SessionLoader
from mattrt.engines.tensorrt.lint import lint_models
from mattrt.errors import InputError
from mattrt.export.exporter import (
    DEFAULT_MAX_BATCH,
    ExportError,
    _prepare_destination,
    _publish,
)
from mattrt.export.onnx_check import GraphReport, check_graph, read_graph
from mattrt.lazy import lazy_import
from mattrt.manifest import BATCH_DIM, MANIFEST_FILE, GraphEntry, Manifest, TensorInfo, embed_manifest
from mattrt.models.cards import ModelCard
from mattrt.models.imported import ImportedModel
from mattrt.paths import new_directory
from mattrt.runtime.ops import resize_image

onnx = lazy_import("onnx", probe="onnxruntime")
onnxslim = lazy_import("onnxslim")
gs = lazy_import("onnxslim.third_party.onnx_graphsurgeon")
model_dims = lazy_import("onnx.tools.update_model_dims")
ort = lazy_import("onnxruntime", probe="onnxruntime")

STAGE = "semantic"
GRAPH_FILE = "semantic.onnx"
DEFAULT_CANVAS = 1024  # the canvas of a graph of dynamic size when --semantic-size is not given
DEFAULT_TILE = 512  # the refinement's tiles (no detail network runs on them)
DEFAULT_OVERLAP = 64
TARGET_MAX_ABS = 1e-3  # the normalised FP32 graph against the original (the target)
REFUSE_MAX_ABS = 1e-2  # beyond this the normalisation broke the graph: refused
AS_GIVEN_MAX_ABS = 1e-6  # mattrt's onnxruntime session on the original against a plain session
BATCH_MAX_ABS = 1e-5  # batch 2 against two batch-1 runs of the normalised graph
PARITY_PHOTOGRAPHS = ("astronaut", "chelsea", "coffee")
Log = Callable[[str], None]


def normaliser_versions() -> dict[str, str]:
    """The libraries that shape a normalised graph and its parity record (in manifests and cache keys)."""
    return {"mattrt": __version__, "onnx": onnx.__version__, "onnxslim": onnxslim.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version()}


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def canvas_size(card: ModelCard, report: GraphReport, semantic_size: int | None) -> int:
    """The canvas S: the graph's (or the card's) fixed size, else --semantic-size, else DEFAULT_CANVAS."""
    fixed = report.size or card.input.size
    if semantic_size is not None:
        if isinstance(semantic_size, bool) or not isinstance(semantic_size, int) or semantic_size < 1:
            raise InputError(f"the semantic canvas must be a positive whole number, got {semantic_size!r}")
        if report.size is not None and semantic_size != report.size[0]:
            raise InputError(f"the graph of {card.name!r} is fixed at {report.size[0]} x {report.size[1]}; "
                             f"--semantic-size {semantic_size} needs a graph of dynamic size")
        if card.input.size is not None and semantic_size != card.input.size[0]:
            raise InputError(f"the card of {card.name!r} sets input.size = {list(card.input.size)}; "
                             f"--semantic-size {semantic_size} disagrees with it")
        return semantic_size
    return int(fixed[0]) if fixed is not None else DEFAULT_CANVAS


# -- normalisation --------------------------------------------------------------------------------
def _float_to_other_casts(proto) -> list[str]:
    """Cast nodes that read a float and write another type: onnxslim's dtype="fp32" conversion
    erases every Cast whose input is a float, so those would be lost."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({t.name: t.data_type for t in proto.graph.initializer})
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    found = []
    for node in proto.graph.node:
        if node.op_type == "Cast" and types.get(node.input[0]) in floats:
            target = next((a.i for a in node.attribute if a.name == "to"), None)
            if target not in floats:
                found.append(f"{node.name or node.output[0]!r} (to {onnx.TensorProto.DataType.Name(target)})")
    return found


def _dims(layout: str, batch, channels: int, size: int) -> list:
    return {"NCHW": [batch, channels, size, size], "NHWC": [batch, size, size, channels],
            "NHW": [batch, size, size]}[layout]


def _free_name(graph, name: str, keep) -> None:
    """Rename a tensor other than `keep` that is called `name` (so the interface can take it)."""
    tensor = graph.tensors().get(name)
    if tensor is not None and tensor is not keep:
        tensor.name = f"{name}.inner"


def _wrap_interface(model, card: ModelCard, report: GraphReport, batch, size: int):
    """Rename the input `image` and the output `alpha` (module docstring, step 4)."""
    graph = gs.import_onnx(model)
    source, result = graph.inputs[0], graph.outputs[0]
    _free_name(graph, "image", source)
    if card.input.layout == "NHWC":
        image = gs.Variable("image", dtype=np.float32, shape=[batch, 3, size, size])
        graph.nodes.append(gs.Node("Transpose", "image_to_nhwc", attrs={"perm": [0, 2, 3, 1]},
                                   inputs=[image], outputs=[source]))
        graph.inputs = [image]
    else:
        source.name, source.dtype = "image", np.float32
    _free_name(graph, "alpha", result)
    current = result
    if card.output.activation == "sigmoid":
        activated = gs.Variable("alpha_probability", dtype=np.float32)
        graph.nodes.append(gs.Node("Sigmoid", "alpha_sigmoid", inputs=[current], outputs=[activated]))
        current = activated
    if report.output_layout == "NHWC":
        moved = gs.Variable("alpha_nchw", dtype=np.float32)
        graph.nodes.append(gs.Node("Transpose", "alpha_to_nchw", attrs={"perm": [0, 3, 1, 2]},
                                   inputs=[current], outputs=[moved]))
        current = moved
    elif report.output_layout == "NHW":
        moved = gs.Variable("alpha_nchw", dtype=np.float32)
        if report.opset >= 13:
            axes = gs.Constant("alpha_axes", np.array([1], dtype=np.int64))
            graph.nodes.append(gs.Node("Unsqueeze", "alpha_channel", inputs=[current, axes], outputs=[moved]))
        else:
            graph.nodes.append(gs.Node("Unsqueeze", "alpha_channel", attrs={"axes": [1]}, inputs=[current],
                                       outputs=[moved]))
        current = moved
    _free_name(graph, "alpha", current)
    current.name, current.dtype, current.shape = "alpha", np.float32, [batch, 1, size, size]
    graph.outputs = [current]
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def normalise_graph(proto, card: ModelCard, report: GraphReport, size: int, *, dynamic_batch: bool):
    """The normalised ModelProto and the steps taken (module docstring)."""
    steps = []
    batch = BATCH_DIM if dynamic_batch else 1
    with _quiet():
        graph = gs.import_onnx(proto)
        graph.outputs = [o for o in graph.outputs if o.name == card.output.name]
        graph.cleanup().toposort()
        model = gs.export_onnx(graph)
    if report.dropped_outputs:
        steps.append(f"pruned {len(report.dropped_outputs)} side output(s) and the nodes only they need: "
                     + ", ".join(report.dropped_outputs))
    steps.append("sorted the nodes topologically (onnx_graphsurgeon)")
    del model.graph.value_info[:]  # stale shapes: inference redoes them
    in_dims = _dims(card.input.layout, batch, 3, size)
    out_dims = _dims(report.output_layout, batch, 1, size)
    try:
        model = model_dims.update_inputs_outputs_dims(model, {card.input.name: in_dims}, {card.output.name: out_dims})
    except Exception as exc:
        raise ExportError(f"{card.name}: onnx.tools.update_model_dims could not set the input to {in_dims} and the "
                          f"output to {out_dims}: {str(exc).splitlines()[0][:300]}") from None
    steps.append(f"input {card.input.name!r} -> {in_dims}, output {card.output.name!r} -> {out_dims} "
                 "(onnx.tools.update_model_dims)")
    if report.fp16:
        risky = _float_to_other_casts(model)
        if risky:
            raise ExportError(f"{card.name}: the graph has FP16 parts, and onnxslim's FP32 conversion erases every "
                              f"Cast that reads a float, including {', '.join(risky[:5])}, which turn floats into other "
                              "types; convert the graph to FP32 before importing it")
    try:
        with _quiet():
            model = onnxslim.slim(model, dtype="fp32") if report.fp16 else onnxslim.slim(model)
    except Exception as exc:
        raise ExportError(f"{card.name}: onnxslim failed on the graph ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300] if str(exc) else ''})") from None
    steps.append("onnxslim: constant folding and fusions" + (
        "; FP16 initializers -> FP32 and float<->float Casts erased (dtype='fp32')" if report.fp16 else ""))
    with _quiet():
        model = _wrap_interface(model, card, report, batch, size)
    wrapped = ["input renamed 'image'" if card.input.layout == "NCHW" else "input 'image' NCHW, Transpose to NHWC"]
    if card.output.activation == "sigmoid":
        wrapped.append("Sigmoid appended (the card's output is logits)")
    if report.output_layout != "NCHW":
        wrapped.append(f"{report.output_layout} output moved to NCHW")
    steps.append(", ".join(wrapped) + ", output renamed 'alpha'")
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ExportError(f"{card.name}: the normalised graph fails onnx's checker: {str(exc).splitlines()[0][:300]}") \
            from None
    return model, steps


# -- parity -----------------------------------------------------------------------------------------
def fit_to_canvas(image: np.ndarray, card: ModelCard, size: int) -> np.ndarray:
    """[1, 3, S, S] float32 as the pipeline feeds the semantic stage: the image stretched to the
    square or letterboxed (aspect kept, centred, 0 after normalisation around it), normalised."""
    norm = card.normalization()
    mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
    if card.input.channel_order == "BGR":
        image = image[..., ::-1]
    height, width = image.shape[:2]
    if card.input.fit == "stretch":
        content_h = content_w = size
    else:
        scale = size / max(height, width)
        content_h, content_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    resized = (resize_image(np.ascontiguousarray(image), content_h, content_w) - mean) / std
    canvas = np.zeros((1, 3, size, size), dtype=np.float32)
    top, left = (size - content_h) // 2, (size - content_w) // 2
    canvas[0, :, top:top + content_h, left:left + content_w] = resized.transpose(2, 0, 1)
    return canvas


def parity_feeds(card: ModelCard, size: int) -> list[tuple[str, np.ndarray]]:
    feeds = [(name, fit_to_canvas(photograph(name), card, size)) for name in PARITY_PHOTOGRAPHS]
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    feeds.append(("noise", fit_to_canvas(noise, card, size)))
    return feeds


def _original_feed(x: np.ndarray, card: ModelCard, report: GraphReport) -> np.ndarray:
    x = x.transpose(0, 2, 3, 1) if card.input.layout == "NHWC" else x
    return np.ascontiguousarray(x.astype(np.float16 if report.input.dtype == "float16" else np.float32))


def _as_alpha(y: np.ndarray, card: ModelCard, report: GraphReport) -> np.ndarray:
    """The original output in the normalised graph's form: [N, 1, H, W] float32 probabilities."""
    y = np.asarray(y, dtype=np.float32)
    if report.output_layout == "NHWC":
        y = y.transpose(0, 3, 1, 2)
    elif report.output_layout == "NHW":
        y = y[:, None]
    if card.output.activation == "sigmoid":
        y = 1.0 / (1.0 + np.exp(-y))
    return y


def _plain_session(path: Path, level=None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if level is not None:
        options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a > 0.5, b > 0.5).sum()
    return float(np.logical_and(a > 0.5, b > 0.5).sum() / union) if union else 1.0


def measure_parity(original: Path, normalised: Path, card: ModelCard, report: GraphReport,
                   feeds: list[tuple[str, np.ndarray]], *, dynamic_batch: bool) -> dict:
    """The parity record (module docstring); raises when the normalised graph's output has
    another shape than [1, 1, S, S]."""
    plain = _plain_session(original)
    as_given = SessionLoader(original)()
    mine = SessionLoader(normalised)()
    low = _plain_session(original, ort.GraphOptimizationLevel.ORT_DISABLE_ALL) if report.fp16 else None
    name_in, name_out = card.input.name, card.output.name
    rows, outputs = {}, {}
    for feed_name, x in feeds:
        given = _original_feed(x, card, report)
        reference = plain.run([name_out], {name_in: given})[0]
        again = as_given.run([name_out], {name_in: given})[0]
        alpha = mine.run(["alpha"], {"image": x})[0]
        want = (1, 1, x.shape[2], x.shape[3])
        if alpha.shape != want:
            raise ExportError(f"{card.name}: the normalised graph returned alpha of shape {list(alpha.shape)} on a "
                              f"{list(x.shape)} image; mattrt needs {list(want)} (the card's output {name_out!r} is "
                              "not a one-channel alpha at the input's size)")
        expected = _as_alpha(reference, card, report)
        diff = np.abs(alpha.astype(np.float64) - expected)
        row = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "mask_iou": _iou(alpha, expected),
               "as_given_max_abs": float(np.abs(again.astype(np.float64) - reference).max())}
        if low is not None:
            unoptimised = _as_alpha(low.run([name_out], {name_in: given})[0], card, report)
            row["original_optimisation_levels_max_abs"] = float(np.abs(unoptimised - expected).max())
        rows[feed_name] = row
        outputs[feed_name] = alpha
    worst = max(r["max_abs"] for r in rows.values())
    record = {
        "kind": "imported graph: the normalised FP32 graph against the original file (onnxruntime, CPU)",
        "feeds": {name: (f"bundled photograph, {card.input.fit} to {x.shape[2]} x {x.shape[3]}" if name != "noise"
                         else "uniform noise image (seed 0)") for name, x in feeds},
        "per_feed": rows,
        "max_abs": worst,
        "target_max_abs": TARGET_MAX_ABS,
        "within_target": worst <= TARGET_MAX_ABS,
        "as_given_max_abs": max(r["as_given_max_abs"] for r in rows.values()),
        "as_given_target_max_abs": AS_GIVEN_MAX_ABS,
        "min_mask_iou": min(r["mask_iou"] for r in rows.values()),
    }
    if report.fp16:
        record["original_optimisation_levels_max_abs"] = max(r["original_optimisation_levels_max_abs"]
                                                             for r in rows.values())
        record["original_note"] = ("the original computes in FP16: its own output moves this much between "
                                   "onnxruntime's ORT_DISABLE_ALL and ORT_ENABLE_ALL")
    if dynamic_batch and len(feeds) >= 2:
        (first, x1), (second, x2) = feeds[0], feeds[1]
        try:
            quiet = ort.RunOptions()
            quiet.log_severity_level = 4  # a failure here is expected for some graphs, and reported below
            both = mine.run(["alpha"], {"image": np.concatenate([x1, x2])}, quiet)[0]
            batch_diff = float(max(np.abs(both[0] - outputs[first][0]).max(),
                                   np.abs(both[1] - outputs[second][0]).max()))
            record["batch"] = {"batch2_vs_batch1_max_abs": batch_diff, "ok": batch_diff <= BATCH_MAX_ABS}
        except Exception as exc:  # onnxruntime's errors derive from Exception directly
            record["batch"] = {"error": str(exc).splitlines()[0][:300], "ok": False}
    return record


# -- the export directory ---------------------------------------------------------------------------
def _tensor_infos(values) -> list[TensorInfo]:
    infos = []
    for value in values:
        dims = value.type.tensor_type.shape.dim
        shape = [BATCH_DIM if d.HasField("dim_param") else int(d.dim_value) for d in dims]
        infos.append(TensorInfo(value.name, shape, "float32"))
    return infos


def _describe_parity(record: dict) -> list[str]:
    lines = [f"    {name:<10} max |diff| {row['max_abs']:.2e}  mean {row['mean_abs']:.2e}  "
             f"mask IoU {row['mask_iou']:.5f}"
             + (f"  (original, its own optimisation levels: {row['original_optimisation_levels_max_abs']:.2e})"
                if "original_optimisation_levels_max_abs" in row else "")
             for name, row in record["per_feed"].items()]
    verdict = "within" if record["within_target"] else "OVER"
    lines.append(f"    normalised vs original: max |diff| {record['max_abs']:.2e}, {verdict} the {TARGET_MAX_ABS:g} "
                 f"target; the graph as given through mattrt's session vs a plain onnxruntime session: "
                 f"{record['as_given_max_abs']:.2e}")
    if "batch" in record:
        batch = record["batch"]
        lines.append("    batch 2 vs batch 1: " + (f"max |diff| {batch['batch2_vs_batch1_max_abs']:.2e}"
                                                   if "error" not in batch else f"failed ({batch['error']})"))
    return lines


def _build_graph(model: ImportedModel, proto, report: GraphReport, size: int, max_batch: int, folder: Path,
                 log: Log):
    """Normalise (dynamic batch first, batch 1 when that fails), save to folder/GRAPH_FILE, measure."""
    feeds = parity_feeds(model.card, size)
    dynamic = max_batch > 1
    notes = []
    while True:
        normalised, steps = normalise_graph(proto, model.card, report, size, dynamic_batch=dynamic)
        onnx.save_model(normalised, str(folder / GRAPH_FILE))
        record = measure_parity(model.graph, folder / GRAPH_FILE, model.card, report, feeds, dynamic_batch=dynamic)
        if not dynamic or record.get("batch", {}).get("ok", True):
            break
        log("  a dynamic batch does not hold for this graph (" + (record["batch"].get("error") or
            f"batch 2 differs by {record['batch']['batch2_vs_batch1_max_abs']:.2e}") + "); normalising at batch 1")
        dynamic = False
        notes.append("the dynamic batch failed its check, so the graph runs at batch 1")
    record["steps"] = steps + notes
    record["original"] = {"file": model.graph.name, "sha256": model.sha256, "bytes": model.size,
                          "producer": report.producer, "opset": report.opset, "nodes": report.nodes,
                          "fp16": report.fp16}
    return normalised, record, dynamic


def write_imported_export(model: ImportedModel, out_dir: str | Path, *, semantic_size: int | None = None,
                          tile_size: int | None = None, max_batch: int = DEFAULT_MAX_BATCH, force: bool = False,
                          log: Log | None = print) -> Manifest:
    """Normalise the imported model's graph into the export directory `out_dir` (module
    docstring) and return its manifest. Nothing is published unless every step passes."""
    log = log or (lambda message: None)
    out_dir = Path(out_dir)
    card = model.card
    if tile_size is not None and (isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 1):
        raise InputError(f"the tile size must be a positive whole number, got {tile_size!r}")
    proto = read_graph(model.graph)
    report = check_graph(card, proto, model.graph)
    size = canvas_size(card, report, semantic_size)
    _prepare_destination(out_dir, force)
    started = time.perf_counter()
    log(f"normalising {card.name!r} ({model.graph.name}, {report.nodes} nodes, opset {report.opset}"
        f"{', FP16 parts' if report.fp16 else ''}) at {size} x {size}")
    staging = new_directory(out_dir.parent, f".{out_dir.name}.partial-")
    try:
        normalised, record, dynamic = _build_graph(model, proto, report, size, max_batch, staging, log)
        for step in record["steps"]:
            log(f"  {step}")
        log("  parity with onnxruntime on the original file:")
        for line in _describe_parity(record):
            log(line)
        if record["max_abs"] > REFUSE_MAX_ABS:
            raise ExportError(f"{card.name}: the normalised graph differs from the original by up to "
                              f"{record['max_abs']:.3e} (more than {REFUSE_MAX_ABS:g}): the normalisation changed "
                              "what the network computes, so it was not kept")
        if not record["within_target"]:
            log(f"  note: the normalised graph is {record['max_abs']:.2e} from the original, over the "
                f"{TARGET_MAX_ABS:g} target (recorded in the manifest)")
        lint = lint_models([(GRAPH_FILE, normalised)])
        log("  " + lint.summary().replace("\n", "\n  "))
        if not lint.passed:
            log("  TensorRT's ONNX parser cannot take this graph: it runs on onnxruntime, and `mattrt build` refuses "
                "it naming the nodes above")
        entry = GraphEntry(name=STAGE, inputs=_tensor_infos(normalised.graph.input),
                           outputs=_tensor_infos(normalised.graph.output), spatial_size=size,
                           files={"fp32": GRAPH_FILE}, nodes=len(normalised.graph.node), simplified=True,
                           simplify_note="normalised from the imported graph: " + "; ".join(record["steps"]),
                           parity=record, export_seconds=round(time.perf_counter() - started, 2))
        manifest = Manifest(
            model=card.name, settings={"name": card.name, "imported": True},
            stages=[entry], fusion_graph=None, normalization=card.normalization(), fusion=None,
            guidance={"kind": "none", "channels": 0}, stride_multiple=1, semantic_size=size,
            tile_size=tile_size or DEFAULT_TILE, tile_overlap=min(DEFAULT_OVERLAP, (tile_size or DEFAULT_TILE) // 4),
            max_batch=max_batch if dynamic else 1, opset=report.opset, checkpoint_sha256=model.sha256,
            versions=normaliser_versions(),
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            lint=lint.to_dict(),
            network={"output": "alpha", "fit": card.input.fit, "refine": dict(card.refine), "card": card.to_dict()},
        )
        embed_manifest(normalised, manifest)
        onnx.save_model(normalised, str(staging / GRAPH_FILE))
        manifest.save(staging)  # last: a directory with a manifest is complete
        _publish(staging, out_dir, log)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {out_dir / MANIFEST_FILE} ({time.perf_counter() - started:.1f} s)")
    return manifest


__all__ = ["DEFAULT_CANVAS", "DEFAULT_OVERLAP", "DEFAULT_TILE", "GRAPH_FILE", "REFUSE_MAX_ABS", "STAGE",
           "TARGET_MAX_ABS", "canvas_size", "fit_to_canvas", "measure_parity", "normalise_graph",
           "normaliser_versions", "parity_feeds", "write_imported_export"]
