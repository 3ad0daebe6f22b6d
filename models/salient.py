"""Salient Image Matting (Deora, Sharma, Ahmed et al., 2021): Salient Trimap Network (STN) +
ResNet-34/DensePN matting network, fused as alpha = F + U * alpha_m.

Stages
- "semantic": the STN, a U^2-Net with a 3-class output (models/u2net.py). Outputs
  "semantic" = the fused logits d0 (background, unknown, foreground), and "trimap" =
  softmax(d0). The paper trains the STN "for 3 way classification of the background, unknown
  region and foreground using the standard cross-entropy loss over each pixel" (section 3.5)
  and calls its output "a probabilistic estimate of the absolute background, unknown region
  and absolute foreground regions" (section 3.3): logits are the network's native output and
  softmax turns them into those probabilities. The six side maps (deep supervision, section
  3.6.1) stay available from `SalientModel.side_outputs` / `U2Net.forward`.
- "detail": the matting network. Inputs "image" and "guidance" = the three trimap
  probabilities: "The matting network then takes the intrinsic trimap from the STN along with
  the original input" (3.1), pre-trained "with one hot encoded trimaps" and fine-tuned on "the
  probabilistic trimap output from STN" (3.6.2, 3.6.3), so it reads RGB + 3 channels. Output:
  the raw alpha alpha_m.
- fusion "unknown_blend": "alpha_f = F + U * alpha_m" (3.4, following Chen et al.).

Sizes
- semantic_size 320: the STN is trained on inputs "resized to 320x320 followed by random
  cropping of 288x288" (3.6.1), and U^2-Net's own test script rescales to 320; 320 is a
  multiple of U^2-Net's total stride 32.
- tile_size 512: the matting network is trained on crops resized to 320 (3.6.2) but is fully
  convolutional; 512 halves the number of tiles against 320 and is a multiple of 32.
- stride_multiple 32: U^2-Net pools five times (stage1..stage6, and five times inside RSU-7)
  and ResNet-34's layer4 is at 1/32.

Matting network: choices where the paper gives no numbers. The paper: "We use ResNet34 as our
encoder"; DensePN "has parallel multi-resolution streams that are enriched with the other
multi-resolution features. [...] each stream is a DenseBlock followed by fusion layer which
brings all streams to the same resolution and performs a 1x1 convolution. The repeated
convolution and fusion block allows for rich multi-scale feature enrichment at each resolution
level. Finally, all stream are merged at the final prediction head to predict the alpha matte"
(3.4); DensePN "acts on a feature pyramid from an encoder" (3.1). Its figure and supplementary
material are not available, so:
- encoder: torchvision-layout ResNet-34 with a 6-channel conv1 (RGB + 3 trimap probabilities).
- streams: four, on ResNet-34's layer1..layer4 outputs (1/4, 1/8, 1/16, 1/32, the usual
  feature pyramid); each enters through a 1x1 conv + BN + ReLU ("lateral") to
  `stream_channels` = (32, 64, 128, 256): HRNet's W32 widths, the parallel-stream design the
  paper cites, doubling the width at each halving of resolution.
- dense blocks: DenseNet-BC layers (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k), growth
  rate k = 32 and bottleneck 4k as in DenseNet-121; `dense_layers` = 4 per block.
- fusion layer: every stream's dense-block output is brought to the target stream's
  resolution (bilinear upsampling from coarser streams, average pooling from finer ones:
  parameter-free, as the sentence has the 1x1 convolution do all the mixing), concatenated,
  and a 1x1 conv + BN + ReLU brings it back to the target's stream width (so the layer is
  repeatable).
- repeats: `densepn_repeats` = 3 DensePN layers (as EfficientDet-D0 repeats its BiFPN layer,
  the other repeated pyramid layer the paper cites).
- prediction head: all streams upsampled to 1/4 and concatenated, 3x3 conv + BN + ReLU to 64;
  then two x2 steps that concatenate the encoder's 1/2 stem features and then the 6-channel
  input before a 3x3 conv + BN + ReLU (32 channels each), and a final 3x3 conv to one channel
  with a sigmoid (alpha_m in [0, 1], the range the fusion formula needs). The skips restore
  the full-resolution detail a 1/4-resolution prediction would lose.

Checkpoints: two parts, because the STN and the matting network are trained separately
(3.6.1, 3.6.2):
- "trimap": the STN (`SalientModel.stn`), in xuebinqin/U-2-Net's `U2NET(3, 3)` layout, which
  is our layout (stage1.rebnconvin.conv_s1.weight, ..., side6.bias, outconv.weight). A 1-class
  saliency checkpoint does not fit: side1..side6 and outconv differ in shape.
- "matting": the matting network (`SalientModel.matting`), our layout only (the authors
  published no code). Its keys:
    encoder.conv1.weight (64 x 6 x 7 x 7), encoder.bn1.*, encoder.layer{1..4}.{i}.{conv,bn}{1,2}.*,
      encoder.layer{2..4}.0.downsample.{0,1}.*      (torchvision ResNet-34 names)
    lateral.{s}.conv.weight, lateral.{s}.bn.*       (s = 0..3, finest stream first)
    densepn.{r}.blocks.{s}.denselayer{l}.{norm1,conv1,norm2,conv2}.*   (r = repeat, l = 1..L)
    densepn.{r}.fuse.{s}.conv.weight, densepn.{r}.fuse.{s}.bn.*
    head.merge.{conv,bn}.*, head.refine_half.{conv,bn}.*, head.refine_full.{conv,bn}.*,
      head.predict.weight, head.predict.bias
A single file with our whole-model keys ("stn.*" and "matting.*") loads the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mattrt.errors import CheckpointError, InputError
from mattrt.models.backbones import resnet34
from mattrt.models.base import MattingModel, Stage, TensorSpec
from mattrt.models.checkpoints import CheckpointLayout, read_state_dict
from mattrt.models.fusion import FUSIONS
from mattrt.models.registry import register_model
from mattrt.models.settings import TRIMAP_CLASSES, ModelSettings, scaled
from mattrt.models.u2net import U2Net, u2net_layout

PAPER = "Deora et al., Salient Image Matting, arXiv:2103.12337 (2021)"
NUM_STREAMS = 4  # ResNet-34's layer1..layer4 outputs


@dataclass(frozen=True)
class SalientSettings(ModelSettings):
    name: str = "salient"
    description: str = "Salient Image Matting: U^2-Net salient trimap network + ResNet-34/DensePN matting network"
    paper: str = PAPER
    stages: tuple[str, ...] = ("semantic", "detail")
    fusion: str = "unknown_blend"
    guidance: str = "trimap"
    guidance_channels: int = 3
    stride_multiple: int = 32
    semantic_size: int = 320
    tile_size: int = 512
    tile_overlap: int = 64
    # DensePN (see the module docstring for the paper sentences these numbers interpret).
    stream_channels: tuple[int, ...] = (32, 64, 128, 256)
    dense_growth_rate: int = 32
    dense_layers: int = 4
    dense_bottleneck: int = 4  # the 1x1 conv of a dense layer outputs dense_bottleneck * growth rate
    densepn_repeats: int = 3
    head_channels: tuple[int, int, int] = (64, 32, 32)


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class DenseLayer(nn.Module):
    """DenseNet-BC layer (torchvision names): BN-ReLU-conv1x1, BN-ReLU-conv3x3, concatenated."""

    def __init__(self, cin: int, growth: int, bottleneck: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bottleneck * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck * growth)
        self.conv2 = nn.Conv2d(bottleneck * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv1(F.relu(self.norm1(x)))
        new = self.conv2(F.relu(self.norm2(new)))
        return torch.cat((x, new), 1)


class DenseBlock(nn.Sequential):
    def __init__(self, cin: int, layers: int, growth: int, bottleneck: int):
        super().__init__()
        for i in range(layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth, bottleneck))
        self.out_channels = cin + layers * growth


def resample_stream(x: torch.Tensor, source_level: int, target_level: int, target: torch.Tensor) -> torch.Tensor:
    """Bring a stream at pyramid level `source_level` to `target_level` (level l = 1/2^l scale):
    bilinear up from coarser levels, average pooling down from finer ones."""
    if source_level == target_level:
        return x
    if source_level > target_level:
        return F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=False)
    factor = 2 ** (target_level - source_level)
    return F.avg_pool2d(x, factor, factor)


class DensePNLayer(nn.Module):
    """One DensePN layer: a dense block per stream, then per stream a fusion of all streams
    brought to its resolution, mixed by a 1x1 conv back to the stream's width."""

    def __init__(self, stream_channels: Sequence[int], growth: int, layers: int, bottleneck: int):
        super().__init__()
        self.blocks = nn.ModuleList(DenseBlock(c, layers, growth, bottleneck) for c in stream_channels)
        fused_in = sum(block.out_channels for block in self.blocks)
        self.fuse = nn.ModuleList(ConvBNReLU(fused_in, c, 1) for c in stream_channels)

    def forward(self, streams: list[torch.Tensor]) -> list[torch.Tensor]:
        dense = [block(x) for block, x in zip(self.blocks, streams)]
        fused = []
        for target, fuse in enumerate(self.fuse):
            gathered = [resample_stream(d, source, target, dense[target]) for source, d in enumerate(dense)]
            fused.append(fuse(torch.cat(gathered, 1)))
        return fused


class DensePNHead(nn.Module):
    """Merges all streams at 1/4 and predicts alpha at full resolution through the 1/2 stem
    features and the input (see the module docstring)."""

    def __init__(self, stream_channels: Sequence[int], stem_channels: int, input_channels: int, widths: Sequence[int]):
        super().__init__()
        merge, half, full = widths
        self.merge = ConvBNReLU(sum(stream_channels), merge, 3)
        self.refine_half = ConvBNReLU(merge + stem_channels, half, 3)
        self.refine_full = ConvBNReLU(half + input_channels, full, 3)
        self.predict = nn.Conv2d(full, 1, 3, padding=1)

    def forward(self, streams: list[torch.Tensor], stem: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        finest = streams[0]
        x = torch.cat([resample_stream(s, level, 0, finest) for level, s in enumerate(streams)], 1)
        x = self.merge(x)
        x = F.interpolate(x, size=stem.shape[-2:], mode="bilinear", align_corners=False)
        x = self.refine_half(torch.cat((x, stem), 1))
        x = F.interpolate(x, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        x = self.refine_full(torch.cat((x, inputs), 1))
        return torch.sigmoid(self.predict(x))


class DensePNMatting(nn.Module):
    """ResNet-34 + DensePN matting network: (image, trimap probabilities) -> alpha_m."""

    def __init__(self, settings: SalientSettings):
        super().__init__()
        if len(settings.stream_channels) != NUM_STREAMS:
            raise InputError(
                f"stream_channels must list {NUM_STREAMS} widths (ResNet-34 layer1..layer4), "
                f"got {settings.stream_channels}"
            )
        if settings.densepn_repeats < 1 or settings.dense_layers < 1:
            raise InputError(
                f"densepn_repeats and dense_layers must be >= 1, got {settings.densepn_repeats} "
                f"and {settings.dense_layers}"
            )
        width = settings.width
        self.input_channels = 3 + settings.guidance_channels
        self.encoder = resnet34(in_chans=self.input_channels, width=width)
        streams = [scaled(c, width) for c in settings.stream_channels]
        growth = scaled(settings.dense_growth_rate, width)
        self.lateral = nn.ModuleList(ConvBNReLU(cin, c, 1) for cin, c in zip(self.encoder.stage_channels, streams))
        self.densepn = nn.ModuleList(
            DensePNLayer(streams, growth, settings.dense_layers, settings.dense_bottleneck)
            for _ in range(settings.densepn_repeats)
        )
        stem_channels = scaled(64, width)
        head_widths = [scaled(c, width) for c in settings.head_channels]
        self.head = DensePNHead(streams, stem_channels, self.input_channels, head_widths)

    def forward(self, image: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        x = torch.cat((image, guidance), 1)
        stem, *pyramid = self.encoder.forward_stages(x)
        streams = [lateral(p) for lateral, p in zip(self.lateral, pyramid)]
        for layer in self.densepn:
            streams = layer(streams)
        return self.head(streams, stem, x)


class SalientTrimapStage(nn.Module):
    """Semantic stage: image -> (fused STN logits, trimap probabilities)."""

    def __init__(self, stn: U2Net):
        super().__init__()
        self.stn = stn

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.stn(image)[0]
        return logits, torch.softmax(logits, dim=1)


class SalientDetailStage(nn.Module):
    """Detail stage: (image, trimap probabilities) -> (alpha_m,)."""

    def __init__(self, matting: DensePNMatting):
        super().__init__()
        self.matting = matting

    def forward(self, image: torch.Tensor, guidance: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.matting(image, guidance),)


class SalientModel(MattingModel):
    """STN (`stn`, a 3-class U2Net) + matting network (`matting`), fused by unknown_blend."""

    # No whole-model layout of the authors' (they published no code): a single file loads in
    # our layout only; the STN's U2Net layout belongs to the "trimap" part.

    def __init__(self, settings: SalientSettings):
        super().__init__(settings)
        if settings.guidance != "trimap" or settings.guidance_channels != len(TRIMAP_CLASSES):
            raise InputError(
                f"salient's matting network reads the {len(TRIMAP_CLASSES)} trimap probabilities "
                f"(guidance 'trimap', 3 channels); got guidance {settings.guidance!r} with "
                f"{settings.guidance_channels} channels"
            )
        self.stn = U2Net(3, len(TRIMAP_CLASSES), width=settings.width)
        self.matting = DensePNMatting(settings)

    def _stage_module(self, module: nn.Module) -> nn.Module:
        # Stage wrappers are built on request (not registered), so every parameter keeps one
        # state_dict name; they follow the model's train/eval mode.
        return module.train(self.training)

    def stages(self) -> dict[str, Stage]:
        s = self.settings
        return {
            "semantic": Stage(
                name="semantic",
                module=self._stage_module(SalientTrimapStage(self.stn)),
                inputs=(TensorSpec("image", 3),),
                outputs=(TensorSpec("semantic", len(TRIMAP_CLASSES)), TensorSpec("trimap", len(TRIMAP_CLASSES))),
                spatial_size=s.semantic_size,
            ),
            "detail": Stage(
                name="detail",
                module=self._stage_module(SalientDetailStage(self.matting)),
                inputs=(TensorSpec("image", 3), TensorSpec("guidance", s.guidance_channels)),
                outputs=(TensorSpec("detail", 1),),
                spatial_size=s.tile_size,
            ),
        }

    def checkpoint_parts(self) -> dict[str, tuple[nn.Module, Sequence[CheckpointLayout]]]:
        return {
            "trimap": (self.stn, (u2net_layout(len(TRIMAP_CLASSES)),)),
            "matting": (self.matting, ()),
        }

    def load_weights(self, checkpoint: "str | Path | Mapping[str, str | Path]") -> None:
        """As `MattingModel.load_weights`; a "trimap" file holding a U2Net with another number of
        output maps (a 1-class salient-object U2Net) gets an error naming every side*/outconv
        shape difference, which the generic message may cut short."""
        try:
            super().load_weights(checkpoint)
        except CheckpointError as error:
            hint = self._class_count_mismatch(checkpoint)
            if hint is None:
                raise
            raise CheckpointError(f"{hint}\n{error}") from None

    def _class_count_mismatch(self, checkpoint: object) -> str | None:
        if not isinstance(checkpoint, Mapping) or "trimap" not in checkpoint:
            return None
        try:
            theirs = read_state_dict(checkpoint["trimap"])
        except CheckpointError:
            return None
        head_keys = [k for k in self.stn.state_dict() if k.startswith(("side", "outconv"))]
        ours = self.stn.state_dict()
        differences = [
            f"{k}: checkpoint {tuple(theirs[k].shape)} vs model {tuple(ours[k].shape)}"
            for k in head_keys
            if k in theirs and tuple(theirs[k].shape) != tuple(ours[k].shape)
        ]
        if not differences or "outconv.weight" not in theirs:
            return None
        classes = theirs["outconv.weight"].shape[0]
        return (
            f"the 'trimap' checkpoint {checkpoint['trimap']} is a U2Net with {classes} output map(s) "
            f"(a salient-object U2NET(3, {classes}) if 1), but the Salient Trimap Network predicts "
            f"{len(TRIMAP_CLASSES)} classes ({', '.join(TRIMAP_CLASSES)}) and needs U2NET(3, 3) weights "
            f"trained on trimaps. Output-head shape differences ({len(differences)}): " + "; ".join(differences)
        )

    def side_outputs(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The STN's seven logit maps (d0 fused, d1..d6 sides) for deep supervision."""
        self.check_image(image)
        return self.stn(image)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_image(image)
        semantic, trimap = SalientTrimapStage(self.stn)(image)
        guidance = self.guidance(image, trimap)
        detail = self.matting(image, guidance)
        alpha = FUSIONS[self.settings.fusion](trimap, detail)
        return {"semantic": semantic, "trimap": trimap, "detail": detail, "alpha": alpha}


@register_model(SalientSettings())
def salient(settings: SalientSettings) -> SalientModel:
    return SalientModel(settings)


@register_model(
    SalientSettings(
        name="salient_tiny",
        description="salient at width 1/8 with 64 x 64 stage calls (tests)",
        width=0.125,
        semantic_size=64,
        tile_size=64,
        tile_overlap=16,
        variant_of="salient",
    )
)
def salient_tiny(settings: SalientSettings) -> SalientModel:
    return SalientModel(settings)
