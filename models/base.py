"""The contract every seed model fulfils.

A `MattingModel` is an `nn.Module` with

- `settings`: its frozen `ModelSettings`;
- `stages()`: the separately callable networks, each a `Stage` (module + named inputs and
  outputs + the fixed spatial size it runs at). Export writes one graph per stage and the
  runtime calls them by name, so nothing downstream needs the Python model class;
- `guidance(image, trimap)`: the detail stage's extra input at full resolution;
- `forward(image)`: the whole-image reference in eval mode, returning at the input resolution
  {"semantic": the authors' semantic output, "trimap": probabilities (background, unknown,
  foreground), "detail": the matting network's raw alpha, "alpha": the fused alpha}.

Stage contracts (all tensors NCHW float):
- "semantic": inputs ("image",) -> outputs ("semantic", "trimap"); "trimap" holds the three
  class probabilities in `TRIMAP_CLASSES` order.
- "detail": inputs ("image",) or ("image", "guidance") -> outputs ("detail",), the raw alpha.
  Fusion is not part of the detail stage: the pipeline applies `fusion.FUSIONS[settings.fusion]`
  to the (upsampled) trimap and the stitched detail.
- models may add stages (e.g. a window classifier); `settings.stages` lists them in call order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Mapping, Sequence

import torch
from torch import nn

from mattrt.errors import CheckpointError, InputError
from mattrt.fusion_kinds import fusion_kind
from mattrt.models.checkpoints import NATIVE_LAYOUT, load_checkpoint
from mattrt.models.settings import ModelSettings

if TYPE_CHECKING:
    from mattrt.models.checkpoints import CheckpointLayout


@dataclass(frozen=True)
class TensorSpec:
    name: str
    channels: int


@dataclass(frozen=True)
class Stage:
    """One network call of a model: what export turns into a graph."""

    name: str
    module: nn.Module  # forward(*inputs in `inputs` order) -> tuple of outputs in `outputs` order
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    spatial_size: int  # height = width of every input at this stage's fixed-shape call

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def example_inputs(self, batch: int = 1, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Random inputs of the stage's fixed shape (guidance-like inputs in [0, 1])."""
        size = self.spatial_size
        tensors = []
        for spec in self.inputs:
            if spec.name == "image":
                t = torch.randn(batch, spec.channels, size, size, generator=generator)
            else:
                t = torch.rand(batch, spec.channels, size, size, generator=generator)
            tensors.append(t)
        return tuple(tensors)


class MattingModel(nn.Module):
    """Base class of the seed models; see the module docstring for the contract."""

    # The authors' state_dict layouts this model loads (see checkpoints.py).
    checkpoint_layouts: ClassVar[Sequence["CheckpointLayout"]] = ()

    def __init__(self, settings: ModelSettings):
        super().__init__()
        fusion_kind(settings.fusion)  # every model checks its fusion kind once, against the core table
        self.settings = settings
        # sha256 of the checkpoint file the weights came from ({part: sha256} when loaded from
        # several files); None while untrained.
        self.checkpoint_sha256: str | dict[str, str] | None = None

    def stages(self) -> dict[str, Stage]:
        raise NotImplementedError

    # -- weights ---------------------------------------------------------------------------
    def checkpoint_parts(self) -> dict[str, tuple[nn.Module, Sequence["CheckpointLayout"]]]:
        """Separately distributed weight files: part name -> (module, the authors' layouts).

        A model whose authors ship one file keeps the default single part "model"; models
        assembled from several networks (a trimap network + a matting network + a classifier)
        name each part, and `load_weights` accepts a {part: path} mapping.
        """
        return {"model": (self, self.checkpoint_layouts)}

    def load_weights(self, checkpoint: "str | Path | Mapping[str, str | Path]") -> None:
        """Load strictly: one file for the whole model (our layout or the authors'), or
        {part: file} for the parts of `checkpoint_parts()`."""

        if isinstance(checkpoint, Mapping) and all(isinstance(v, (str, Path)) for v in checkpoint.values()):
            parts = self.checkpoint_parts()
            unknown = sorted(set(checkpoint) - set(parts))
            if unknown:
                raise CheckpointError(
                    f"model {self.settings.name!r} has no checkpoint part {', '.join(unknown)}; "
                    f"its parts are: {', '.join(parts)}"
                )
            hashes = {}
            for part, path in checkpoint.items():
                module, layouts = parts[part]
                report = load_checkpoint(module, path, [NATIVE_LAYOUT, *layouts])
                hashes[part] = report.sha256
            self.checkpoint_sha256 = hashes
            return
        report = load_checkpoint(self, checkpoint)
        self.checkpoint_sha256 = report.sha256

    def guidance(self, image: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor | None:
        """Full-resolution guidance for the detail stage (None when it reads the image only)."""
        if self.settings.guidance == "none":
            return None
        if self.settings.guidance == "trimap":
            return trimap
        raise NotImplementedError(f"{type(self).__name__} must build guidance {self.settings.guidance!r}")

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- input checks shared by every model ---------------------------------------------
    @property
    def whole_image_multiple(self) -> int:
        """What forward() needs the image's height and width to be multiples of."""
        return self.settings.stride_multiple

    def check_image(self, image: torch.Tensor) -> None:
        check_image(image, self.whole_image_multiple, what=f"{self.settings.name} input")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def stage_parameters(self) -> dict[str, int]:
        """Parameters per stage (a parameter shared by two stages counts in both)."""
        return {name: sum(p.numel() for p in stage.module.parameters()) for name, stage in self.stages().items()}


def check_image(image: object, stride_multiple: int, what: str = "image", channels: int = 3) -> None:
    """Raise InputError unless `image` is an N x C x H x W float tensor with H, W multiples of the stride."""
    if not isinstance(image, torch.Tensor):
        raise InputError(f"{what}: expected a torch.Tensor of shape N x {channels} x H x W, got {type(image).__name__}")
    if image.ndim != 4:
        raise InputError(f"{what}: expected 4 dimensions N x {channels} x H x W, got shape {tuple(image.shape)}")
    if image.shape[1] != channels:
        raise InputError(
            f"{what}: expected {channels} channels (RGB, normalised) in dimension 1, got shape {tuple(image.shape)}"
        )
    if not image.dtype.is_floating_point:
        raise InputError(
            f"{what}: expected a float tensor normalised as the model's settings say, got {image.dtype}; "
            "convert uint8 images with mattrt's preprocessing first"
        )
    h, w = image.shape[-2:]
    if h == 0 or w == 0 or h % stride_multiple or w % stride_multiple:
        raise InputError(
            f"{what}: height and width must be positive multiples of {stride_multiple}, got {h} x {w}; "
            "pad or resize the image (the tiled pipeline does this for you)"
        )
