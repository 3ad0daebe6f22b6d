"""AlphaNet (Sharma, Deora, Vishvakarma 2020): segmentation -> erosion/dilation trimap ->
attention-guided MobileNetV2 matting network.

The authors published no code and no weights, so this module is built from the paper
(papers/alphanet.txt) and loads only its own (native) state_dict layout. Where the paper is
silent, the choices below follow the works it builds on (DeepLabV3+, IndexNet Matting) and are
listed here so that users of their own trained weights can convert them.

Semantic stage ("semantic": mask probability N x 1 x H x W, "trimap": one-hot N x 3 x H x W)
- DeepLabV3+ on a torchvision-named ResNet-18, output stride 16 (layer4 at stride 1 with
  dilation 2, torchvision's replace_stride_with_dilation rule), ASPP with a 1x1 branch, three
  3x3 atrous branches (rates 6/12/18) and image pooling (global mean -> 1x1 conv, broadcast
  back), 1280 -> 256 projection; decoder: layer1 features (stride 4) -> 48 channels, x4
  bilinear upsampling (align_corners=True, as the common PyTorch DeepLabV3+ code) of the ASPP
  output, two 3x3 256-channel convs and a 1x1 classifier. No dropout (inference only).
- One output channel with a sigmoid (the paper trains the binary mask with focal + dice
  loss). Weights of a 2-class softmax head convert exactly: classifier weight = w[fg] - w[bg],
  bias = b[fg] - b[bg].
- Erosion-dilation (ED) layer, no parameters: the mask is binarised (probability >
  `mask_threshold`), its bounding box measured (height = y_max - y_min, width = x_max - x_min
  over foreground pixels), and each radius = round(percent / 100 * (height + width) / 2),
  capped at `max_radius`, computed per image at the resolution the stage runs at. The unknown
  band is dilated minus eroded, foreground the eroded mask, background the rest; square
  structuring elements of side 2r + 1, pixels outside the image are ignored (scipy's
  "reflect" border mode gives the same result). An empty mask gives an all-background trimap.
  The data-dependent radius is applied without control flow: the radius is written in binary
  and for each bit b a separable max-pool (min-pool for erosion) of radius 2**b is applied or
  skipped with `torch.where`; square dilations compose additively, so this is exactly the
  dilation of radius r, in ceil(log2(max_radius + 1)) pooling steps of fixed kernel sizes.
  `erosion_dilation_reference` is the NumPy/scipy reference it is tested against.

Detail stage (inputs image + guidance, output raw alpha N x 1 x H x W, sigmoid)
- Input: the normalised RGB image and one trimap channel (0 background, 0.5 unknown,
  1 foreground, as in the paper's "fourth channel"); the "guidance" input carries the trimap
  probabilities (background, unknown, foreground) and the stage converts them to
  0.5 * unknown + foreground, so soft (upsampled) trimaps stay meaningful.
- Encoder: MobileNetV2 (torchvision block names) with every stride-2 step replaced by a stride-1
  convolution followed by attention-guided 2x2 pooling (IndexNet Matting's layout): layer0
  (3x3 conv, 4 -> 32) and layers 2, 3, 4, 6 are pooled, so the encoder has output stride 32.
  No context module (the paper reports no gain from one): a 1x1 conv 320 -> 160 bottleneck.
- Attention modules (one per pooled layer, input: that layer's output F with C channels):
  four parallel branches, each a 4x4 stride-2 padding-1 conv with 2 groups (C -> 2C, no
  bias), GroupNorm (gcd(2C, 32) groups, Wu & He's 32 where the width allows) + ReLU, then two
  pointwise convs 2C -> C (ReLU) -> 1 (with biases); the four H/2 x W/2 maps are recomposed to
  H x W by pixel shuffle (branch k fills window position (k // 2, k % 2)). Its output logits `a`
  drive `attention_pool2d` in the encoder and, at the same resolution, `attention_unpool2d`
  in the decoder: pooling sums each 2x2 window of F weighted by the window softmax of
  sigmoid(a) (the paper's sigmoid-then-softmax encoder normalisation); unpooling multiplies the
  nearest-neighbour x2 upsampling by sigmoid(a) (the decoder normalisation).
- Decoder (IndexNet's UNet-style decoder): from the bottleneck, for k = 6..0: attention
  unpooling (if layer k was pooled), concatenation with layer k's output (before pooling),
  5x5 conv-BN-ReLU6 to the channels of layer k-1 (32 for k <= 1); head: 3x3 conv 32 -> 1 with
  bias, sigmoid.

Fusion "argmax_trimap": raw alpha inside the unknown band, the trimap elsewhere.

Sizes: stride_multiple 32 (five 2x poolings in the matting network; DeepLab needs 16).
The paper trains the segmentation net at 496 x 496; its nearest multiple of 32, 512, is the
semantic canvas. The paper caps the longer image side at 1500 px for GPU memory; mattrt's tiled
detail stage (512 x 512 tiles) makes that cap unnecessary, so no cap is applied.

Checkpoint (native layout only, one file), top-level modules:
- `segmentation.backbone.*`  torchvision ResNet-18 names (conv1, bn1, layer1..layer4)
- `segmentation.aspp.{conv1x1, atrous.0-2, image_pool, project}.{0 conv, 1 bn}`
- `segmentation.decoder.{low_level.{0,1}, fuse.{0,1,3,4}, classifier}`
- `matting.layer0.{0 conv, 1 bn}`, `matting.layer1..layer7.<block>.conv.*` (torchvision
  MobileNetV2 names: features.0 -> layer0 with a 4th input channel, features.1 -> layer1.0,
  features.2-3 -> layer2.0-1, 4-6 -> layer3, 7-10 -> layer4, 11-13 -> layer5, 14-16 -> layer6,
  17 -> layer7.0; features.18 is not used)
- `matting.attention{0,2,3,4,6}.branches.{0-3}.{conv, norm, reduce, score}`
- `matting.bottleneck.{0,1}`, `matting.decoder{6..0}.{0,1}`, `matting.head`
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from mattrt.errors import InputError
from mattrt.models.backbones import (
    MOBILENETV2_CONFIG,
    InvertedResidual,
    conv_bn_relu6,
    resnet18,
)
from mattrt.models.base import MattingModel, Stage, TensorSpec
from mattrt.models.fusion import get_fusion
from mattrt.models.registry import register_model
from mattrt.models.settings import ModelSettings, scaled

PAPER = "Sharma, Deora, Vishvakarma: AlphaNet: An Attention Guided Deep Network for Automatic Image Matting (2020)"


@dataclass(frozen=True)
class AlphaNetSettings(ModelSettings):
    name: str = "alphanet"
    description: str = (
        "DeepLabV3+ (ResNet-18) mask -> erosion/dilation trimap -> MobileNetV2 matting network with "
        "attention-guided pooling and unpooling"
    )
    paper: str = PAPER
    stages: tuple[str, ...] = ("semantic", "detail")
    fusion: str = "argmax_trimap"
    guidance: str = "trimap"
    guidance_channels: int = 3
    stride_multiple: int = 32
    semantic_size: int = 512
    tile_size: int = 512
    tile_overlap: int = 64
    # ED layer: foreground where mask probability > threshold; radii as a percentage of the
    # mean of the mask's bounding-box height and width, capped in pixels (at stage resolution).
    # The paper gives no values: 5 % of a 400 px wide subject is a 20 px band on either side of
    # the mask edge on the 512 canvas, about what the usual fixed-kernel trimap recipes use.
    mask_threshold: float = 0.5
    erosion_percent: float = 5.0
    dilation_percent: float = 5.0
    max_radius: int = 32
    aspp_rates: tuple[int, int, int] = (6, 12, 18)


# -- attention-guided pooling and unpooling ------------------------------------------------------
def _check_attention_pair(x: torch.Tensor, a: torch.Tensor, what: str, scale: int) -> None:
    if x.ndim != 4 or a.ndim != 4 or a.shape[1] != 1:
        raise InputError(
            f"{what}: expected features N x C x H x W and attention logits N x 1 x H x W, "
            f"got {tuple(x.shape)} and {tuple(a.shape)}"
        )
    h, w = a.shape[-2:]
    if h % 2 or w % 2:
        raise InputError(f"{what}: attention height and width must be even, got {h} x {w}")
    if (x.shape[-2] * scale, x.shape[-1] * scale) != (h, w):
        expected = "the same as" if scale == 1 else "half of"
        raise InputError(
            f"{what}: feature size {x.shape[-2]} x {x.shape[-1]} must be {expected} the attention size {h} x {w}"
        )


def attention_pool2d(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Attention-guided 2x2/stride-2 pooling: x (N x C x H x W), logits a (N x 1 x H x W) ->
    N x C x H/2 x W/2, the sum over each window of softmax_window(sigmoid(a)) * x."""
    _check_attention_pair(x, a, "attention_pool2d", 1)
    # sigmoid bounds the softmax inputs to (0, 1), so exp needs no max subtraction; the
    # window softmax-weighted sum is the ratio of two window means.
    weights = torch.exp(torch.sigmoid(a))
    return F.avg_pool2d(x * weights, 2, 2) / F.avg_pool2d(weights, 2, 2)


def attention_unpool2d(y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Attention-guided 2x unpooling: y (N x C x H/2 x W/2), logits a (N x 1 x H x W) ->
    sigmoid(a) * nearest_upsample_x2(y)."""
    _check_attention_pair(y, a, "attention_unpool2d", 2)
    return torch.sigmoid(a) * F.interpolate(y, scale_factor=2.0, mode="nearest")


class AttentionBranch(nn.Module):
    """One of the four parallel branches: H x W x C -> H/2 x W/2 x 1 logits."""

    def __init__(self, channels: int):
        super().__init__()
        if channels % 2:
            raise ValueError(f"attention module needs an even channel count (2 conv groups), got {channels}")
        hidden = 2 * channels
        self.conv = nn.Conv2d(channels, hidden, 4, stride=2, padding=1, groups=2, bias=False)
        self.norm = nn.GroupNorm(math.gcd(hidden, 32), hidden)
        self.reduce = nn.Conv2d(hidden, channels, 1)
        self.score = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        return self.score(F.relu(self.reduce(x)))


class AttentionModule(nn.Module):
    """Feature map F (N x C x H x W) -> attention logits (N x 1 x H x W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.branches = nn.ModuleList(AttentionBranch(channels) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(torch.cat([branch(x) for branch in self.branches], dim=1), 2)


# -- segmentation: DeepLabV3+ (ResNet-18) ------------------------------------------------------
def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = (kernel - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, ...]):
        super().__init__()
        self.conv1x1 = _conv_bn_relu(cin, cout, 1)
        self.atrous = nn.ModuleList(_conv_bn_relu(cin, cout, 3, rate) for rate in rates)
        self.image_pool = _conv_bn_relu(cin, cout, 1)
        self.project = _conv_bn_relu(cout * (2 + len(rates)), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # image pooling: a global mean, so the branch is independent of the input size; the
        # 1 x 1 result is broadcast back (what bilinear upsampling of a single pixel gives)
        pooled = self.image_pool(x.mean(dim=(2, 3), keepdim=True))
        pooled = pooled.expand(-1, -1, x.shape[2], x.shape[3])
        branches = [self.conv1x1(x), *(conv(x) for conv in self.atrous), pooled]
        return self.project(torch.cat(branches, dim=1))


class DeepLabDecoder(nn.Module):
    def __init__(self, low_channels: int, aspp_channels: int, width: float):
        super().__init__()
        low = scaled(48, width)
        hidden = scaled(256, width)
        self.low_level = _conv_bn_relu(low_channels, low, 1)
        self.fuse = nn.Sequential(*_conv_bn_relu(aspp_channels + low, hidden, 3), *_conv_bn_relu(hidden, hidden, 3))
        self.classifier = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        low_level = self.low_level(low_level)
        x = F.interpolate(x, size=low_level.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.fuse(torch.cat([x, low_level], dim=1)))


class DeepLabV3Plus(nn.Module):
    """Image -> foreground mask logits at the input resolution (N x 1 x H x W)."""

    def __init__(self, settings: AlphaNetSettings):
        super().__init__()
        width = settings.width
        self.backbone = resnet18(width=width, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2))
        aspp_channels = scaled(256, width)
        self.aspp = ASPP(self.backbone.stage_channels[3], aspp_channels, tuple(settings.aspp_rates))
        self.decoder = DeepLabDecoder(self.backbone.stage_channels[0], aspp_channels, width)
        for module in (self.aspp, self.decoder):
            _init_conv_bn(module)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _, low_level, _, _, deep = self.backbone.forward_stages(image)
        logits = self.decoder(self.aspp(deep), low_level)
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)


# -- erosion / dilation trimap layer -----------------------------------------------------------
def trimap_radii(
    mask: torch.Tensor, erosion_percent: float, dilation_percent: float, max_radius: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Erosion and dilation radii (float tensors of shape N, whole numbers) of binary masks
    N x 1 x H x W from their bounding boxes; 0 for an empty mask."""
    h, w = mask.shape[-2:]
    # float32 whatever the mask's dtype: pixel indices above 2048 are not exact in float16
    rows = mask.amax(dim=3).flatten(1).float()  # N x H: 1 where a row holds foreground
    cols = mask.amax(dim=2).flatten(1).float()  # N x W
    row_index = torch.arange(h, dtype=torch.float32, device=mask.device)
    col_index = torch.arange(w, dtype=torch.float32, device=mask.device)
    # max(index * present) is the last foreground index; the first is found the same way on the
    # reversed index. An empty mask gives last 0, first H-1: the clamp turns that into size 0.
    height = ((rows * row_index).amax(1) - ((h - 1) - (rows * (h - 1 - row_index)).amax(1))).clamp_min(0)
    width = ((cols * col_index).amax(1) - ((w - 1) - (cols * (w - 1 - col_index)).amax(1))).clamp_min(0)
    extent = height + width  # radius = percent / 100 * extent / 2, rounded half up

    def radius(percent: float) -> torch.Tensor:
        return torch.floor(extent * (float(percent) / 200.0) + 0.5).clamp(0, max_radius)

    return radius(erosion_percent), radius(dilation_percent)


def _max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Square max filter of side 2 * radius + 1, separable; outside pixels are ignored."""
    k = 2 * radius + 1
    x = F.max_pool2d(x, (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(x, (k, 1), stride=1, padding=(radius, 0))


def _morphology(mask: torch.Tensor, radius: torch.Tensor, max_radius: int, erode: bool) -> torch.Tensor:
    """Dilate (or erode) each mask of the batch by its own radius (N, whole numbers <= max_radius)."""
    radius = radius.reshape(-1, 1, 1, 1)
    x = -mask if erode else mask  # erosion is a max filter of the negated mask
    for bit in range(max_radius.bit_length()):
        step = 1 << bit
        # bit `bit` of the radius, with float ops only (Floor, Div, Sub): export-friendly
        use = (torch.floor(radius / step) - 2.0 * torch.floor(radius / (2 * step))) > 0.5
        x = torch.where(use, _max_filter(x, step), x)
    return -x if erode else x


class ErosionDilationTrimap(nn.Module):
    """The paper's ED layer: mask probability N x 1 x H x W -> one-hot trimap N x 3 x H x W
    (background, unknown, foreground)."""

    def __init__(self, threshold: float, erosion_percent: float, dilation_percent: float, max_radius: int):
        super().__init__()
        self.threshold = float(threshold)
        self.erosion_percent = float(erosion_percent)
        self.dilation_percent = float(dilation_percent)
        self.max_radius = int(max_radius)

    def forward(self, probability: torch.Tensor) -> torch.Tensor:
        mask = (probability > self.threshold).to(probability.dtype)
        erosion, dilation = trimap_radii(mask, self.erosion_percent, self.dilation_percent, self.max_radius)
        foreground = _morphology(mask, erosion, self.max_radius, erode=True)
        dilated = _morphology(mask, dilation, self.max_radius, erode=False)
        return torch.cat([1.0 - dilated, dilated - foreground, foreground], dim=1)


def erosion_dilation_reference(
    mask: np.ndarray,
    erosion_percent: float,
    dilation_percent: float,
    max_radius: int,
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy/scipy reference of the ED layer on binary masks (N x H x W, values 0/1).

    Returns (one-hot trimap N x 3 x H x W float32 in (background, unknown, foreground) order,
    radii N x 2 int as (erosion, dilation)). Radii use the same float32 arithmetic as the torch
    layer so that rounding agrees exactly.
    """

    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"erosion_dilation_reference: expected binary masks N x H x W, got shape {mask.shape}")
    binary = (mask > 0.5).astype(np.float32)
    trimaps = np.zeros((binary.shape[0], 3, *binary.shape[1:]), np.float32)
    radii = np.zeros((binary.shape[0], 2), np.int64)
    for i, m in enumerate(binary):
        ys, xs = np.nonzero(m)
        extent = np.float32(0.0) if ys.size == 0 else np.float32((ys.max() - ys.min()) + (xs.max() - xs.min()))
        r = []
        for percent in (erosion_percent, dilation_percent):
            value = np.floor(extent * np.float32(float(percent) / 200.0) + np.float32(0.5))
            r.append(int(min(max(value, 0.0), max_radius)))
        eroded = ndimage.grey_erosion(m, size=(2 * r[0] + 1, 2 * r[0] + 1), mode="reflect")
        dilated = ndimage.grey_dilation(m, size=(2 * r[1] + 1, 2 * r[1] + 1), mode="reflect")
        trimaps[i] = np.stack([1.0 - dilated, dilated - eroded, eroded])
        radii[i] = r
    return trimaps, radii


# -- matting network -----------------------------------------------------------------------------
class AttentionMattingNet(nn.Module):
    """(image N x 3 x H x W, trimap value N x 1 x H x W in [0, 1]) -> raw alpha N x 1 x H x W."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        stem = scaled(32, width)
        self.layer0 = conv_bn_relu6(4, stem, 3)
        self.pooled = [0]
        channels = [stem]
        cin = stem
        for index, (expand, cout, repeats, stride) in enumerate(MOBILENETV2_CONFIG, start=1):
            cout = scaled(cout, width)
            blocks = [InvertedResidual(cin if i == 0 else cout, cout, 1, expand) for i in range(repeats)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            if stride == 2:  # MobileNetV2's stride-2 step becomes attention-guided pooling
                self.pooled.append(index)
            channels.append(cout)
            cin = cout
        for index in self.pooled:
            setattr(self, f"attention{index}", AttentionModule(channels[index]))
        self.depth = len(channels) - 1  # index of the last encoder layer (7)
        self.bottleneck = conv_bn_relu6(channels[self.depth], channels[self.depth - 1], 1)
        incoming = channels[self.depth - 1]
        for index in range(self.depth - 1, -1, -1):
            out = channels[max(index - 1, 0)]
            setattr(self, f"decoder{index}", conv_bn_relu6(incoming + channels[index], out, 5))
            incoming = out
        self.head = nn.Conv2d(incoming, 1, 3, padding=1)
        _init_conv_bn(self)

    def forward(self, image: torch.Tensor, trimap_value: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, trimap_value], dim=1)
        skips: list[torch.Tensor] = []
        attention: dict[int, torch.Tensor] = {}
        for index in range(self.depth + 1):
            x = getattr(self, f"layer{index}")(x)
            skips.append(x)
            if index in self.pooled:
                attention[index] = getattr(self, f"attention{index}")(x)
                x = attention_pool2d(x, attention[index])
        x = self.bottleneck(x)
        for index in range(self.depth - 1, -1, -1):
            if index in attention:
                x = attention_unpool2d(x, attention[index])
            x = getattr(self, f"decoder{index}")(torch.cat([x, skips[index]], dim=1))
        return torch.sigmoid(self.head(x))


def _init_conv_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# -- stage modules and the model -----------------------------------------------------------------
class SemanticStage(nn.Module):
    """image -> (mask probability N x 1 x H x W, one-hot trimap N x 3 x H x W)."""

    def __init__(self, segmentation: DeepLabV3Plus, trimap_layer: ErosionDilationTrimap):
        super().__init__()
        self.segmentation = segmentation
        self.trimap_layer = trimap_layer

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probability = torch.sigmoid(self.segmentation(image))
        return probability, self.trimap_layer(probability)


class DetailStage(nn.Module):
    """(image, trimap probabilities N x 3 x H x W) -> (raw alpha N x 1 x H x W,)."""

    def __init__(self, matting: AttentionMattingNet):
        super().__init__()
        self.matting = matting

    def forward(self, image: torch.Tensor, guidance: torch.Tensor) -> tuple[torch.Tensor]:
        if guidance.ndim != 4 or guidance.shape[1] != 3:
            raise InputError(
                "AlphaNet detail stage: guidance must be N x 3 x H x W trimap probabilities "
                f"(background, unknown, foreground), got {tuple(guidance.shape)}"
            )
        # the paper's trimap channel: 0 background, 0.5 unknown, 1 foreground
        trimap_value = 0.5 * guidance[:, 1:2] + guidance[:, 2:3]
        return (self.matting(image, trimap_value),)


class AlphaNet(MattingModel):
    checkpoint_layouts = ()  # no published weights: our native layout only

    def __init__(self, settings: AlphaNetSettings):
        super().__init__(settings)
        _validate(settings)
        self.segmentation = DeepLabV3Plus(settings)
        self.trimap_layer = ErosionDilationTrimap(
            settings.mask_threshold, settings.erosion_percent, settings.dilation_percent, settings.max_radius
        )
        self.matting = AttentionMattingNet(settings.width)

    def stages(self) -> dict[str, Stage]:
        s = self.settings
        return {
            "semantic": Stage(
                "semantic",
                SemanticStage(self.segmentation, self.trimap_layer),
                (TensorSpec("image", 3),),
                (TensorSpec("semantic", 1), TensorSpec("trimap", 3)),
                s.semantic_size,
            ),
            "detail": Stage(
                "detail",
                DetailStage(self.matting),
                (TensorSpec("image", 3), TensorSpec("guidance", s.guidance_channels)),
                (TensorSpec("detail", 1),),
                s.tile_size,
            ),
        }

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_image(image)
        stages = self.stages()
        semantic, trimap = stages["semantic"].module(image)
        (detail,) = stages["detail"].module(image, self.guidance(image, trimap))
        alpha = get_fusion(self.settings.fusion)(trimap, detail)
        return {"semantic": semantic, "trimap": trimap, "detail": detail, "alpha": alpha}


def _validate(settings: AlphaNetSettings) -> None:
    problems = []
    if not 0.0 < settings.mask_threshold < 1.0:
        problems.append(f"mask_threshold must lie in (0, 1), got {settings.mask_threshold}")
    for field in ("erosion_percent", "dilation_percent"):
        value = getattr(settings, field)
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 100.0):
            problems.append(f"{field} must be a percentage in [0, 100], got {value!r}")
    if not isinstance(settings.max_radius, int) or settings.max_radius < 0:
        problems.append(f"max_radius must be a non-negative whole number of pixels, got {settings.max_radius!r}")
    if len(settings.aspp_rates) != 3 or any(int(r) < 1 for r in settings.aspp_rates):
        problems.append(f"aspp_rates must be three positive dilation rates, got {settings.aspp_rates!r}")
    if settings.stride_multiple % 32:
        problems.append(
            f"stride_multiple must be a multiple of 32 (five 2x poolings in the matting network), "
            f"got {settings.stride_multiple}"
        )
    for field in ("semantic_size", "tile_size"):
        value = getattr(settings, field)
        if value <= 0 or value % settings.stride_multiple:
            problems.append(
                f"{field} must be a positive multiple of stride_multiple {settings.stride_multiple}, got {value}"
            )
    if problems:
        raise InputError(f"invalid settings for {settings.name!r}: " + "; ".join(problems))


@register_model(AlphaNetSettings())
def alphanet(settings: AlphaNetSettings) -> AlphaNet:
    return AlphaNet(settings)


@register_model(
    AlphaNetSettings(
        name="alphanet_tiny",
        description="AlphaNet at 1/8 width with 64 x 64 stages, for tests",
        width=0.125,
        semantic_size=64,
        tile_size=64,
        tile_overlap=16,
        max_radius=8,
        variant_of="alphanet",
    )
)
def alphanet_tiny(settings: AlphaNetSettings) -> AlphaNet:
    return AlphaNet(settings)
