"""Helpers shared by the model tests."""

from __future__ import annotations

import torch
from torch import nn


def randomise_batchnorm(module: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine terms, so loading them changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
