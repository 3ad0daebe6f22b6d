"""SHM: Semantic Human Matting (Chen, Ge, Xu, Zhang, Yang, Gai; ACM Multimedia 2018).

Two networks and a fusion (paper, Sec. 4):

- T-Net, a PSPNet-50: dilated ResNet-50 with output stride 8 and pyramid pooling over bins
  1, 2, 3, 6, giving 3-class trimap logits (background, unknown, foreground) at the input size;
- M-Net, a VGG16-BN encoder (13 convs, 4 max-pools that keep their indices; 6 input channels:
  the image and the 3 trimap probabilities) and a decoder of 6 convs and 4 max-unpools, giving
  the raw alpha alpha_r (a plain linear output: neither the paper nor tsing90 bound it);
- fusion, eq. (4): alpha = F_s + U_s * alpha_r with the softmax probabilities F_s, U_s.

The authors released no code. The most-used unofficial implementation,
tsing90/pytorch_semantic_human_matting, defines the layout mattrt loads (model/network.py,
T_Net_psp.py, M_Net.py, extractors.py). Its T-Net is a PSPNet-50 variant, the default here
(semantic_head="tsing90"):
- backbone: torchvision-style ResNet-50 (7x7 stem + max-pool), layer3/layer4 at stride 1 with
  dilation 2/4, but the first block of each of those stages undilated (their _make_layer does
  not pass the dilation to it);
- head: per bin an adaptive average pool + 1x1 conv keeping all 2048 channels (no BN), bilinear
  back (align_corners=True), concatenated after the pooled maps, 1x1 conv (bias) to 1024 +
  ReLU; then three x2 bilinear upsamplings each followed by 3x3 conv (bias) + BN + PReLU
  (1024 -> 256 -> 64 -> 64) and a 1x1 conv to the 3 classes. Dropout2d (0.3, 0.15) between
  them is inactive at inference. An auxiliary 1024 -> 256 -> 3 linear classifier is built but
  never called; its weights are in their checkpoints, so it is held here (unused) for strict
  loading.
semantic_head="zhao2017" builds Zhao et al.'s original PSPNet-50 instead (deep 3-conv stem,
every block of layer3/layer4 dilated, 512-channel BN-ReLU pyramid branches concatenated after
the features, 3x3 conv 4096 -> 512 + BN + ReLU, Dropout2d 0.1, 1x1 classifier, one bilinear
upsampling by 8). No public SHM checkpoint uses it: it loads our own layout only.

Class order: tsing90 labels the trimap 0 = background, 1 = unknown (128), 2 = foreground (255)
(data/dataset.py) and its end-to-end net_F splits the softmax as (bg, unsure, fg): the same
order as mattrt's TRIMAP_CLASSES, so no permutation is needed.

Input normalisation: tsing90 feeds cv2.imread images (BGR) scaled to [0, 1], no mean/std;
the settings say so, since their weights expect it.

Checkpoints: tsing90's train.py saves {"epoch", "state_dict"} of net_T (keys t_net.*: T-Net
pre-training), net_M (m_net.*: M-Net pre-training) or net_F (both: end-to-end). A single file
is the end-to-end layout; the pre-trained pair loads as create_model("shm",
checkpoint={"t_net": ..., "m_net": ...}).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mattrt.errors import InputError
from mattrt.models.backbones import ResNet, resnet50
from mattrt.models.base import MattingModel, Stage, TensorSpec
from mattrt.models.checkpoints import CheckpointLayout, prefix_renamer
from mattrt.models.fusion import FUSIONS
from mattrt.models.registry import register_model
from mattrt.models.settings import ModelSettings, scaled

SEMANTIC_HEADS = ("tsing90", "zhao2017")
# M-Net's four 2x2 max-pools: tiles must halve evenly four times for the unpools to line up.
MNET_STRIDE = 16
# VGG16 conv layers per encoder stage and their widths (Simonyan & Zisserman, config D).
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


@dataclass(frozen=True)
class ShmSettings(ModelSettings):
    """SHM defaults.

    Sizes: the full-image reference runs both networks on the whole image, which needs sides
    that are multiples of 16 (M-Net's four 2x2 pools; T-Net's stride 8 divides it), hence
    stride_multiple 16. The semantic canvas is fixed at 480 = 48 x 10: a multiple of 48 =
    8 (T-Net stride) x 6 (largest pyramid bin, and a multiple of bins 1, 2, 3) makes the
    60 x 60 feature map split into equal, non-overlapping windows for every bin: each adaptive
    pool is then a fixed-window average pool, and the exporter writes it as a plain
    AveragePool (ReduceMean for bin 1) instead of shape-specialised gathers. 480 sits between
    T-Net's 400 px training crops (paper Sec. 4.5 and tsing90's default) and the 512 canvas of
    the other models. M-Net tiles are 512 px (a multiple of 16): it trained on 320 px crops and
    the paper runs it on whole images up to 1500 px, so a larger tile keeps more context and
    spends less on overlap.
    """

    name: str = "shm"
    description: str = (
        "Semantic Human Matting (MM 2018): T-Net PSPNet-50 trimap, M-Net VGG16-BN encoder-decoder "
        "with max-unpooling on image + trimap probabilities, alpha = F + U * alpha_r"
    )
    paper: str = "Chen, Ge, Xu, Zhang, Yang, Gai. Semantic Human Matting. ACM Multimedia 2018"
    stages: tuple[str, ...] = ("semantic", "detail")
    fusion: str = "unknown_blend"
    guidance: str = "trimap"
    guidance_channels: int = 3
    channel_order: str = "BGR"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    stride_multiple: int = MNET_STRIDE
    semantic_size: int = 480
    tile_size: int = 512
    tile_overlap: int = 64
    # "tsing90": the PSPNet variant of tsing90's T-Net (loads their checkpoints);
    # "zhao2017": the original PSPNet-50 head and deep stem (our layout only).
    semantic_head: str = "tsing90"
    psp_bins: tuple[int, ...] = (1, 2, 3, 6)


def resize_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    # Both tsing90's and Zhao et al.'s PSPNet resize with align_corners=True.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class PyramidPooling(nn.Module):
    """tsing90's pyramid pooling: per bin, pool + full-width 1x1 conv (no bias, no BN) and
    bilinear back; concatenated [pooled..., features], 1x1 conv (bias) + ReLU."""

    def __init__(self, channels: int, out_channels: int, bins: tuple[int, ...]):
        super().__init__()
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(nn.Conv2d(channels, channels, 1, bias=False) for _ in self.bins)
        self.project = nn.Conv2d(channels * (len(self.bins) + 1), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [resize_bilinear(conv(F.adaptive_avg_pool2d(x, b)), size) for b, conv in zip(self.bins, self.branches)]
        return F.relu(self.project(torch.cat([*pooled, x], dim=1)))


class UpsampleBlock(nn.Module):
    """x2 bilinear upsampling, then 3x3 conv (bias) + BN + PReLU (one shared slope)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = resize_bilinear(x, (2 * x.shape[-2], 2 * x.shape[-1]))
        return self.act(self.bn(self.conv(x)))


class Tsing90Head(nn.Module):
    """Pyramid pooling to 1024 channels, three learned x2 upsamplings, 1x1 classifier."""

    def __init__(self, channels: int, num_classes: int, bins: tuple[int, ...], width: float):
        super().__init__()
        c64, c256, c1024 = (scaled(c, width) for c in (64, 256, 1024))
        self.pyramid = PyramidPooling(channels, c1024, bins)
        self.pyramid_dropout = nn.Dropout2d(0.3)
        self.decoder = nn.ModuleList([UpsampleBlock(c1024, c256), UpsampleBlock(c256, c64), UpsampleBlock(c64, c64)])
        self.decoder_dropout = nn.Dropout2d(0.15)
        self.classifier = nn.Conv2d(c64, num_classes, 1)
        # Never called (tsing90 commented its use out); held so their checkpoints load strictly.
        self.aux_classifier = nn.Sequential(nn.Linear(c1024, c256), nn.ReLU(), nn.Linear(c256, num_classes))

    def forward(self, features: torch.Tensor, size) -> torch.Tensor:
        x = self.pyramid_dropout(self.pyramid(features))
        for block in self.decoder:
            x = self.decoder_dropout(block(x))
        # Three x2 steps from stride 8 land on the input size for sides that are multiples of 8.
        return self.classifier(x)


class Zhao2017Head(nn.Module):
    """PSPNet's head (Zhao et al. 2017): 512-channel pool-conv-BN-ReLU branches concatenated
    after the features, 3x3 conv + BN + ReLU, dropout, 1x1 classifier, bilinear to the input."""

    def __init__(self, channels: int, num_classes: int, bins: tuple[int, ...], width: float):
        super().__init__()
        self.bins = tuple(bins)
        reduced = channels // len(self.bins)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, reduced, 1, bias=False), nn.BatchNorm2d(reduced), nn.ReLU(inplace=True))
            for _ in self.bins
        )
        c512 = scaled(512, width)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + reduced * len(self.bins), c512, 3, padding=1, bias=False),
            nn.BatchNorm2d(c512),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
        )
        self.classifier = nn.Conv2d(c512, num_classes, 1)

    def forward(self, features: torch.Tensor, size) -> torch.Tensor:
        grid = features.shape[-2:]
        pooled = [
            resize_bilinear(branch(F.adaptive_avg_pool2d(features, b)), grid) for b, branch in zip(self.bins, self.branches)
        ]
        logits = self.classifier(self.fuse(torch.cat([features, *pooled], dim=1)))
        return resize_bilinear(logits, size)


class TNet(nn.Module):
    """PSPNet-50 trimap network: image -> 3-class logits (background, unknown, foreground)."""

    def __init__(self, head: str = "tsing90", width: float = 1.0, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        if head == "tsing90":
            # Standard stem; the first block of layer3/layer4 stays undilated, as in their code.
            self.backbone: ResNet = resnet50(
                width=width, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), first_dilations=(1, 1, 1, 1)
            )
            head_cls = Tsing90Head
        elif head == "zhao2017":
            self.backbone = resnet50(
                width=width, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), first_dilations=(1, 1, 2, 4), stem="deep"
            )
            head_cls = Zhao2017Head
        else:
            raise InputError(f"shm: unknown semantic_head {head!r}; choose one of {', '.join(SEMANTIC_HEADS)}")
        self.head = head_cls(self.backbone.stage_channels[-1], 3, tuple(bins), width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(image), image.shape[-2:])


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Conv (with bias, as tsing90's M-Net) + BN + ReLU; Sequential indices 0, 1, 2."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MNet(nn.Module):
    """VGG16-BN encoder-decoder: 13 3x3 convs with 4 index-keeping 2x2 max-pools, then a 5x5
    conv at 1/16, 4 max-unpools each followed by a 5x5 conv, and a 5x5 conv to 1 channel.

    Attributes conv{stage}_{i} (encoder), deconv{stage} (decoder), alpha (output conv).
    """

    def __init__(self, in_channels: int = 6, width: float = 1.0):
        super().__init__()
        self.stage_depths = tuple(depth for _, depth in VGG16_STAGES)
        widths = [scaled(c, width) for c, _ in VGG16_STAGES]
        cin = in_channels
        for stage, (cout, depth) in enumerate(zip(widths, self.stage_depths), start=1):
            for i in range(1, depth + 1):
                setattr(self, f"conv{stage}_{i}", conv_bn_relu(cin, cout, 3))
                cin = cout
        # deconv5 stays at 1/16; deconv{k} (k = 4..1) follows the unpool by pool k's indices
        # and ends at the width of encoder stage k - 1 (the channels pool k - 1 recorded).
        self.deconv5 = conv_bn_relu(widths[4], widths[3], 5)
        self.deconv4 = conv_bn_relu(widths[3], widths[2], 5)
        self.deconv3 = conv_bn_relu(widths[2], widths[1], 5)
        self.deconv2 = conv_bn_relu(widths[1], widths[0], 5)
        self.deconv1 = conv_bn_relu(widths[0], widths[0], 5)
        self.alpha = nn.Conv2d(widths[0], 1, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices = []
        for stage, depth in enumerate(self.stage_depths, start=1):
            for i in range(1, depth + 1):
                x = getattr(self, f"conv{stage}_{i}")(x)
            if stage < len(self.stage_depths):
                x, index = F.max_pool2d(x, 2, 2, return_indices=True)
                indices.append(index)
        x = self.deconv5(x)
        for stage in range(len(indices), 0, -1):
            x = F.max_unpool2d(x, indices[stage - 1], 2, 2)
            x = getattr(self, f"deconv{stage}")(x)
        return self.alpha(x)


class ShmSemanticStage(nn.Module):
    """image -> (semantic: T-Net logits, trimap: their softmax)."""

    def __init__(self, tnet: TNet):
        super().__init__()
        self.tnet = tnet

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.tnet(image)
        return logits, torch.softmax(logits, dim=1)


class ShmDetailStage(nn.Module):
    """(image, guidance = trimap probabilities) -> (detail,): M-Net's raw alpha."""

    def __init__(self, mnet: MNet):
        super().__init__()
        self.mnet = mnet

    def forward(self, image: torch.Tensor, guidance: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.mnet(torch.cat([image, guidance], dim=1)),)


def _tnet_pairs(ours: str, bins: int = 4) -> list[tuple[str, str]]:
    """(our prefix, their prefix) for tsing90's PSPNet as `t_net` (model/T_Net_psp.py).

    Their PSPModule stage i is Sequential(AdaptiveAvgPool2d, Conv2d), PSPUpsample.conv is
    Sequential(Conv2d, BatchNorm2d, PReLU), final is Sequential(Conv2d); their unused
    classifier is Sequential(Linear, ReLU, Linear).
    """
    pairs = [
        (f"{ours}backbone.", "t_net.feats."),
        (f"{ours}head.pyramid.project.", "t_net.psp.bottleneck."),
        (f"{ours}head.classifier.", "t_net.final.0."),
        (f"{ours}head.aux_classifier.", "t_net.classifier."),
    ]
    pairs += [(f"{ours}head.pyramid.branches.{i}.", f"t_net.psp.stages.{i}.1.") for i in range(bins)]
    for i in range(3):
        for j, name in enumerate(("conv", "bn", "act")):
            pairs.append((f"{ours}head.decoder.{i}.{name}.", f"t_net.up_{i + 1}.conv.{j}."))
    return pairs


def _mnet_pairs(ours: str) -> list[tuple[str, str]]:
    """(our prefix, their prefix) for tsing90's M_net as `m_net` (model/M_Net.py): conv_{s}_{i}
    and deconv_{s} are Sequential(Conv2d, BatchNorm2d, ReLU) like ours; conv_0 is our alpha."""
    pairs = [(f"{ours}alpha.", "m_net.conv_0.")]
    for stage, (_, depth) in enumerate(VGG16_STAGES, start=1):
        pairs += [(f"{ours}conv{stage}_{i}.", f"m_net.conv_{stage}_{i}.") for i in range(1, depth + 1)]
        pairs.append((f"{ours}deconv{stage}.", f"m_net.deconv_{stage}."))
    return pairs


_SOURCE = "github.com/tsing90/pytorch_semantic_human_matting model/network.py ({}), model/T_Net_psp.py, model/M_Net.py"
TSING90_END_TO_END = CheckpointLayout(
    name="tsing90/pytorch_semantic_human_matting net_F (end_to_end)",
    source=_SOURCE.format("net_F"),
    their_keys=prefix_renamer(_tnet_pairs("tnet.") + _mnet_pairs("mnet.")),
)
TSING90_T_NET = CheckpointLayout(
    name="tsing90/pytorch_semantic_human_matting net_T (pre_train_t_net)",
    source=_SOURCE.format("net_T"),
    their_keys=prefix_renamer(_tnet_pairs("")),
)
TSING90_M_NET = CheckpointLayout(
    name="tsing90/pytorch_semantic_human_matting net_M (pre_train_m_net)",
    source=_SOURCE.format("net_M"),
    their_keys=prefix_renamer(_mnet_pairs("")),
)


class ShmModel(MattingModel):
    """SHM as a MattingModel: T-Net behind the semantic stage, M-Net behind the detail stage."""

    checkpoint_layouts = (TSING90_END_TO_END,)

    def __init__(self, settings: ShmSettings):
        super().__init__(settings)
        if settings.guidance != "trimap" or settings.guidance_channels != 3:
            raise InputError(
                "shm: M-Net reads the image and the 3 trimap probabilities (guidance 'trimap', 3 channels), "
                f"got guidance {settings.guidance!r} with {settings.guidance_channels} channels"
            )
        if settings.stride_multiple % MNET_STRIDE:
            raise InputError(
                f"shm: stride_multiple must be a multiple of {MNET_STRIDE} (M-Net's four 2x2 pools), "
                f"got {settings.stride_multiple}"
            )
        for field_name in ("semantic_size", "tile_size"):
            size = getattr(settings, field_name)
            if size <= 0 or size % settings.stride_multiple:
                raise InputError(
                    f"shm: {field_name} must be a positive multiple of {settings.stride_multiple}, got {size}"
                )
        if not settings.psp_bins or any(b <= 0 for b in settings.psp_bins):
            raise InputError(f"shm: psp_bins must be positive bin counts, got {settings.psp_bins}")
        self.tnet = TNet(settings.semantic_head, settings.width, tuple(settings.psp_bins))
        self.mnet = MNet(3 + settings.guidance_channels, settings.width)

    def checkpoint_parts(self):
        """tsing90's two pre-training checkpoints: T-Net (net_T) and M-Net (net_M)."""
        return {"t_net": (self.tnet, (TSING90_T_NET,)), "m_net": (self.mnet, (TSING90_M_NET,))}

    def stages(self) -> dict[str, Stage]:
        s = self.settings
        image = TensorSpec("image", 3)
        built = {
            "semantic": Stage(
                "semantic",
                ShmSemanticStage(self.tnet),
                (image,),
                (TensorSpec("semantic", 3), TensorSpec("trimap", 3)),
                s.semantic_size,
            ),
            "detail": Stage(
                "detail",
                ShmDetailStage(self.mnet),
                (image, TensorSpec("guidance", s.guidance_channels)),
                (TensorSpec("detail", 1),),
                s.tile_size,
            ),
        }
        return {name: built[name] for name in s.stages}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_image(image)
        logits = self.tnet(image)
        trimap = torch.softmax(logits, dim=1)
        detail = self.mnet(torch.cat([image, self.guidance(image, trimap)], dim=1))
        alpha = FUSIONS[self.settings.fusion](trimap, detail)
        return {"semantic": logits, "trimap": trimap, "detail": detail, "alpha": alpha}


@register_model(ShmSettings())
def shm(settings: ShmSettings) -> ShmModel:
    return ShmModel(settings)


@register_model(
    ShmSettings(
        name="shm_tiny",
        description="SHM at 1/8 width with a 96 px canvas and 64 px tiles, for tests",
        width=0.125,
        semantic_size=96,  # 96 / 8 = 12 features: every bin (1, 2, 3, 6) divides it, as at 480
        tile_size=64,
        tile_overlap=16,
        variant_of="shm",
    )
)
def shm_tiny(settings: ShmSettings) -> ShmModel:
    return ShmModel(settings)


__all__ = [
    "ShmSettings",
    "ShmModel",
    "TNet",
    "MNet",
    "ShmSemanticStage",
    "ShmDetailStage",
    "TSING90_END_TO_END",
    "TSING90_T_NET",
    "TSING90_M_NET",
]
