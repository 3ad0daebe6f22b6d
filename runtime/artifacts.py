"""Where stage engines come from: a model in this process, or an export directory.

`ModelSpec` is everything the pipeline needs to know about a model (normalisation, fusion kind,
guidance kind, stride, canvas and tile sizes, the full settings for model-specific guidance);
it is built from a model's settings or from an export manifest, so an export directory is run
through its manifest alone, with no Python model class.

    spec, engines = load_model_engines("shm_tiny")                 # torch
    spec, engines = open_artifacts("exports/shm", device="cpu")   # onnxruntime
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from mattrt.errors import InputError
from mattrt.runtime.engine import DEVICES, PRECISIONS, Engine, check_choice

if TYPE_CHECKING:
    from mattrt.models.base import MattingModel
    from mattrt.models.settings import ModelSettings


@dataclass(frozen=True)
class ModelSpec:
    name: str
    stages: tuple[str, ...]
    fusion: str
    guidance: str
    guidance_channels: int
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stride_multiple: int
    semantic_size: int
    tile_size: int
    tile_overlap: int
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "registry" or the export directory
    checkpoint_sha256: Any = None

    @classmethod
    def from_settings(cls, settings: "ModelSettings", checkpoint_sha256: Any = None) -> "ModelSpec":
        return cls(
            name=settings.name,
            stages=tuple(settings.stages),
            fusion=settings.fusion,
            guidance=settings.guidance,
            guidance_channels=int(settings.guidance_channels),
            channel_order=settings.channel_order,
            mean=tuple(float(v) for v in settings.mean),
            std=tuple(float(v) for v in settings.std),
            stride_multiple=int(settings.stride_multiple),
            semantic_size=int(settings.semantic_size),
            tile_size=int(settings.tile_size),
            tile_overlap=int(settings.tile_overlap),
            settings=settings.to_dict(),
            source="registry",
            checkpoint_sha256=checkpoint_sha256,
        )

    @classmethod
    def from_manifest(cls, manifest, source: str = "") -> "ModelSpec":
        norm = manifest.normalization
        input_range = list(norm.get("input_range", [0.0, 1.0]))
        if input_range != [0.0, 1.0]:
            raise InputError(f"manifest input_range {input_range} is not supported; this runtime feeds RGB in [0, 1]")
        return cls(
            name=manifest.model,
            stages=tuple(g.name for g in manifest.stages),
            fusion=manifest.fusion,
            guidance=manifest.guidance["kind"],
            guidance_channels=int(manifest.guidance["channels"]),
            channel_order=norm["channel_order"],
            mean=tuple(float(v) for v in norm["mean"]),
            std=tuple(float(v) for v in norm["std"]),
            stride_multiple=int(manifest.stride_multiple),
            semantic_size=int(manifest.semantic_size),
            tile_size=int(manifest.tile_size),
            tile_overlap=int(manifest.tile_overlap),
            settings=dict(manifest.settings),
            source=source,
            checkpoint_sha256=manifest.checkpoint_sha256,
        )

    @property
    def trained(self) -> bool:
        return self.checkpoint_sha256 not in (None, "untrained")


def parse_checkpoint(values: list[str] | str | None) -> str | dict[str, str] | None:
    """CLI checkpoint values: one path, or PART=PATH pairs for models shipped in several files."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    if len(values) == 1 and not _looks_like_part(values[0]):
        return values[0]
    parts = {}
    for value in values:
        if not _looks_like_part(value):
            raise InputError(
                f"checkpoint {value!r}: give one file, or PART=FILE for every part (e.g. trimap=stn.pth matting=m.pth)"
            )
        part, path = value.split("=", 1)
        if part in parts:
            raise InputError(f"checkpoint part {part!r} is given twice")
        parts[part] = path
    return parts


def _looks_like_part(value: str) -> bool:
    head, sep, tail = value.partition("=")
    return bool(sep) and head.isidentifier() and bool(tail) and not Path(value).exists()


def load_model_engines(
    model: "MattingModel | str",
    checkpoint=None,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    kernels: bool = False,
) -> tuple[ModelSpec, dict[str, Engine]]:
    """Torch engines for every stage of a model (an instance, or a registered name); kernels:
    run them with mattrt's custom ops (TorchEngine)."""
    from mattrt.models import create_model
    from mattrt.runtime.torch_engine import model_engines

    check_choice(device, DEVICES, "device")
    if isinstance(model, str):
        model = create_model(model, checkpoint=checkpoint)
    elif checkpoint is not None:
        model.load_weights(checkpoint)
    engines = model_engines(model, device=device, precision=precision, channels_last=channels_last, kernels=kernels)
    return ModelSpec.from_settings(model.settings, model.checkpoint_sha256), engines


def open_artifacts(
    directory: str | Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None
) -> tuple[ModelSpec, dict[str, Engine]]:
    """onnxruntime engines for the stage graphs of an export directory, read through its manifest."""
    from mattrt.export.manifest import Manifest
    from mattrt.runtime.engine import TensorMeta
    from mattrt.runtime.onnx_engine import OnnxRuntimeEngine, SessionLoader

    import numpy as np

    check_choice(device, DEVICES, "device")
    check_choice(precision, PRECISIONS, "precision")
    directory = Path(directory)
    manifest = Manifest.load(directory)
    if directory.is_file():
        directory = directory.parent
    spec = ModelSpec.from_manifest(manifest, source=str(directory))
    engines: dict[str, Engine] = {}
    for entry in manifest.stages:
        if precision not in entry.files:
            raise InputError(
                f"export {directory} has no {precision} graph for stage {entry.name!r} "
                f"(it has: {', '.join(entry.files)}); produce it with mattrt's calibration step or pick another precision"
            )

        def metas(infos):
            return tuple(
                TensorMeta(t.name, tuple(None if isinstance(d, str) else int(d) for d in t.shape), np.dtype(t.dtype))
                for t in infos
            )

        loader = SessionLoader(directory / entry.files[precision], device=device, threads=threads)
        engines[entry.name] = OnnxRuntimeEngine(
            loader,
            name=entry.name,
            precision=precision,
            max_batch=int(manifest.max_batch),
            inputs=metas(entry.inputs),
            outputs=metas(entry.outputs),
        )
    return spec, engines


def check_engines(spec: ModelSpec, engines: Mapping[str, Engine]) -> None:
    """Every stage the spec names has an engine with the inputs and outputs the pipeline feeds/reads."""
    missing = [s for s in spec.stages if s not in engines]
    if missing:
        raise InputError(f"model {spec.name!r}: no engine for stage(s) {', '.join(missing)}")
    for required in ("semantic", "detail"):
        if required not in engines:
            raise InputError(f"model {spec.name!r}: the pipeline needs a {required!r} stage")
    semantic = engines["semantic"]
    if semantic.input_names != ["image"] or "trimap" not in semantic.output_names:
        raise InputError(
            f"semantic stage of {spec.name!r} must read 'image' and return 'trimap'; it has {semantic.describe()}"
        )
    detail = engines["detail"]
    want = ["image"] if spec.guidance == "none" else ["image", "guidance"]
    if detail.input_names != want or "detail" not in detail.output_names:
        raise InputError(
            f"detail stage of {spec.name!r} must read {want} and return 'detail' (guidance {spec.guidance!r}); "
            f"it has {detail.describe()}"
        )


__all__ = ["ModelSpec", "check_engines", "load_model_engines", "open_artifacts", "parse_checkpoint"]
