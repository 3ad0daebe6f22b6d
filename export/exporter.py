"""Export a matting model to ONNX: one graph per stage plus a fusion graph, with a manifest.

    manifest = export_model("aim", "exports/aim", checkpoint="aim.pth", tile_size=640)

Every graph has a fixed spatial shape and a dynamic batch (1..max_batch), comes from
`torch.onnx.export(..., dynamo=True)` with the rewrites of `rewrites.py` (nothing TensorRT's
parser rejects), is checked against PyTorch through onnxruntime right away, simplified with
onnxslim when parity still holds afterwards, and linted for TensorRT. The directory is written
under a temporary name beside DIR and renamed at the end: a failed export (a full disk
included) leaves nothing that looks like an export. `force` replaces only an earlier mattrt
export (its manifest validates) and deletes only the files that export's manifest names; a
folder holding anything else is refused with the list. The published folder gets the mode the
umask gives, like any folder the user creates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import io
import logging
import os
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import onnx
import onnxruntime
import onnxscript
import onnxslim
import torch
from torch import nn
from torch.export import Dim

from mattrt import __version__
from mattrt.engines.tensorrt.lint import lint_models, operator_table
from mattrt.engines.tensorrt.rewrites import translation_table
from mattrt.errors import InputError, MattrtError
from mattrt.export.parity import TOLERANCE, ParityError, image_feeds, judge, ort_session, reference_outputs, run_graph
from mattrt.manifest import (
    BATCH_DIM,
    MANIFEST_FILE,
    GraphEntry,
    Manifest,
    TensorInfo,
    embed_manifest,
    load_graph_proto,
)
from mattrt.models import MattingModel, create_model, get_settings
from mattrt.models.fusion import get_fusion
from mattrt.models.registry import INIT_SEED, list_models
from mattrt.models.settings import stage_size_overrides
from mattrt.paths import new_directory, swap_in

DEFAULT_OPSET = 18  # torchlib's own opset: no version conversion, parsed by TensorRT 10.x and 11.x
DEFAULT_MAX_BATCH = 8
PARITY_BATCH = 3
FUSION_GRAPH = "fusion"


class ExportError(MattrtError):
    """A stage that cannot be exported, or an export that fails its checks."""


@dataclasses.dataclass
class _Graph:
    """One graph on its way through export, parity, simplification and lint."""

    name: str
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    spatial_size: int
    example: tuple[torch.Tensor, ...]
    feed_sets: dict[tuple[str, int], tuple[torch.Tensor, ...]]
    feed_sources: dict[str, dict[str, str]]
    proto: object = None
    entry: GraphEntry | None = None


class FusionModule(nn.Module):
    """The model's fusion as a module: (trimap probabilities, detail) -> alpha."""

    def __init__(self, kind: str):
        super().__init__()

        self.kind = kind
        self.fuse = get_fusion(kind)

    def forward(self, trimap: torch.Tensor, detail: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.fuse(trimap, detail),)


# -- model and options ---------------------------------------------------------------------
def _size_overrides(model_or_name, semantic_size: int | None, tile_size: int | None) -> dict[str, int]:
    settings = get_settings(model_or_name) if isinstance(model_or_name, str) else getattr(model_or_name, "settings", None)
    if settings is None:
        raise InputError(
            f"export needs a registered model name or a MattingModel, got {type(model_or_name).__name__}"
        )
    return stage_size_overrides(settings, semantic_size, tile_size)


def load_model(
    model_or_name,
    checkpoint: str | Path | Mapping[str, str | Path] | None = None,
    semantic_size: int | None = None,
    tile_size: int | None = None,
):
    """The model to export, built or adjusted to the requested sizes, in eval mode."""

    requested = _size_overrides(model_or_name, semantic_size, tile_size)
    if isinstance(model_or_name, str):
        return create_model(model_or_name, checkpoint=checkpoint, seed=INIT_SEED, **requested)
    if not isinstance(model_or_name, MattingModel):
        raise InputError(
            f"export needs a registered model name or a MattingModel, got {type(model_or_name).__name__}"
        )
    model = model_or_name
    settings = model.settings
    if checkpoint is not None:
        model.load_weights(checkpoint)
    overrides = {k: v for k, v in requested.items() if getattr(settings, k) != v}
    if overrides:
        # Sizes are settings: rebuild the registered model at the new sizes and carry the weights over.
        if settings.name not in list_models():
            raise InputError(
                f"cannot change the sizes of an instance of unregistered model {settings.name!r}; "
                "build it with the sizes you want instead"
            )
        fields = {f: getattr(settings, f) for f in settings.field_names() if f != "name"}
        fields.update(overrides)
        rebuilt = create_model(settings.name, **fields)
        rebuilt.load_state_dict(model.state_dict(), strict=True)
        rebuilt.checkpoint_sha256 = model.checkpoint_sha256
        model = rebuilt
    return model.eval()


def _ordered_stages(model) -> list:
    stages = model.stages()
    order = list(model.settings.stages)
    missing = [s for s in order if s not in stages]
    extra = [s for s in stages if s not in order]
    if missing or extra:
        raise ExportError(
            f"model {model.settings.name!r}: settings.stages {order} and stages() {list(stages)} disagree"
        )
    return [stages[name] for name in order]


# -- one graph ------------------------------------------------------------------------------
def export_graph(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    opset: int = DEFAULT_OPSET,
    name: str = "graph",
):
    """One module -> onnx.ModelProto through the dynamo exporter with mattrt's rewrites: fixed
    shapes except a dynamic batch (dimension 0 of every input and output) of 1..max_batch.

    The example inputs should have a batch > 1 when max_batch > 1, so the exporter does not
    specialise the batch to 1."""

    input_names, output_names = list(input_names), list(output_names)
    dynamic_shapes = None
    if max_batch > 1:
        batch = Dim(BATCH_DIM, min=1, max=max_batch)
        dynamic_shapes = tuple({0: batch} for _ in input_names)
    quiet = io.StringIO()
    onnx_logger = logging.getLogger("torch.onnx")
    previous_level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                tuple(example_inputs),
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=translation_table(),
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        cause = exc
        while cause.__cause__ is not None and not isinstance(cause, MattrtError):
            cause = cause.__cause__
        lines = [line for line in str(cause).strip().splitlines() if line.strip()]
        summary = lines[0] if lines else ""
        raise ExportError(
            f"graph {name!r}: torch.onnx.export (dynamo) failed: {type(cause).__name__}: {summary[:500]}"
        ) from exc
    finally:
        onnx_logger.setLevel(previous_level)
    proto = program.model_proto
    produced = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != opset:
        raise ExportError(
            f"graph {name!r}: asked for opset {opset}, the exporter produced opset {produced} "
            f"(its version conversion failed); use opset {produced}"
        )
    _drop_unused_pool_indices(proto)
    _normalise_batch_dim(proto, name)
    got_inputs = [i.name for i in proto.graph.input]
    got_outputs = [o.name for o in proto.graph.output]
    if got_inputs != input_names or got_outputs != output_names:
        raise ExportError(
            f"graph {name!r}: exported inputs {got_inputs} / outputs {got_outputs} differ from the expected "
            f"{input_names} / {output_names} (the exporter drops an input the module never reads)"
        )
    return proto


def _drop_unused_pool_indices(proto) -> None:
    """Remove MaxPool Indices outputs nothing reads (TensorRT rejects the output even unused)."""
    used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1] not in used:
            del node.output[1:]


def _normalise_batch_dim(proto, name: str) -> None:
    """Call the dynamic first dimension of every input and output BATCH_DIM; reject any other."""
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for index, dim in enumerate(dims):
            if index == 0:
                if dim.HasField("dim_param"):
                    dim.dim_param = BATCH_DIM
            elif not dim.HasField("dim_value"):
                raise ExportError(
                    f"graph {name!r}: {value.name} dimension {index} is not fixed ({dim.dim_param or '?'}); "
                    "only the batch may be dynamic"
                )


def _tensor_infos(values) -> list[TensorInfo]:
    infos = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = [BATCH_DIM if d.HasField("dim_param") else int(d.dim_value) for d in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        infos.append(TensorInfo(value.name, shape, dtype))
    return infos


def _simplify(proto):
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        return onnxslim.slim(proto)


def _same_interface(a, b) -> bool:
    def signature(proto):
        return [(v.name, str(v.type)) for v in [*proto.graph.input, *proto.graph.output]]

    return signature(a) == signature(b)


def _finish_graph(graph: _Graph, tolerance: float, simplify: bool, log: Callable[[str], None]) -> None:
    """Parity (on the simplified graph when simplification keeps it), then the manifest entry."""
    references = reference_outputs(graph.module, graph.feed_sets)

    def parity(proto):
        outputs = run_graph(ort_session(proto), graph.input_names, graph.output_names, graph.feed_sets)
        return judge(graph.module, references, outputs, graph.feed_sets, graph.output_names, tolerance)

    chosen, note, simplified = graph.proto, "", False
    summary = results = None
    if simplify:
        try:
            slim = _simplify(graph.proto)
        except Exception as exc:  # keep the exporter's graph
            note = f"onnxslim failed ({type(exc).__name__}: {str(exc)[:200]}); kept the unsimplified graph"
        else:
            if not _same_interface(slim, graph.proto):
                note = "onnxslim changed the graph's inputs or outputs; kept the unsimplified graph"
            else:
                slim_summary, slim_results = parity(slim)
                if slim_summary["passed"]:
                    chosen, simplified, summary, results = slim, True, slim_summary, slim_results
                else:
                    note = (
                        f"parity failed after onnxslim (rel L2 {slim_summary['worst_rel_l2']:.2e}); "
                        "kept the unsimplified graph"
                    )
    if summary is None:
        summary, results = parity(graph.proto)
    summary["feeds"] = graph.feed_sources
    if not summary["passed"]:
        worst = max(results, key=lambda r: r.rel_l2)
        message = (
            f"graph {graph.name!r} differs from PyTorch beyond tolerance (FP32 relative L2 <= {tolerance:g}): "
            f"{worst.output} on {worst.feed} inputs, batch {worst.batch}: rel L2 {worst.rel_l2:.3e}, "
            f"max abs {worst.max_abs:.3e}"
        )
        if "fp64_checks" in summary:
            bad = max(summary["fp64_checks"], key=lambda c: c["graph_rel_l2"] / c["allowed"])
            message += (
                f"; against float64 the graph is {bad['graph_rel_l2']:.3e} off where PyTorch FP32 is "
                f"{bad['pytorch_fp32_rel_l2']:.3e} off ({bad['output']}, {bad['feed']}, batch {bad['batch']})"
            )
        elif "fp64" in summary:
            message += f"; float64 comparison {summary['fp64']}"
        raise ParityError(message)
    graph.proto = chosen
    graph.entry = GraphEntry(
        name=graph.name,
        inputs=_tensor_infos(chosen.graph.input),
        outputs=_tensor_infos(chosen.graph.output),
        spatial_size=graph.spatial_size,
        files={"fp32": f"{graph.name}.onnx"},
        nodes=len(chosen.graph.node),
        simplified=simplified,
        simplify_note=note,
        parity=summary,
    )
    log(f"  {graph.name}: {len(chosen.graph.node)} nodes{' (onnxslim)' if simplified else ''}; parity vs PyTorch:")
    for result in results:
        log(f"    {result.line()}")
    if "fp64_checks" in summary:
        log(f"    judged against float64 (PyTorch FP32 is itself beyond {tolerance:g} here):")
        for check in summary["fp64_checks"]:
            log(
                f"    {check['feed']:>6} b{check['batch']} {check['output']:<10} graph {check['graph_rel_l2']:.2e}  "
                f"PyTorch FP32 {check['pytorch_fp32_rel_l2']:.2e}  allowed {check['allowed']:.2e}"
            )
    if note:
        log(f"    note: {note}")


def _random_feeds(graph_inputs, batch_sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    return {("random", b): graph_inputs(b, generator) for b in batch_sizes}


def _stage_graph(model, stage, batch_sizes: Sequence[int], seed: int) -> _Graph:
    module = stage.module.eval()
    feed_sets = _random_feeds(lambda b, g: stage.example_inputs(b, g), batch_sizes, seed + 1)
    sources = {"random": {spec.name: "random" for spec in stage.inputs}}
    for b in batch_sizes:
        tensors, image_sources = image_feeds(model, stage, b, seed=seed + 100)
        feed_sets[("image", b)] = tensors
        sources["image"] = image_sources
    example_batch = 2 if max(batch_sizes) > 1 else 1
    example = stage.example_inputs(example_batch, torch.Generator().manual_seed(seed))
    return _Graph(stage.name, module, stage.input_names, stage.output_names, stage.spatial_size, example, feed_sets, sources)


def _fusion_graph(kind: str, size: int, batch_sizes: Sequence[int], seed: int) -> _Graph:
    def inputs(batch: int, generator: torch.Generator):
        logits = torch.randn(batch, 3, size, size, generator=generator) * 3.0
        detail = torch.rand(batch, 1, size, size, generator=generator) * 1.2 - 0.1  # reaches past [0, 1]
        return (torch.softmax(logits, dim=1), detail)

    feed_sets = _random_feeds(inputs, batch_sizes, seed + 2)
    example = inputs(2 if max(batch_sizes) > 1 else 1, torch.Generator().manual_seed(seed))
    sources = {"random": {"trimap": "softmax of random logits", "detail": "random in [-0.1, 1.1]"}}
    return _Graph(FUSION_GRAPH, FusionModule(kind).eval(), ["trimap", "detail"], ["alpha"], size, example, feed_sets, sources)


# -- directory handling --------------------------------------------------------------------
_LISTED = 8  # names shown when refusing a folder


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... ({len(names) - _LISTED} more)" if len(names) > _LISTED else "")


def _external_data_files(directory: Path, manifest: Manifest) -> set[str]:
    """Files the manifest's graphs keep their weights in (graphs over protobuf's 2 GiB limit)."""
    found = set()
    for entry in manifest.graphs():
        for name in entry.graph_files():
            if (directory / name).is_file():
                for tensor in load_graph_proto(directory / name).graph.initializer:
                    if tensor.data_location == onnx.TensorProto.EXTERNAL:
                        found.update(kv.value for kv in tensor.external_data if kv.key == "location")
    return found


def _replaceable_files(out_dir: Path) -> list[str]:
    """The entries of an existing `out_dir` that replacing it deletes: those an earlier mattrt
    export wrote. Raise InputError, deleting nothing, for anything else."""
    if out_dir.is_symlink():
        raise InputError(f"{out_dir} is a symbolic link; --force replaces only an export directory itself: choose another --out")
    if not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a directory; remove it or choose another --out")
    present = sorted(p.name for p in out_dir.iterdir())
    if not present:
        return []
    if not (out_dir / MANIFEST_FILE).is_file():
        raise InputError(
            f"{out_dir} is not a mattrt export (it has no {MANIFEST_FILE}); --force replaces only an earlier "
            "export, so nothing was deleted: choose another --out"
        )
    try:
        manifest = Manifest.load(out_dir)
    except InputError as exc:
        raise InputError(
            f"{out_dir} holds a {MANIFEST_FILE} that is not a mattrt export manifest, so --force does not replace "
            f"it and nothing was deleted: choose another --out or move the folder away. ({exc})"
        ) from None
    named = set(manifest.named_files())
    unnamed = [n for n in present if n not in named or ((out_dir / n).is_dir() and not (out_dir / n).is_symlink())]
    if unnamed:
        external = _external_data_files(out_dir, manifest)
        unnamed = [n for n in unnamed if n not in external or (out_dir / n).is_dir()]
    if unnamed:
        raise InputError(
            f"{out_dir} holds {len(unnamed)} entr{'y' if len(unnamed) == 1 else 'ies'} its export manifest does not "
            f"name: {_preview(unnamed)}; --force deletes only the files an export wrote, so nothing was deleted: "
            "move them away or choose another --out"
        )
    return present


def _prepare_destination(out_dir: Path, force: bool) -> None:
    if out_dir.exists() or out_dir.is_symlink():
        if not force:
            raise InputError(f"{out_dir} already exists; pass --force to replace an earlier export there")
        _replaceable_files(out_dir)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {parent}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{parent} is not writable; choose another --out")


def _check_free_space(parent: Path, needed: int) -> None:
    """Refuse before the work when the disk cannot hold the graphs (`needed` bytes)."""
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise InputError(
            f"{parent} has {free / 1e6:.1f} MB free; the graphs need about {needed / 1e6:.1f} MB: "
            "free space there or choose another --out"
        )


def _publish(staging: Path, out_dir: Path, log: Callable[[str], None]) -> None:
    """Rename the finished staging directory to out_dir. An earlier export there is moved aside
    first and then only the files its manifest names are deleted."""
    # again: files may have appeared during the export
    replaced = _replaceable_files(out_dir) if out_dir.exists() or out_dir.is_symlink() else []
    retired = swap_in(staging, out_dir)
    if retired is None:
        return
    for name in replaced:
        (retired / out_dir.name / name).unlink(missing_ok=True)
    try:
        (retired / out_dir.name).rmdir()
        retired.rmdir()
    except OSError:
        left = sorted(p.name for p in (retired / out_dir.name).iterdir())
        log(f"warning: kept {_preview(left)} in {retired / out_dir.name}: they appeared in {out_dir} during the export")


def _save_graph(proto, path: Path) -> None:
    if proto.ByteSize() > 1_800_000_000:  # protobuf's 2 GiB limit: weights go to a side file
        onnx.save_model(proto, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(proto, str(path))


def exporter_versions() -> dict[str, str]:
    """The libraries that shape an exported graph (recorded in the manifest and in cache keys)."""
    return {
        "mattrt": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxslim": onnxslim.__version__,
        "python": platform.python_version(),
    }


# -- the entry point -----------------------------------------------------------------------
def export_model(
    model_or_name,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | Mapping[str, str | Path] | None = None,
    semantic_size: int | None = None,
    tile_size: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    simplify: bool = True,
    allow_lint_errors: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> Manifest:
    """Export every stage of a model (a registered name or a MattingModel) and its fusion to
    `out_dir`; return the manifest written there. See the module docstring."""
    log = log or (lambda message: None)
    out_dir = Path(out_dir)
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise InputError(f"max batch must be a positive integer, got {max_batch!r}")
    opsets = operator_table()["opset"]
    if not isinstance(opset, int) or not opsets["min"] <= opset <= opsets["max"]:
        raise InputError(
            f"opset {opset!r} is outside {opsets['min']}..{opsets['max']}, the range TensorRT 10.x and 11.x parse"
        )
    _size_overrides(model_or_name, semantic_size, tile_size)  # cheap checks before anything is built
    _prepare_destination(out_dir, force)
    model = load_model(model_or_name, checkpoint, semantic_size, tile_size)
    settings = model.settings
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    _check_free_space(out_dir.parent, weights + (1 << 20))
    batch_sizes = [1] + ([min(PARITY_BATCH, max_batch)] if max_batch > 1 else [])
    tolerance = TOLERANCE["fp32"]

    log(f"exporting {settings.name} to {out_dir} (opset {opset}, batch 1..{max_batch})")
    graphs = [_stage_graph(model, stage, batch_sizes, seed) for stage in _ordered_stages(model)]
    graphs.append(_fusion_graph(settings.fusion, settings.tile_size, batch_sizes, seed))
    for graph in graphs:
        started = time.perf_counter()
        graph.proto = export_graph(
            graph.module, graph.example, graph.input_names, graph.output_names,
            max_batch=max_batch, opset=opset, name=graph.name,
        )
        _finish_graph(graph, tolerance, simplify, log)
        graph.entry.export_seconds = round(time.perf_counter() - started, 2)

    report = lint_models((g.entry.files["fp32"], g.proto) for g in graphs)
    log(report.summary())
    if not report.passed and not allow_lint_errors:
        raise ExportError(
            report.summary() + "\nnothing was written; fix the graphs or pass --allow-lint-errors to keep them"
        )

    checkpoint_hash = model.checkpoint_sha256 if model.checkpoint_sha256 is not None else "untrained"
    manifest = Manifest(
        model=settings.name,
        settings=settings.to_dict(),
        stages=[g.entry for g in graphs if g.name != FUSION_GRAPH],
        fusion_graph=graphs[-1].entry,
        normalization={
            "channel_order": settings.channel_order,
            "mean": list(settings.mean),
            "std": list(settings.std),
            "input_range": [0.0, 1.0],
        },
        fusion=settings.fusion,
        guidance={"kind": settings.guidance, "channels": settings.guidance_channels},
        stride_multiple=settings.stride_multiple,
        semantic_size=settings.semantic_size,
        tile_size=settings.tile_size,
        tile_overlap=settings.tile_overlap,
        max_batch=max_batch,
        opset=opset,
        checkpoint_sha256=checkpoint_hash,
        versions=exporter_versions(),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        lint=report.to_dict(),
    )
    _write(manifest, graphs, out_dir, log)
    log(f"wrote {out_dir} ({len(graphs)} graphs)")
    return manifest


def _write(manifest: Manifest, graphs: Sequence[_Graph], out_dir: Path, log: Callable[[str], None]) -> None:
    """Write the graphs and the manifest to a staging folder beside out_dir, then publish it.
    An OSError (full disk, quota, file size limit) removes the staging folder and is reported
    with the path; nothing is published."""
    parent = out_dir.parent
    try:
        staging = new_directory(parent, f".{out_dir.name}.partial-")
    except OSError as exc:
        raise InputError(f"cannot write in {parent}: {exc.strerror or exc}") from None
    current = staging
    try:
        for graph in graphs:
            current = staging / graph.entry.files["fp32"]
            embed_manifest(graph.proto, manifest)
            _save_graph(graph.proto, current)
        current = staging / MANIFEST_FILE
        manifest.save(staging)  # last: a directory with a manifest is complete
        current = out_dir
        _publish(staging, out_dir, log)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        needed = sum(graph.proto.ByteSize() for graph in graphs)
        code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        raise ExportError(
            f"writing {exc.filename or current} failed: {exc.strerror or exc}{f' ({code})' if code else ''}; "
            f"nothing was published to {out_dir} and the partial files were removed. "
            + (f"The graphs need about {needed / 1e6:.1f} MB in {parent}: free space there (or lift the limit) "
               "or choose another --out, then rerun" if full else "Fix the cause and rerun")
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_OPSET",
    "ExportError",
    "FusionModule",
    "export_graph",
    "export_model",
    "load_model",
]
