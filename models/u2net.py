"""U^2-Net (Qin et al., Pattern Recognition 2020) with a K-class output: the Salient Trimap
Network of Salient Image Matting.

Module names follow xuebinqin/U-2-Net `model/u2net.py` (`U2NET`) exactly, so a state_dict of
`U2Net(3, 3)` has the same keys and shapes as one of their `U2NET(3, 3)`:
`stage1.rebnconvin.conv_s1.weight`, `stage1.rebnconvin.bn_s1.running_mean`, ...,
`stage5d.rebnconv1d.conv_s1.weight`, `side1.weight` ... `side6.bias`, `outconv.weight`.

Structure (as in their newest `model/u2net.py`):
- REBNCONV: 3x3 conv (bias, dilation d, padding d) -> BatchNorm -> ReLU.
- RSU-L (L = 7, 6, 5, 4): `rebnconvin`, encoder `rebnconv1..rebnconv{L-1}` with a 2x2 max
  pool (ceil mode) after each of the first L-2, `rebnconv{L}` with dilation 2, decoder
  `rebnconv{L-1}d..rebnconv1d` on [upsampled deeper, skip] concatenations, residual `+ hxin`.
- RSU-4F: no pooling; dilations 1, 2, 4, 8 in the encoder and 4, 2, 1 in the decoder.
- Upsampling everywhere is bilinear to the skip tensor's size (`F.upsample(size=..., mode=
  "bilinear")`, i.e. align_corners=False).
- Encoder stage1..stage6 (RSU7, RSU6, RSU5, RSU4, RSU4F, RSU4F) with max pools between,
  decoder stage5d..stage1d, side convs side1..side6 (3x3) on hx1d, hx2d, hx3d, hx4d, hx5d, hx6,
  upsampled to the input size, fused by `outconv` (1x1 over the 6*K concatenated side maps).

Their forward applies a sigmoid to the seven maps (binary saliency trained with BCE). Salient
Image Matting trains the 3-class version with per-pixel cross-entropy (paper, section 3.5
"STN Loss") and deep supervision on the side outputs (section 3.6.1), so `U2Net.forward`
returns the seven maps as raw logits; the trimap is the softmax of the fused map d0.

Their older `model/u2net.py` built `outconv` with one output channel regardless of `out_ch`
and used fixed-factor `nn.Upsample`; for a 3-class network the current form
(`Conv2d(6 * out_ch, out_ch, 1)`) is the only one that works, and that is what we build.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mattrt.models.checkpoints import CheckpointLayout
from mattrt.models.settings import scaled


def upsample_like(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of `source` to `reference`'s spatial size (U2Net's `_upsample_like`)."""
    return F.interpolate(source, size=reference.shape[-2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 conv (dilated) + BatchNorm + ReLU, with U2Net's attribute names."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(cout)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block RSU-`depth` (pooled U-shape), or RSU-4F when `dilated` (no pooling).

    One class for U2Net's RSU7/RSU6/RSU5/RSU4/RSU4F: they differ only in depth and in whether
    resolution drops by pooling or the receptive field grows by dilation.
    """

    def __init__(self, depth: int, cin: int, mid: int, cout: int, dilated: bool = False):
        super().__init__()
        if depth < 3:
            raise ValueError(f"RSU depth must be at least 3, got {depth}")
        self.depth = depth
        self.dilated = dilated
        if dilated:
            # RSU-4F: dilations 1, 2, 4 in rebnconv1..3, then 8 at the bottom.
            encoder_dilations = [2 ** i for i in range(depth - 1)]
            bottom_dilation = 2 ** (depth - 1)
        else:
            encoder_dilations = [1] * (depth - 1)
            bottom_dilation = 2
        self.rebnconvin = REBNCONV(cin, cout)
        for i in range(1, depth):
            setattr(self, f"rebnconv{i}", REBNCONV(cout if i == 1 else mid, mid, encoder_dilations[i - 1]))
        setattr(self, f"rebnconv{depth}", REBNCONV(mid, mid, bottom_dilation))
        for i in range(depth - 1, 0, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(2 * mid, cout if i == 1 else mid, encoder_dilations[i - 1]))
        self.pool = None if dilated else nn.MaxPool2d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips = []
        hx = hxin
        for i in range(1, self.depth):
            hx = getattr(self, f"rebnconv{i}")(hx)
            skips.append(hx)
            # Pools follow rebnconv1..rebnconv{depth-2}; rebnconv{depth-1} keeps its resolution.
            if self.pool is not None and i < self.depth - 1:
                hx = self.pool(hx)
        hx = getattr(self, f"rebnconv{self.depth}")(hx)
        for i in range(self.depth - 1, 0, -1):
            skip = skips[i - 1]
            # Only the bottom conv shares the resolution of its skip; every level above it
            # was pooled (RSU-4F never pools).
            if self.pool is not None and i < self.depth - 1:
                hx = upsample_like(hx, skip)
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, skip), 1))
        return hx + hxin


# (block depth, dilated, in, mid, out) of U2NET's stages, from xuebinqin/U-2-Net model/u2net.py.
U2NET_ENCODER = (
    ("stage1", 7, False, None, 32, 64),  # in = image channels
    ("stage2", 6, False, 64, 32, 128),
    ("stage3", 5, False, 128, 64, 256),
    ("stage4", 4, False, 256, 128, 512),
    ("stage5", 4, True, 512, 256, 512),
    ("stage6", 4, True, 512, 256, 512),
)
U2NET_DECODER = (
    ("stage5d", 4, True, 1024, 256, 512),
    ("stage4d", 4, False, 1024, 128, 256),
    ("stage3d", 5, False, 512, 64, 128),
    ("stage2d", 6, False, 256, 32, 64),
    ("stage1d", 7, False, 128, 16, 64),
)
# Input channels of side1..side6 (outputs of stage1d, stage2d, stage3d, stage4d, stage5d, stage6).
U2NET_SIDE_CHANNELS = (64, 64, 128, 256, 512, 512)


class U2Net(nn.Module):
    """U^2-Net with `out_ch` output maps per side; `forward` returns logits (d0, d1, ..., d6).

    d0 is the fused map (`outconv` over the six side maps), d1..d6 the side maps, all at the
    input resolution. `width` scales every channel count (reduced test variants only; the
    authors' checkpoints need width 1.0).
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, width: float = 1.0):
        super().__init__()
        self.in_ch = in_ch
        self.out_ch = out_ch

        def ch(c: int) -> int:
            return scaled(c, width)

        for name, depth, dilated, cin, mid, cout in U2NET_ENCODER:
            block_in = in_ch if cin is None else ch(cin)
            setattr(self, name, RSU(depth, block_in, ch(mid), ch(cout), dilated))
        for name, depth, dilated, cin, mid, cout in U2NET_DECODER:
            # Decoder inputs are [upsampled deeper output, encoder skip]: rebuild the sum from
            # the scaled halves so reduced widths stay consistent.
            setattr(self, name, RSU(depth, 2 * ch(cin // 2), ch(mid), ch(cout), dilated))
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        for i, cin in enumerate(U2NET_SIDE_CHANNELS, start=1):
            setattr(self, f"side{i}", nn.Conv2d(ch(cin), out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoder = []
        hx = x
        for i in range(1, 7):
            if i > 1:
                hx = self.pool(hx)
            hx = getattr(self, f"stage{i}")(hx)
            encoder.append(hx)
        # Decoder: stage{i}d reads [upsampled deeper decoder output, encoder stage i].
        decoder = {6: encoder[5]}
        hx = encoder[5]
        for i in range(5, 0, -1):
            skip = encoder[i - 1]
            hx = getattr(self, f"stage{i}d")(torch.cat((upsample_like(hx, skip), skip), 1))
            decoder[i] = hx
        d1 = self.side1(decoder[1])
        sides = [d1]
        for i in range(2, 7):
            sides.append(upsample_like(getattr(self, f"side{i}")(decoder[i]), d1))
        d0 = self.outconv(torch.cat(sides, 1))
        return (d0, *sides)


def u2net_layout(out_ch: int) -> CheckpointLayout:
    """xuebinqin/U-2-Net's `U2NET(3, out_ch)` state_dict: the same keys as ours."""
    return CheckpointLayout(
        name=f"xuebinqin/U-2-Net U2NET(3, {out_ch})",
        source="github.com/xuebinqin/U-2-Net model/u2net.py (class U2NET)",
        their_keys=lambda key: (key,),
    )


# Names of U2Net.forward's seven outputs, in order.
SIDE_OUTPUT_NAMES = ("d0", "d1", "d2", "d3", "d4", "d5", "d6")


__all__ = ["U2Net", "RSU", "REBNCONV", "SIDE_OUTPUT_NAMES", "upsample_like", "u2net_layout"]
