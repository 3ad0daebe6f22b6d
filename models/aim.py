"""AIM: Deep Automatic Natural Image Matting (Li, Zhang, Tao; IJCAI 2021).

One network (the authors' `AimNet`, supplementary Table 2) with a shared encoder and two
decoders:

- encoder: ResNet-34 whose 7x7 conv1 and all four stages run at stride 1; five 3x3/stride-2
  max-pools sit between them (two after conv1, one before each of layer2..layer4) and keep
  their indices for the matting decoder;
- semantic decoder: pyramid pooling (bins 1, 3, 5) on the last encoder feature, five blocks
  of 3x3 conv-BN-ReLU + bilinear x2 upsampling, each followed by squeeze-and-excitation
  (the fifth after the attention tap), every block but the first fed with the pooled
  features upsampled to its scale; a 3x3 head and a sigmoid give one score per class
  (background, transition, foreground);
- spatial attention: mean and max over the channels of the last semantic block's output,
  7x7 conv, sigmoid;
- matting decoder: a dilated bridge block, five conv blocks with max-unpooling (kernel 2,
  stride 2) by the encoder's pool indices, the attention applied as d + d * attention, a 3x3
  head and a sigmoid (the raw alpha).

mattrt splits the network into two stage calls sharing the same three parts (weights once):
"semantic" (image -> class scores and trimap) on the low-resolution canvas and "detail"
(image -> raw alpha) on tiles. The detail stage runs the semantic decoder too, because the
matting decoder's attention comes from it; it skips only the semantic head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mattrt.errors import InputError
from mattrt.models.backbones import ResNet, resnet34
from mattrt.models.base import MattingModel, Stage, TensorSpec
from mattrt.models.checkpoints import CheckpointLayout, prefix_renamer
from mattrt.models.fusion import FUSIONS
from mattrt.models.registry import register_model
from mattrt.models.settings import ModelSettings, scaled

# The authors' ResNet-34 keeps its ImageNet classifier (avgpool + fc to 1000 classes): AimNet
# never calls it (export drops it), but their checkpoints hold its weights (513,000 of the
# paper's 55.3M parameters), so we hold them too for strict loading.
IMAGENET_CLASSES = 1000
# Number of encoder max-pools; each halves the resolution, hence the stride multiple of 32.
NUM_POOLS = 5


@dataclass(frozen=True)
class AimSettings(ModelSettings):
    """AIM defaults.

    Sizes: the authors' hybrid test (core/test.py) runs the whole network twice, on the image
    resized to 1/4 for the semantic map and to 1/2 for the matting detail (sides cut down to
    multiples of 32, at most 1600; their samples are first shrunk to a shorter side of 1080),
    and they train on 320 x 320 inputs resized from 640-1280 px crops (scale 1/2 to 1/4).
    - semantic_size 512: the 1/4-scale view of a 2048 px image, i.e. the authors' semantic
      scale for the ~2K images of AIM-500 (shorter sides of at least 1080 px); a 512 canvas
      also leaves the pyramid pooling a 16 x 16 map, so bins 3 and 5 pool distinct regions.
    - tile_size 512: the 1/2-scale local pass of a 1080 px sample is 540 px on its shorter
      side, cut to 512 by their code, so a 512 tile gives the detail pass the context the
      authors' local pass had.
    Both must be multiples of 32 (five stride-2 pools), and adaptive pooling with bins 3 and 5
    exports shape-specialised, so each export fixes them.

    Fusion: "argmax_trimap" is the official code's fusion (`get_masked_local_from_global`: 0 in
    background, 1 in foreground, the raw alpha in the transition class of the per-pixel argmax),
    "aim_soft" is the paper's eq. (2) with U the expectation of (0, 0.5, 1) under the trimap.
    """

    name: str = "aim"
    description: str = (
        "AIM (IJCAI 2021): ResNet-34 with stride-1 stages and max-pool indices, PSP + SE semantic "
        "decoder (3-class generalized trimap), max-unpool matting decoder guided by spatial attention"
    )
    paper: str = "Li, Zhang, Tao. Deep Automatic Natural Image Matting. IJCAI 2021"
    stages: tuple[str, ...] = ("semantic", "detail")
    fusion: str = "argmax_trimap"
    guidance: str = "none"
    guidance_channels: int = 0
    stride_multiple: int = 32
    semantic_size: int = 512
    tile_size: int = 512
    tile_overlap: int = 64
    # Output bins of the pyramid pooling module (Table 2: multiscale = 1, 3, 5).
    psp_bins: tuple[int, ...] = (1, 3, 5)
    # Squeeze-and-excitation bottleneck: channels // reduction (Table 2: 256 -> 16, 64 -> 4).
    se_reduction: int = 16


def conv_bn_relu_stack(channels: list[int], dilation: int = 1) -> nn.Sequential:
    """3x3 conv (with bias, as the authors' decoders) + BN + ReLU for each step of `channels`."""
    layers: list[nn.Module] = []
    for cin, cout in zip(channels[:-1], channels[1:]):
        layers += [
            nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class SqueezeExcitation(nn.Module):
    """Channel re-weighting: global average -> linear -> ReLU -> linear -> sigmoid (no biases)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        # One Sequential named `fc` keeps the authors' parameter names (fc.0, fc.2).
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class PyramidPooling(nn.Module):
    """PSP module: adaptive average pools to each bin size, 1x1 conv, bilinear back to the input
    size, concatenated with the input, 1x1 conv (with bias) + ReLU."""

    def __init__(self, channels: int, out_channels: int, bins: tuple[int, ...]):
        super().__init__()
        self.bins = tuple(bins)
        self.bin_convs = nn.ModuleList(nn.Conv2d(channels, channels, 1, bias=False) for _ in self.bins)
        self.project = nn.Conv2d(channels * (len(self.bins) + 1), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(conv(F.adaptive_avg_pool2d(x, bin_size)), size=size, mode="bilinear", align_corners=False)
            for bin_size, conv in zip(self.bins, self.bin_convs)
        ]
        return F.relu(self.project(torch.cat([*pooled, x], dim=1)))


class PspLateral(nn.Module):
    """The pooled features brought to one semantic decoder scale: 3x3 conv + BN + ReLU, upsample."""

    def __init__(self, cin: int, cout: int, factor: int):
        super().__init__()
        self.factor = factor
        self.conv = conv_bn_relu_stack([cin, cout])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample(self.conv(x), self.factor)


class AimEncoder(nn.Module):
    """ResNet-34 (conv1 and every stage at stride 1) with the five index-keeping max-pools."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.backbone: ResNet = resnet34(
            width=width, strides=(1, 1, 1, 1), stem_stride=1, stem_pool=False, num_classes=IMAGENET_CLASSES
        )

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features [e0 (stride 1), e1 (4), e2 (8), e3 (16), e4 (32)] and the five pool indices
        (pool i's index maps its output back onto its input)."""
        net = self.backbone
        e0 = net.forward_stem(image)
        x, index0 = F.max_pool2d(e0, 3, 2, 1, return_indices=True)
        x, index1 = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        e1 = net.layer1(x)
        x, index2 = F.max_pool2d(e1, 3, 2, 1, return_indices=True)
        e2 = net.layer2(x)
        x, index3 = F.max_pool2d(e2, 3, 2, 1, return_indices=True)
        e3 = net.layer3(x)
        x, index4 = F.max_pool2d(e3, 3, 2, 1, return_indices=True)
        e4 = net.layer4(x)
        return [e0, e1, e2, e3, e4], [index0, index1, index2, index3, index4]


class SemanticDecoder(nn.Module):
    """PSP + five conv blocks with SE; block k works at stride 2**k and ends with a x2 upsample."""

    def __init__(self, width: float = 1.0, psp_bins: tuple[int, ...] = (1, 3, 5), se_reduction: int = 16):
        super().__init__()
        c64, c128, c256, c512 = (scaled(c, width) for c in (64, 128, 256, 512))
        self.psp = PyramidPooling(c512, c512, psp_bins)
        self.psp_to_stride16 = PspLateral(c512, c256, 2)
        self.psp_to_stride8 = PspLateral(c512, c128, 4)
        self.psp_to_stride4 = PspLateral(c512, c64, 8)
        self.psp_to_stride2 = PspLateral(c512, c64, 16)
        self.block4 = conv_bn_relu_stack([2 * c512, c512, c512, c256])
        self.block3 = conv_bn_relu_stack([2 * c256, c256, c256, c128])
        self.block2 = conv_bn_relu_stack([2 * c128, c128, c128, c64])
        self.block1 = conv_bn_relu_stack([2 * c64, c64, c64, c64])
        self.block0 = conv_bn_relu_stack([2 * c64, c64, c64])
        self.se4 = SqueezeExcitation(c256, se_reduction)
        self.se3 = SqueezeExcitation(c128, se_reduction)
        self.se2 = SqueezeExcitation(c64, se_reduction)
        self.se1 = SqueezeExcitation(c64, se_reduction)
        self.se0 = SqueezeExcitation(c64, se_reduction)
        self.spatial_attention = nn.Conv2d(2, 1, 7, padding=3)
        self.head = nn.Conv2d(c64, 3, 3, padding=1)

    def features(self, e4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block's output (before its SE) and the spatial attention map made from it."""
        psp = self.psp(e4)
        d = self.se4(upsample(self.block4(torch.cat([psp, e4], 1)), 2))
        d = self.se3(upsample(self.block3(torch.cat([self.psp_to_stride16(psp), d], 1)), 2))
        d = self.se2(upsample(self.block2(torch.cat([self.psp_to_stride8(psp), d], 1)), 2))
        d = self.se1(upsample(self.block1(torch.cat([self.psp_to_stride4(psp), d], 1)), 2))
        d = upsample(self.block0(torch.cat([self.psp_to_stride2(psp), d], 1)), 2)
        pooled = torch.cat([d.mean(dim=1, keepdim=True), d.amax(dim=1, keepdim=True)], 1)
        return d, torch.sigmoid(self.spatial_attention(pooled))

    def scores(self, last_block: torch.Tensor) -> torch.Tensor:
        """Per-class sigmoid scores (background, transition, foreground); not a distribution."""
        return torch.sigmoid(self.head(self.se0(last_block)))


class MattingDecoder(nn.Module):
    """Dilated bridge + five conv blocks with max-unpooling by the encoder's indices, guided at
    full resolution by the semantic decoder's spatial attention."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        c64, c128, c256, c512 = (scaled(c, width) for c in (64, 128, 256, 512))
        self.bridge = conv_bn_relu_stack([c512, c512, c512, c512], dilation=2)
        self.block4 = conv_bn_relu_stack([2 * c512, c512, c512, c256])
        self.block3 = conv_bn_relu_stack([2 * c256, c256, c256, c128])
        self.block2 = conv_bn_relu_stack([2 * c128, c128, c128, c64])
        self.block1 = conv_bn_relu_stack([2 * c64, c64, c64, c64])
        self.block0 = conv_bn_relu_stack([2 * c64, c64, c64])
        self.head = nn.Conv2d(c64, 1, 3, padding=1)

    def forward(
        self, features: list[torch.Tensor], indices: list[torch.Tensor], attention: torch.Tensor
    ) -> torch.Tensor:
        e0, e1, e2, e3, e4 = features
        d = self.block4(torch.cat([self.bridge(e4), e4], 1))
        d = self.block3(torch.cat([F.max_unpool2d(d, indices[4], 2, 2), e3], 1))
        d = self.block2(torch.cat([F.max_unpool2d(d, indices[3], 2, 2), e2], 1))
        d = self.block1(torch.cat([F.max_unpool2d(d, indices[2], 2, 2), e1], 1))
        # Two pools sit between conv1 and layer1, so two unpools precede the last block.
        d = F.max_unpool2d(F.max_unpool2d(d, indices[1], 2, 2), indices[0], 2, 2)
        d = self.block0(torch.cat([d, e0], 1))
        d = d + d * attention
        return torch.sigmoid(self.head(d))


def scores_to_trimap(scores: torch.Tensor) -> torch.Tensor:
    """AIM's three independent sigmoid scores normalised to sum to 1 per pixel.

    Division by a common positive sum keeps the per-pixel class order (the argmax the official
    fusion uses), except that two scores a float32 ulp apart may round to a tie.
    """
    return scores / scores.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


class AimSemanticStage(nn.Module):
    """image -> (semantic: class sigmoid scores, trimap: the scores normalised to sum to 1)."""

    def __init__(self, encoder: AimEncoder, semantic_decoder: SemanticDecoder):
        super().__init__()
        self.encoder = encoder
        self.semantic_decoder = semantic_decoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, _ = self.encoder(image)
        last_block, _ = self.semantic_decoder.features(features[-1])
        scores = self.semantic_decoder.scores(last_block)
        return scores, scores_to_trimap(scores)


class AimDetailStage(nn.Module):
    """image -> (detail,): the matting decoder's raw alpha. It runs the semantic decoder up to
    the spatial attention (not its SE0 + head, whose few weights it still holds)."""

    def __init__(self, encoder: AimEncoder, semantic_decoder: SemanticDecoder, matting_decoder: MattingDecoder):
        super().__init__()
        self.encoder = encoder
        self.semantic_decoder = semantic_decoder
        self.matting_decoder = matting_decoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        features, indices = self.encoder(image)
        _, attention = self.semantic_decoder.features(features[-1])
        return (self.matting_decoder(features, indices, attention),)


def _authors_key_pairs() -> list[tuple[str, str | tuple[str, ...]]]:
    """(our prefix, their prefix(es)) for JizhiziLi/AIM core/network/AimNet.py.

    Their AimNet holds the backbone as `resnet` and again as encoder0..encoder4 (views of the
    same modules), so its state_dict has every encoder tensor twice; the ImageNet classifier
    only under `resnet.fc`. Their `encoder0` is Sequential(conv1, bn1, relu) and `encoder1`
    is Sequential(layer1). Their decoder{k}_g / decoder{k}_l are our blocks k, psp{k} brings
    the pooled features to stride 2**k, and each PSP stage is Sequential(pool, conv).
    """
    backbone = "encoder.backbone."
    pairs: list[tuple[str, str | tuple[str, ...]]] = [
        (backbone + "conv1.", ("resnet.conv1.", "encoder0.0.")),
        (backbone + "bn1.", ("resnet.bn1.", "encoder0.1.")),
        (backbone + "layer1.", ("resnet.layer1.", "encoder1.0.")),
        (backbone + "layer2.", ("resnet.layer2.", "encoder2.")),
        (backbone + "layer3.", ("resnet.layer3.", "encoder3.")),
        (backbone + "layer4.", ("resnet.layer4.", "encoder4.")),
        (backbone + "fc.", "resnet.fc."),
        ("semantic_decoder.psp.project.", "psp_module.bottleneck."),
        ("semantic_decoder.psp_to_stride16.conv.", "psp4."),
        ("semantic_decoder.psp_to_stride8.conv.", "psp3."),
        ("semantic_decoder.psp_to_stride4.conv.", "psp2."),
        ("semantic_decoder.psp_to_stride2.conv.", "psp1."),
        ("semantic_decoder.spatial_attention.", "decoder0_g_spatial."),
        ("semantic_decoder.head.", "decoder_final_g."),
        ("matting_decoder.bridge.", "bridge_block."),
        ("matting_decoder.head.", "decoder_final_l."),
    ]
    for i in range(len(AimSettings().psp_bins)):
        pairs.append((f"semantic_decoder.psp.bin_convs.{i}.", f"psp_module.stages.{i}.1."))
    for level in range(5):
        pairs.append((f"semantic_decoder.block{level}.", f"decoder{level}_g."))
        pairs.append((f"semantic_decoder.se{level}.", f"decoder{level}_g_se."))
        pairs.append((f"matting_decoder.block{level}.", f"decoder{level}_l."))
    return pairs


AUTHORS_LAYOUT = CheckpointLayout(
    name="JizhiziLi/AIM AimNet",
    source="github.com/JizhiziLi/AIM core/network/AimNet.py + core/network/resnet_mp.py",
    their_keys=prefix_renamer(_authors_key_pairs()),
)


class AimModel(MattingModel):
    """AIM as a MattingModel: the authors' AimNet (encoder, semantic decoder, matting decoder),
    whose parts the semantic and detail stages share."""

    checkpoint_layouts = (AUTHORS_LAYOUT,)

    def __init__(self, settings: AimSettings):
        super().__init__(settings)
        for field_name in ("semantic_size", "tile_size"):
            size = getattr(settings, field_name)
            if size <= 0 or size % settings.stride_multiple:
                raise InputError(
                    f"aim: {field_name} must be a positive multiple of {settings.stride_multiple} "
                    f"(five stride-2 pools), got {size}"
                )
        if settings.guidance != "none" or settings.guidance_channels != 0:
            raise InputError(
                "aim: the detail stage reads the image only (guidance 'none', 0 channels), "
                f"got guidance {settings.guidance!r} with {settings.guidance_channels} channels"
            )
        if settings.stride_multiple % 2**NUM_POOLS:
            raise InputError(
                f"aim: stride_multiple must be a multiple of {2**NUM_POOLS} (five stride-2 pools), "
                f"got {settings.stride_multiple}"
            )
        self.encoder = AimEncoder(settings.width)
        self.semantic_decoder = SemanticDecoder(settings.width, tuple(settings.psp_bins), settings.se_reduction)
        self.matting_decoder = MattingDecoder(settings.width)

    def stages(self) -> dict[str, Stage]:
        s = self.settings
        image = TensorSpec("image", 3)
        built = {
            "semantic": Stage(
                "semantic",
                AimSemanticStage(self.encoder, self.semantic_decoder),
                (image,),
                (TensorSpec("semantic", 3), TensorSpec("trimap", 3)),
                s.semantic_size,
            ),
            "detail": Stage(
                "detail",
                AimDetailStage(self.encoder, self.semantic_decoder, self.matting_decoder),
                (image,),
                (TensorSpec("detail", 1),),
                s.tile_size,
            ),
        }
        unknown = [name for name in s.stages if name not in built]
        if unknown:
            raise InputError(
                f"aim: unknown stage(s) {', '.join(unknown)} in settings.stages; AIM has {', '.join(built)}"
            )
        return {name: built[name] for name in s.stages}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The whole network once at the input resolution (the authors' AimNet.forward)."""
        self.check_image(image)
        features, indices = self.encoder(image)
        last_block, attention = self.semantic_decoder.features(features[-1])
        scores = self.semantic_decoder.scores(last_block)
        detail = self.matting_decoder(features, indices, attention)
        trimap = scores_to_trimap(scores)
        alpha = FUSIONS[self.settings.fusion](trimap, detail)
        return {"semantic": scores, "trimap": trimap, "detail": detail, "alpha": alpha}


@register_model(AimSettings())
def aim(settings: AimSettings) -> AimModel:
    return AimModel(settings)


@register_model(
    AimSettings(
        name="aim_tiny",
        description="AIM at 1/8 width with 64 px stages, for tests",
        width=0.125,
        semantic_size=64,
        tile_size=64,
        tile_overlap=16,
        variant_of="aim",
    )
)
def aim_tiny(settings: AimSettings) -> AimModel:
    return AimModel(settings)


__all__ = [
    "AimSettings",
    "AimModel",
    "AimEncoder",
    "SemanticDecoder",
    "MattingDecoder",
    "AimSemanticStage",
    "AimDetailStage",
    "AUTHORS_LAYOUT",
    "scores_to_trimap",
]
