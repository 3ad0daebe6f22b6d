"""Backbones shared by the seed models, with torchvision's module names.

torchvision has no CPU wheel for our PyTorch, and every authors' checkpoint we load was
trained on torchvision-style ResNets, so the same names (conv1, bn1, layer1.0.conv1, ...)
keep their key mappings short. Each model adapts these in its own file (strides, dilations,
extra pools); a model whose authors' structure differs keeps its own encoder.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mattrt.models.settings import scaled


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-compatible ResNet with the knobs the seed models need.

    - `strides` / `dilations`: per stage (layer1..layer4). A dilated stage's first block uses
      `first_dilations[i]` (torchvision's replace_stride_with_dilation gives the previous
      stage's dilation there; PSPNet-style dilated nets use the stage's own dilation).
    - `stem`: "standard" (conv1 7x7/2 + bn1 + relu) or "deep" (conv1/bn1, conv2/bn2,
      conv3/bn3: three 3x3 convs of `deep_stem_widths`, the first with stride 2).
    - `stem_stride`, `stem_pool`: the 7x7 conv's stride and whether `maxpool` (3x3/2) follows.
    - `num_classes`: adds avgpool + fc (classifiers); None keeps the encoder only.
    - `width`: channel multiplier for reduced variants.
    `forward_stages(x)` returns the stem output and the four stage outputs.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        in_chans: int = 3,
        width: float = 1.0,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        first_dilations: Sequence[int] | None = None,
        stem: str = "standard",
        deep_stem_widths: Sequence[int] = (64, 64, 128),
        stem_stride: int = 2,
        stem_pool: bool = True,
        num_classes: int | None = None,
    ):
        super().__init__()
        if first_dilations is None:  # torchvision's rule
            first_dilations = [1] + list(dilations[:-1])
        self.stem_kind = stem
        if stem == "standard":
            self.inplanes = scaled(64, width)
            self.conv1 = nn.Conv2d(in_chans, self.inplanes, 7, stride=stem_stride, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(self.inplanes)
        elif stem == "deep":
            w1, w2, w3 = (scaled(c, width) for c in deep_stem_widths)
            self.conv1 = conv3x3(in_chans, w1, stride=stem_stride)
            self.bn1 = nn.BatchNorm2d(w1)
            self.conv2 = conv3x3(w1, w2)
            self.bn2 = nn.BatchNorm2d(w2)
            self.conv3 = conv3x3(w2, w3)
            self.bn3 = nn.BatchNorm2d(w3)
            self.inplanes = w3
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem_pool else nn.Identity()
        planes = [scaled(p, width) for p in (64, 128, 256, 512)]
        for i in range(4):
            layer = self._make_layer(block, planes[i], layers[i], strides[i], dilations[i], first_dilations[i])
            setattr(self, f"layer{i + 1}", layer)
        self.stage_channels = [p * block.expansion for p in planes]
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, dilation: int, first_dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, first_dilation, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem_kind == "deep":
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.forward_stem(x)
        x = self.maxpool(stem)
        outs = [stem]
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stages(x)[-1]
        if hasattr(self, "fc"):
            return self.fc(torch.flatten(self.avgpool(x), 1))
        return x


def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


class InvertedResidual(nn.Module):
    """MobileNetV2 block with torchvision's names (`conv` Sequential of ConvBNReLU6 + project)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int, dilation: int = 1):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(cin, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden, dilation=dilation),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = (kernel - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


# (expand ratio t, output channels c, repeats n, first stride s) of MobileNetV2 (Sandler et al. 2018).
MOBILENETV2_CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

