"""What `mattrt import` checks before it registers a card: the card against its graph.

    proto = read_graph(card.graph_path)
    report = check_graph(card, proto, card.graph_path)   # InputError naming tensors and both values
    check_onnxruntime_loads(card.graph_path)

mattrt imports single-image networks: exactly one 4-D float input (the image, NCHW or NHWC, 3
channels) and, among the outputs, the card's alpha output with one channel at the input's
spatial size ([N, 1, H, W], [N, H, W, 1] or [N, H, W]); the other outputs are dropped on
normalisation. Every refusal names the tensors involved and, where the card and the graph
disagree (input or output name, layout, size), both values. Shapes come from the graph's
declarations and onnx shape inference; an output whose shape stays unknown is checked again on
the first onnxruntime run (export/onnx_import.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mattrt.errors import InputError
from mattrt.lazy import lazy_import
from mattrt.models.cards import ModelCard

onnx = lazy_import("onnx", probe="onnxruntime")
ort = lazy_import("onnxruntime", probe="onnxruntime")
protobuf_message = lazy_import("google.protobuf.message")

FLOAT_TYPES = ("float32", "float16")
# Where the channels are in a 4-D tensor of each layout, and the spatial axes.
CHANNEL_AXIS = {"NCHW": 1, "NHWC": 3}
SPATIAL_AXES = {"NCHW": (2, 3), "NHWC": (1, 2)}


@dataclass(frozen=True)
class GraphTensor:
    """One graph input or output: its dimensions (int fixed, str named, None unknown) and type."""

    name: str
    dims: tuple[int | str | None, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.dims)
        return f"{self.name!r} [{dims}] {self.dtype}"


@dataclass(frozen=True)
class GraphReport:
    """What the checks found: the image input, the alpha output and what normalisation does."""

    input: GraphTensor
    output: GraphTensor
    output_layout: str  # "NCHW" ([N, 1, H, W]), "NHWC" ([N, H, W, 1]) or "NHW" ([N, H, W])
    dropped_outputs: tuple[str, ...]
    size: tuple[int, int] | None  # (height, width) when the graph fixes it
    batch: int | None  # the fixed batch (1), or None when it is dynamic
    opset: int
    fp16: bool  # FP16 initializers or FP16 values: normalisation converts them to FP32
    nodes: int
    producer: str


def _dtype_name(elem_type: int) -> str:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "unknown"


def _tensor(value) -> GraphTensor:
    tensor_type = value.type.tensor_type
    dims = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    dtype = _dtype_name(tensor_type.elem_type) if value.type.HasField("tensor_type") else "not a tensor"
    return GraphTensor(value.name, tuple(dims) if tensor_type.HasField("shape") else (), dtype)


def read_graph(path: str | Path):
    """The ModelProto of an ONNX file, or InputError naming a file that is not one (or keeps its
    weights in other files: an imported graph is one file)."""
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (protobuf_message.Error, OSError, ValueError) as exc:
        text = str(exc).strip()
        reason = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
        raise InputError(f"{path} is not a readable ONNX graph ({reason}): the file is damaged or not an ONNX model") \
            from None
    if not proto.graph.node and not proto.graph.output:
        raise InputError(f"{path} is not a readable ONNX graph (no nodes, no outputs): the file is damaged or not an "
                         "ONNX model")
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise InputError(f"{path} keeps {len(external)} weight(s) in external data files (e.g. {external[0]!r}); "
                         "mattrt imports one self-contained .onnx file: save it with onnx.save_model(model, path) "
                         "without save_as_external_data (graphs under 2 GB)")
    return proto


def check_onnxruntime_loads(path: str | Path) -> None:
    """InputError unless onnxruntime's CPU provider can create a session for the graph."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors derive from Exception directly
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise InputError(f"onnxruntime cannot load {path}: {reason[:300]}; mattrt runs imported graphs with "
                         "onnxruntime (and TensorRT), so it cannot import this one") from None


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _has_fp16(proto, inferred) -> bool:
    fp16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == fp16 for t in proto.graph.initializer):
        return True
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return any(v.type.tensor_type.elem_type == fp16 for v in values)


def _infer_shapes(proto):
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # unknown shapes are checked on the first run instead
        return proto


def _refuse(path: Path, message: str) -> InputError:
    return InputError(f"{path}: {message} (nothing was imported)")


def _image_input(card: ModelCard, proto, path: Path) -> GraphTensor:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [_tensor(v) for v in proto.graph.input if v.name not in initializers]
    listed = ", ".join(t.describe() for t in inputs) or "none"
    images = [t for t in inputs if len(t.dims) == 4]
    if not images:
        raise _refuse(path, f"the graph has no 4-D input (its inputs: {listed}); mattrt imports networks that read one "
                            "image as a 4-D tensor (NCHW or NHWC)")
    if len(images) > 1:
        raise _refuse(path, f"the graph has {len(images)} image inputs (4-D): "
                            f"{', '.join(t.describe() for t in images)}; mattrt imports single-image networks "
                            "(exactly one 4-D input)")
    image = images[0]
    others = [t for t in inputs if t is not image]
    if others:
        raise _refuse(path, f"the graph has inputs besides its image {image.describe()}: "
                            f"{', '.join(t.describe() for t in others)}; mattrt feeds the image alone")
    if card.input.name != image.name:
        raise _refuse(path, f"the card's input.name is {card.input.name!r}, but the graph's image input is "
                            f"{image.describe()}")
    if image.dtype not in FLOAT_TYPES:
        raise _refuse(path, f"the image input {image.describe()} is not float32 or float16")
    return image


def _check_layout(card: ModelCard, image: GraphTensor, path: Path) -> None:
    layout = card.input.layout
    axis = CHANNEL_AXIS[layout]
    channels = image.dims[axis]
    if isinstance(channels, int) and channels != 3:
        other = "NHWC" if layout == "NCHW" else "NCHW"
        hint = (f"; its dimension {CHANNEL_AXIS[other]} is 3: is the layout {other}?"
                if image.dims[CHANNEL_AXIS[other]] == 3 else "; mattrt feeds 3 channels (RGB or BGR)")
        raise _refuse(path, f"the card's input.layout is {layout!r}, which reads channels from dimension {axis}, but "
                            f"that dimension of the graph's input {image.describe()} is {channels}{hint}")


def _check_size(card: ModelCard, image: GraphTensor, path: Path) -> tuple[int, int] | None:
    rows, cols = SPATIAL_AXES[card.input.layout]
    height, width = image.dims[rows], image.dims[cols]
    fixed = (height, width) if isinstance(height, int) and isinstance(width, int) else None
    described = f"{height if height is not None else '?'} x {width if width is not None else '?'}"
    size = card.input.size
    if size is None and fixed is not None:
        raise _refuse(path, f"the card leaves input.size out (a graph of dynamic size), but the graph's input "
                            f"{image.describe()} is fixed at {described} (height x width): add size = "
                            f"[{height}, {width}] to [input]")
    if size is not None:
        for axis, want, have in (("height", size[0], height), ("width", size[1], width)):
            if isinstance(have, int) and have != want:
                raise _refuse(path, f"the card's input.size is [{size[0]}, {size[1]}] (height, width), but the graph's "
                                    f"input {image.describe()} is {described} ({axis} {have}, not {want})")
        if size[0] != size[1]:
            raise _refuse(path, f"the card's input.size is [{size[0]}, {size[1]}]; mattrt runs networks on a square "
                                "canvas (S x S), so a graph of another shape cannot be imported yet")
    batch = image.dims[0]
    if isinstance(batch, int) and batch != 1:
        raise _refuse(path, f"the graph's input {image.describe()} has a fixed batch of {batch}; mattrt imports "
                            "graphs of batch 1 or a dynamic batch")
    return fixed


def _alpha_output(card: ModelCard, proto, inferred, image: GraphTensor, path: Path) -> tuple[GraphTensor, str]:
    declared = [_tensor(v) for v in proto.graph.output]
    shapes = {v.name: _tensor(v) for v in [*inferred.graph.value_info, *inferred.graph.output]}
    matches = [t for t in declared if t.name == card.output.name]
    if not matches:
        raise _refuse(path, f"the card's output.name is {card.output.name!r}, but the graph's outputs are "
                            f"{', '.join(t.describe() for t in declared)}")
    output = matches[0]
    known = shapes.get(output.name)
    if known is not None and len(known.dims) >= len(output.dims):
        output = GraphTensor(output.name, tuple(d if d is not None else k for d, k in
                                                zip(output.dims or known.dims, known.dims)), output.dtype)
    if output.dtype not in FLOAT_TYPES:
        raise _refuse(path, f"the alpha output {output.describe()} is not float32 or float16")
    dims = output.dims
    if len(dims) == 3:
        layout = "NHW"
    elif len(dims) == 4:
        layout = "NHWC" if card.input.layout == "NHWC" and dims[1] != 1 else "NCHW"
        channels = dims[CHANNEL_AXIS[layout]]
        if isinstance(channels, int) and channels != 1:
            raise _refuse(path, f"the alpha output {output.describe()} has {channels} channels (dimension "
                                f"{CHANNEL_AXIS[layout]}); an alpha output has one. Name the graph's one-channel "
                                "output in output.name, or export the network with its alpha as its own output")
    elif not dims:
        layout = "NCHW"  # unknown rank: checked on the first run
    else:
        raise _refuse(path, f"the alpha output {output.describe()} has {len(dims)} dimensions; mattrt takes "
                            "[N, 1, H, W], [N, H, W, 1] or [N, H, W]")
    spatial = {"NCHW": (2, 3), "NHWC": (1, 2), "NHW": (1, 2)}[layout]
    rows, cols = SPATIAL_AXES[card.input.layout]
    if dims:
        for out_axis, in_axis in zip(spatial, (rows, cols)):
            have, want = dims[out_axis], image.dims[in_axis]
            if isinstance(have, int) and isinstance(want, int) and have != want:
                raise _refuse(path, f"the alpha output {output.describe()} is not at the size of the input "
                                    f"{image.describe()}; mattrt needs the alpha at the input's height and width")
    return output, layout


def check_graph(card: ModelCard, proto, path: str | Path) -> GraphReport:
    """Check the card against its graph (module docstring); InputError naming what disagrees."""
    path = Path(path)
    image = _image_input(card, proto, path)
    _check_layout(card, image, path)
    size = _check_size(card, image, path)
    inferred = _infer_shapes(proto)
    output, layout = _alpha_output(card, proto, inferred, image, path)
    return GraphReport(
        input=image, output=output, output_layout=layout,
        dropped_outputs=tuple(o.name for o in proto.graph.output if o.name != output.name),
        size=size, batch=image.dims[0] if isinstance(image.dims[0], int) else None, opset=_opset(proto),
        fp16=_has_fp16(proto, inferred), nodes=len(proto.graph.node), producer=proto.producer_name,
    )


__all__ = ["GraphReport", "GraphTensor", "check_graph", "check_onnxruntime_loads", "read_graph"]
