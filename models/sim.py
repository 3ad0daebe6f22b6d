"""Semantic Image Matting (Sun, Tang, Tai; CVPR 2021), official code nowsyn/SIM.

Three separately trained networks make one automatic matting model here:

- trimap stage: the SIM paper takes a user trimap; mattrt takes the semantic stage of another
  registered model instead (`settings.trimap_model`, the Salient Trimap Network by default)
  and hardens its probabilities by the per-pixel argmax;
- patch classifier (their `networks/resnet.py` ResNet-50 with 4 input channels: normalised
  RGB + trimap / 255, 20 matting classes): its class activation maps (CAM: the layer4
  features projected by the fully connected weights, no bias, upsampled bilinearly to the
  window) are computed on overlapping windows of 320 and 800 px and stitched into 20 score
  maps (`semantic_scores`, the authors' `extract_semantic_trimap_whole`);
- matting network (their `networks/model.py` as config/sim.toml selects: encoder
  "resnet50_BN", n_channel 11, ASPP rates 12/24/36 with 256 channels):
  * encoder: ResNet-50 v1c with BatchNorm, deep stem (3x3 convs 64, 64, 128, the first with
    stride 2) over 11 channels (normalised RGB, 6 click maps, 2 trimap channels); the 20
    score maps enter through `conv1_side` (7x7, stride 2) added to the first stem conv; layer3
    and layer4 dilated 2 and 4 (the first block of each by half that), output stride 8;
  * decoder: ASPP (1x1, three 3x3 atrous, global pooling; projection), then three up-conv
    stages (each conv, BatchNorm, LeakyReLU; bilinear x2 after each) fed with layer1 and the
    stem output, and three heads on [features, normalised RGB, RGB in [0, 1], 2 trimap
    channels]: alpha (1), foreground + background (6, sigmoid) and, on the features alone,
    attention (3, sigmoid; the content-sensitive weights of the gradient loss). The ASPP and
    up-conv convolutions standardise their weights (their `layers_WS.Conv2d`) although they
    are followed by BatchNorm; encoder and head convolutions are plain.

Pipeline stages: "semantic" (the trimap model's), one "classifier_<w>" stage per window size
w of `settings.classifier_windows` (all sharing the classifier; only the window size
differs), and "detail" (image + the 28-channel guidance -> raw alpha). The guidance is built
by the plain function `sim_guidance` (models/sim_guidance.py), so a runtime can run it with any backend by passing the
classifier call. Fusion "argmax_trimap" gives the authors' final step: alpha clamped, 0 where
the hard trimap is background, 1 where it is foreground.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mattrt.errors import InputError
from mattrt.models.backbones import Bottleneck, ResNet
from mattrt.models.base import MattingModel, Stage, TensorSpec
from mattrt.models.checkpoints import CheckpointLayout
from mattrt.models.fusion import FUSIONS
from mattrt.models.registry import create_model, get_settings, register_model
from mattrt.models.settings import ModelSettings, scaled
from mattrt.models.sim_guidance import (
    CLICK_CHANNELS,
    MATTING_CLASSES,
    TRIMAP_CHANNELS,
    classifier_stage_name,
    sim_guidance,
    stages_for,
)

RESNET50_BLOCKS = (3, 4, 6, 3)
# Classifier windows of the reduced test variant.
TINY_WINDOWS = (32, 64)


@dataclass(frozen=True)
class SimSettings(ModelSettings):
    """Semantic Image Matting defaults (values of the authors' config/sim.toml and scripts/main.py).

    - trimap_model: the registered model whose "semantic" stage gives the trimap.
    - semantic_size: None means "the trimap model's semantic_size" (resolved when the model is
      built; the built model's settings hold the number).
    - classifier_windows: window sides of the patch classifier, stride half a window
      (extract_semantic_trimap_whole uses 320 and 800). `stages` lists one
      "classifier_<w>" stage per window; it follows this field.
    - click_scale: L of trimap_to_clks (320 in their preprocess, independent of image size).
    - window_batch: windows per classifier call while building the guidance (memory bound:
      the CAM of one 800 px window is 20 x 800 x 800 floats).
    - stride_multiple 8: the matting network's output stride (their preprocess pads to it).
    - tile_size 640: twice the classifier's training patch and close to their 640 px crops.
    """

    name: str = "semantic"
    description: str = (
        "Semantic Image Matting (CVPR 2021): a trimap stage, a ResNet-50 patch classifier whose "
        "class activation maps over 320/800 px windows give 20 matting-class score maps, and a "
        "dilated ResNet-50 + ASPP matting network predicting alpha, foreground and background"
    )
    paper: str = "Sun, Tang, Tai. Semantic Image Matting. CVPR 2021"
    stages: tuple[str, ...] = ("semantic", "classifier_320", "classifier_800", "detail")
    fusion: str = "argmax_trimap"
    guidance: str = "sim"
    guidance_channels: int = TRIMAP_CHANNELS + CLICK_CHANNELS + len(MATTING_CLASSES)
    stride_multiple: int = 8
    semantic_size: int | None = None  # type: ignore[assignment]
    tile_size: int = 640
    tile_overlap: int = 64
    trimap_model: str = "salient"
    classifier_windows: tuple[int, ...] = (320, 800)
    num_classes: int = len(MATTING_CLASSES)
    click_scale: float = 320.0
    window_batch: int = 8
    atrous_rates: tuple[int, ...] = (12, 24, 36)
    aspp_channels: int = 256


# ----------------------------------------------------------------------------------------
# Matting network
# ----------------------------------------------------------------------------------------
class WSConv2d(nn.Conv2d):
    """Convolution with weight standardisation (their networks/layers_WS.Conv2d): each output
    filter is centred and divided by sqrt(unbiased variance + 1e-12) + 1e-5 before use."""

    def standardised_weight(self) -> torch.Tensor:
        weight = self.weight
        centred = weight - weight.mean(dim=(1, 2, 3), keepdim=True)
        variance = centred.flatten(1).var(dim=1, unbiased=True)
        scale = torch.sqrt(variance + 1e-12) + 1e-5
        return centred / scale[:, None, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardised_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def ws_conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    padding = dilation * (kernel - 1) // 2
    return [WSConv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class AsppPooling(nn.Sequential):
    """Image-level branch: global average, 1x1 conv, BN, ReLU, broadcast back to the input size
    (bilinear upsampling of a 1 x 1 map, as theirs, is exactly this broadcast)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *ws_conv_bn_relu(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).expand(-1, -1, x.shape[2], x.shape[3])


class Aspp(nn.Module):
    """Atrous spatial pyramid pooling (their networks/ppm.py ASPP with BatchNorm)."""

    def __init__(self, cin: int, rates: Sequence[int], cout: int):
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*ws_conv_bn_relu(cin, cout, 1))]
        branches += [nn.Sequential(*ws_conv_bn_relu(cin, cout, 3, dilation=r)) for r in rates]
        branches.append(AsppPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        # Dropout is part of their training graph; in eval mode it is the identity.
        self.project = nn.Sequential(*ws_conv_bn_relu(len(branches) * cout, cout, 1), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


def up_conv(cin: int, couts: Sequence[int]) -> nn.Sequential:
    """Their up-conv stages: (weight-standardised 3x3 conv with bias, BN, LeakyReLU) per width."""
    layers: list[nn.Module] = []
    for cout in couts:
        layers += [WSConv2d(cin, cout, 3, padding=1, bias=True), nn.BatchNorm2d(cout), nn.LeakyReLU()]
        cin = cout
    return nn.Sequential(*layers)


def prediction_head(cin: int, hidden: Sequence[int], cout: int) -> nn.Sequential:
    """Two 3x3 convs (bias, LeakyReLU) and a 1x1 conv without bias."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Conv2d(cin, width, 3, padding=1, bias=True), nn.LeakyReLU()]
        cin = width
    layers.append(nn.Conv2d(cin, cout, 1, bias=False))
    return nn.Sequential(*layers)


class SimEncoder(ResNet):
    """Dilated ResNet-50 v1c (deep stem) with the score maps' side convolution `conv1_side`."""

    def __init__(self, in_chans: int, side_chans: int, width: float):
        super().__init__(
            Bottleneck,
            RESNET50_BLOCKS,
            in_chans=in_chans,
            width=width,
            strides=(1, 2, 1, 1),
            dilations=(1, 1, 2, 4),
            first_dilations=(1, 1, 1, 2),
            stem="deep",
            deep_stem_widths=(64, 64, 128),
        )
        self.conv1_side = nn.Conv2d(side_chans, self.conv1.out_channels, 7, stride=2, padding=3, bias=False)
        self.stem_channels = self.conv3.out_channels

    def forward(self, x: torch.Tensor, side: torch.Tensor) -> list[torch.Tensor]:
        """Stem output (stride 2), layer1 (stride 4) and layer4 (stride 8)."""
        stem = self.relu(self.bn1(self.conv1(x) + self.conv1_side(side)))
        stem = self.relu(self.bn2(self.conv2(stem)))
        stem = self.relu(self.bn3(self.conv3(stem)))
        layer1 = self.layer1(self.maxpool(stem))
        layer4 = self.layer4(self.layer3(self.layer2(layer1)))
        return [stem, layer1, layer4]


class SimDecoder(nn.Module):
    def __init__(self, encoder: SimEncoder, rates: Sequence[int], aspp_channels: int, width: float):
        super().__init__()
        deep = encoder.stage_channels[-1]
        skip1, skip2 = encoder.stage_channels[0], encoder.stem_channels
        aspp = scaled(aspp_channels, width)
        c256, c64 = scaled(256, width), scaled(64, width)
        head_hidden = (scaled(32, width), scaled(16, width))
        self.global_module = Aspp(deep, rates, aspp)
        self.conv_up1 = up_conv(deep + aspp, (c256, c256))
        self.conv_up2 = up_conv(c256 + skip1, (c256,))
        self.conv_up3 = up_conv(c256 + skip2, (c64,))
        # Heads see the decoder features, the normalised RGB, RGB in [0, 1] and the trimap.
        head_in = c64 + 3 + 3 + TRIMAP_CHANNELS
        self.conv_up4_alpha = prediction_head(head_in, head_hidden, 1)
        self.conv_up4_fb = prediction_head(head_in, head_hidden, 6)
        self.conv_up4_attn = prediction_head(c64, head_hidden, 3)

    def features(self, stem, layer1, layer4, image, image_unit, trimap2):
        x = self.conv_up1(torch.cat([layer4, self.global_module(layer4)], dim=1))
        x = self.conv_up2(torch.cat([upsample2(x), layer1], dim=1))
        x = self.conv_up3(torch.cat([upsample2(x), stem], dim=1))
        x = upsample2(x)
        return x, torch.cat([x, image, image_unit, trimap2], dim=1)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class SimMattingNetwork(nn.Module):
    """The matting network; module names are those of their `MattingModule` (encoder, decoder).

    forward(image, guidance) -> (raw alpha,): the detail stage. `predict` adds the foreground,
    background and attention heads.
    """

    def __init__(self, settings: SimSettings):
        super().__init__()
        self.num_classes = settings.num_classes
        in_chans = 3 + CLICK_CHANNELS + TRIMAP_CHANNELS
        self.encoder = SimEncoder(in_chans, settings.num_classes, settings.width)
        self.decoder = SimDecoder(self.encoder, settings.atrous_rates, settings.aspp_channels, settings.width)
        # RGB in [0, 1] (their `image_scale`) is recovered from the normalised image.
        self.register_buffer("image_mean", torch.tensor(settings.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(settings.std).view(1, 3, 1, 1), persistent=False)

    def _features(self, image: torch.Tensor, guidance: torch.Tensor):
        trimap2 = guidance[:, :TRIMAP_CHANNELS]
        clicks = guidance[:, TRIMAP_CHANNELS : TRIMAP_CHANNELS + CLICK_CHANNELS]
        scores = guidance[:, TRIMAP_CHANNELS + CLICK_CHANNELS :]
        # Their encoder input order: normalised RGB, click maps, 2-channel trimap.
        stem, layer1, layer4 = self.encoder(torch.cat([image, clicks, trimap2], dim=1), scores)
        image_unit = image * self.image_std + self.image_mean
        return self.decoder.features(stem, layer1, layer4, image, image_unit, trimap2)

    def forward(self, image: torch.Tensor, guidance: torch.Tensor) -> tuple[torch.Tensor]:
        _, head_input = self._features(image, guidance)
        return (self.decoder.conv_up4_alpha(head_input),)

    def predict(self, image: torch.Tensor, guidance: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw alpha, foreground and background (sigmoid, RGB in [0, 1]) and the three attention
        maps (sigmoid; their r1, r2, r3)."""
        features, head_input = self._features(image, guidance)
        fb = torch.sigmoid(self.decoder.conv_up4_fb(head_input))
        return {
            "detail": self.decoder.conv_up4_alpha(head_input),
            "foreground": fb[:, 0:3],
            "background": fb[:, 3:6],
            "attention": torch.sigmoid(self.decoder.conv_up4_attn(features)),
        }


# ----------------------------------------------------------------------------------------
# Patch classifier
# ----------------------------------------------------------------------------------------
class SimClassifier(ResNet):
    """torchvision-layout ResNet-50 over 4 channels (normalised RGB, trimap / 255) with a
    20-class fc. forward(image, trimap_level) -> (CAM upsampled to the window,): the
    classifier stage. `logits` gives the classification."""

    def __init__(self, num_classes: int, width: float):
        super().__init__(Bottleneck, RESNET50_BLOCKS, in_chans=4, width=width, num_classes=num_classes)

    def class_activation_maps(self, x: torch.Tensor) -> torch.Tensor:
        """layer4 features projected on the fc weights (no bias), at stride 32."""
        features = self.forward_stages(x)[-1]
        return F.conv2d(features, self.fc.weight[:, :, None, None])

    def forward(self, image: torch.Tensor, trimap_level: torch.Tensor) -> tuple[torch.Tensor]:
        cam = self.class_activation_maps(torch.cat([image, trimap_level], dim=1))
        return (F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False),)

    def logits(self, image: torch.Tensor, trimap_level: torch.Tensor) -> torch.Tensor:
        features = self.forward_stages(torch.cat([image, trimap_level], dim=1))[-1]
        return self.fc(torch.flatten(self.avgpool(features), 1))


# ----------------------------------------------------------------------------------------
# Trimap stage taken from another model
# ----------------------------------------------------------------------------------------
def _tensor_ids(module: nn.Module, persistent_only: bool = False) -> set[int]:
    """Identities of a module's parameters and buffers (state_dict entries only if asked)."""
    if persistent_only:
        return {id(t) for t in module.state_dict(keep_vars=True).values()}
    return {id(t) for t in module.parameters()} | {id(t) for t in module.buffers()}


class Renormalised(nn.Module):
    """Feeds a stage that expects another normalisation or channel order than ours (constants,
    not buffers, so they follow the input's device)."""

    def __init__(self, stage: nn.Module, ours: ModelSettings, theirs: ModelSettings):
        super().__init__()
        self.stage = stage
        scale = [o_std / t_std for o_std, t_std in zip(ours.std, theirs.std)]
        shift = [(o_mean - t_mean) / t_std for o_mean, t_mean, t_std in zip(ours.mean, theirs.mean, theirs.std)]
        self.flip = ours.channel_order != theirs.channel_order
        if self.flip:
            scale, shift = scale[::-1], shift[::-1]
        self.scale, self.shift = scale, shift

    def forward(self, image: torch.Tensor):
        if self.flip:
            image = image.flip(1)
        scale = torch.tensor(self.scale, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        shift = torch.tensor(self.shift, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        return self.stage(image * scale + shift)


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------
MATTING_LAYOUT = CheckpointLayout(
    "nowsyn/SIM MattingModule",
    "github.com/nowsyn/SIM networks/model.py build_model + networks/util.py ResnetDilatedBN "
    "(config/sim.toml: encoder resnet50_BN, n_channel 11, atrous_rates 12/24/36, aspp_channel 256)",
    lambda key: (key,),
)
CLASSIFIER_LAYOUT = CheckpointLayout(
    "nowsyn/SIM classifier resnet50",
    "github.com/nowsyn/SIM networks/resnet.py resnet50(4, num_classes=20) as scripts/main.py "
    "build_classifier loads it (checkpoint['state_dict'] without the 'module.' prefix)",
    lambda key: (key,),
)


class SimModel(MattingModel):
    """Trimap stage (borrowed) + patch classifier + matting network; see the module docstring."""

    def __init__(self, settings: SimSettings):
        super().__init__(settings)
        provider = create_model(settings.trimap_model)
        if isinstance(provider, SimModel):
            raise InputError(
                f"trimap_model {settings.trimap_model!r} is itself a Semantic Image Matting model; "
                "name a model with its own semantic stage (e.g. 'salient')"
            )
        self.trimap_settings = provider.settings
        stage = provider.stages()["semantic"]
        self._semantic_inputs, self._semantic_outputs = stage.inputs, stage.outputs
        self.trimap_part, part_module, self._trimap_layouts = self._covering_part(provider, stage.module)
        # Hold what the semantic stage needs and the checkpoint part can load: normally the
        # part is exactly the stage's network (the Salient STN) and the rest of the provider
        # (its matting network) goes with `provider`. A part larger than the stage (a model
        # shipped as one file) is held whole: strict loading needs all of it.
        stage_ids, part_ids = _tensor_ids(stage.module), _tensor_ids(part_module)
        if stage_ids <= part_ids:
            self.trimap = part_module
        elif part_ids <= stage_ids:
            self.trimap = stage.module
        else:
            raise InputError(
                f"the semantic stage of {provider.settings.name!r} holds tensors outside its checkpoint part "
                f"{self.trimap_part!r} and the part holds tensors outside the stage; choose another trimap_model"
            )
        self.holds_whole_part = part_ids != stage_ids and self.trimap is part_module
        self._trimap_part_module = [part_module]  # in a list: registered once, as `trimap`
        same_input = (
            tuple(provider.settings.mean) == tuple(settings.mean)
            and tuple(provider.settings.std) == tuple(settings.std)
            and provider.settings.channel_order == settings.channel_order
        )
        semantic_module = stage.module if same_input else Renormalised(stage.module, settings, provider.settings)
        self._semantic_module = [semantic_module]
        self.classifier = SimClassifier(settings.num_classes, settings.width)
        self.matting = SimMattingNetwork(settings)

    @staticmethod
    def _covering_part(provider: MattingModel, stage_module: nn.Module):
        needed = _tensor_ids(stage_module, persistent_only=True)
        candidates = []
        for name, (module, layouts) in provider.checkpoint_parts().items():
            held = _tensor_ids(module, persistent_only=True)
            if needed <= held:
                candidates.append((len(held), name, module, tuple(layouts)))
        if not candidates:
            raise InputError(
                f"the semantic stage of {provider.settings.name!r} is not held by one of its checkpoint parts "
                f"({', '.join(provider.checkpoint_parts())}); choose another trimap_model"
            )
        _, name, module, layouts = min(candidates, key=lambda c: c[0])
        return name, module, layouts

    @property
    def whole_image_multiple(self) -> int:
        """forward() runs the trimap model on the whole image, so its stride counts too."""
        return math.lcm(self.settings.stride_multiple, self.trimap_settings.stride_multiple)

    def train(self, mode: bool = True):
        super().train(mode)
        # The semantic stage may be a wrapper around what we hold (e.g. a renormaliser).
        self._semantic_module[0].train(mode)
        return self

    # -- weights ---------------------------------------------------------------------------
    def checkpoint_parts(self):
        return {
            "matting": (self.matting, (MATTING_LAYOUT,)),
            "classifier": (self.classifier, (CLASSIFIER_LAYOUT,)),
            "trimap": (self._trimap_part_module[0], self._trimap_layouts),
        }

    # -- stages ----------------------------------------------------------------------------
    def stages(self) -> dict[str, Stage]:
        s = self.settings
        stages = {
            "semantic": Stage(
                "semantic", self._semantic_module[0], self._semantic_inputs, self._semantic_outputs, s.semantic_size
            )
        }
        for window in s.classifier_windows:
            stages[classifier_stage_name(window)] = Stage(
                classifier_stage_name(window),
                self.classifier,
                (TensorSpec("image", 3), TensorSpec("trimap_level", 1)),
                (TensorSpec("cam", s.num_classes),),
                window,
            )
        stages["detail"] = Stage(
            "detail",
            self.matting,
            (TensorSpec("image", 3), TensorSpec("guidance", s.guidance_channels)),
            (TensorSpec("detail", 1),),
            s.tile_size,
        )
        return stages

    def semantic(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        semantic, trimap = self._semantic_module[0](image)
        return semantic, trimap

    def _classify_windows(self, crops: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        # The score maps are an input, as in the authors' code: no gradient flows through them.
        with torch.no_grad():
            return self.classifier(crops, levels)[0]

    def guidance(self, image: torch.Tensor, trimap: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return sim_guidance(
            image,
            trimap,
            self._classify_windows,
            windows=s.classifier_windows,
            click_scale=s.click_scale,
            num_classes=s.num_classes,
            window_batch=s.window_batch,
        )

    def forward(self, image: torch.Tensor, with_foreground: bool = False) -> dict[str, torch.Tensor]:
        """The contract's outputs; with_foreground adds "foreground", "background" (N x 3 x H x W,
        RGB in [0, 1]) and "attention" (N x 3 x H x W) from the matting network's other heads."""
        self.check_image(image)
        semantic, trimap = self.semantic(image)
        guidance = self.guidance(image, trimap)
        if with_foreground:
            out = self.matting.predict(image, guidance)
        else:
            out = {"detail": self.matting(image, guidance)[0]}
        alpha = FUSIONS[self.settings.fusion](trimap, out["detail"])
        return {"semantic": semantic, "trimap": trimap, "alpha": alpha, **out}


def _resolve(settings: SimSettings) -> SimSettings:
    """Fill the fields that follow others and check the combination."""
    windows = tuple(int(w) for w in settings.classifier_windows)
    if not windows or any(w <= 0 for w in windows) or len(set(windows)) != len(windows):
        raise InputError(f"classifier_windows must be distinct positive window sides, got {settings.classifier_windows}")
    # A caller who changes only the windows keeps the registered stages, which then follow.
    allowed = {stages_for(windows), tuple(get_settings(settings.name).stages)}
    if tuple(settings.stages) not in allowed:
        raise InputError(
            f"stages of {settings.name!r} follow classifier_windows: expected {stages_for(windows)}, "
            f"got {tuple(settings.stages)}"
        )
    if settings.tile_size % settings.stride_multiple:
        raise InputError(
            f"tile_size {settings.tile_size} of {settings.name!r} must be a multiple of {settings.stride_multiple}"
        )
    if settings.num_classes < 1 or settings.click_scale <= 0 or settings.window_batch < 1:
        raise InputError(
            f"{settings.name!r}: num_classes and window_batch must be at least 1 and click_scale positive, got "
            f"{settings.num_classes}, {settings.window_batch}, {settings.click_scale}"
        )
    return dataclasses.replace(
        settings,
        classifier_windows=windows,
        stages=stages_for(windows),
        guidance_channels=TRIMAP_CHANNELS + CLICK_CHANNELS + settings.num_classes,
    )


def _build(settings: SimSettings) -> SimModel:
    settings = _resolve(settings)
    model = SimModel(settings)
    trimap_settings = model.trimap_settings
    semantic_size = settings.semantic_size if settings.semantic_size is not None else trimap_settings.semantic_size
    if semantic_size % trimap_settings.stride_multiple:
        raise InputError(
            f"semantic_size {semantic_size} of {settings.name!r} must be a multiple of the trimap model "
            f"{trimap_settings.name!r}'s stride multiple {trimap_settings.stride_multiple}"
        )
    model.settings = dataclasses.replace(settings, semantic_size=semantic_size)
    return model



@register_model(SimSettings())
def semantic(settings: SimSettings) -> SimModel:
    return _build(settings)


@register_model(
    SimSettings(
        name="semantic_tiny",
        description="Semantic Image Matting at 1/8 width with small classifier windows (tests)",
        stages=stages_for(TINY_WINDOWS),
        trimap_model="salient_tiny",
        classifier_windows=TINY_WINDOWS,
        tile_size=64,
        tile_overlap=16,
        width=0.125,
        variant_of="semantic",
    )
)
def semantic_tiny(settings: SimSettings) -> SimModel:
    return _build(settings)
